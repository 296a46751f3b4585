"""The warm server of an OCI state root: ctrun-oci's light verbs without a Python start.

A client such as conmon or containerd's shim calls `state`, `start`, `kill` and `delete`
several times per container, each a new process; cold, each costs the interpreter's start
and imports, more than runc's whole call.  /usr/local/bin/ctrun-oci is ctrun/client.c built
with -DCTRUN_OCI: for those four verbs it sends the call to the server of the call's --root
(ctrun.server, OciKind here), whose forked worker runs ctrun.oci.cli.main(argv); every other
verb, and any call it cannot serve, it execs the Python ctrun-oci with.

Only those four are served: create, run and exec fork processes the client must reap (an
init, an exec'd process), which must never be the server's children.

Placement: the server listens in a root-only directory of its own, oci_run_dir(root) (never
inside the root: any name there may be a container ID).  It is started, daemonized, by a
cold call of a served verb that found no server (ctrun.oci.spawn), from inside whatever cgroup
conmon or the shim runs that call in; so it first moves into a cgroup of its own
(`oci-server-<hash>` below ctrun's cgroup parent, in every hierarchy), lest it hold the
client's cgroup (which podman and containerd remove) or be killed with it.  Not by create
or run: conmon makes those calls, and the daemon, orphaned, would be adopted by conmon (a
subreaper), which at its end waits for every child it has; the served verbs come from
podman itself, from conmon's exit command (run once conmon no longer adopts orphans), or
from containerd's shim (which does not wait for its orphans).
It leaves after CTRUN_SERVER_IDLE seconds without a call (or on SIGTERM): back in the root
cgroups, it removes its own, and its run directory once nothing there is worth keeping.
"""

import os

from ..serversock import LOCK, OCI_SERVERS, lock_if_free, oci_run_dir

# what the served verbs import (python -X importtime), loaded once by the server
WARM = ("ctrun.oci.cli", "ctrun.oci.verbs", "ctrun.oci.store", "ctrun.oci.hooks",
        "ctrun.errors", "ctrun.procs", "ctrun.cgroupfs", "ctrun.state")


class OciKind:
    """ctrun.server's kind for an OCI state root (see ctrun.server.StoreKind)."""

    prog, entry = "ctrun-oci", "ctrun.oci.cli"

    def __init__(self, root):
        from ..client import OCI_MAGIC
        self.magic = OCI_MAGIC
        self.root = os.path.abspath(root)
        self.run = oci_run_dir(self.root)
        self.cgroup = None

    def ahead(self, sock, calm):
        """Nothing: no copy of the server's pages ahead, as a store's spare takes.  A light
        verb writes few of them, and its client calls back to back (create, state,
        start...): the next call would then meet the last one's worker freeing its copy,
        which costs more than it saved (4.2 against 7.7 ms for a `state` right after
        another; 3.9 against 3.0 ms with 5 ms between them)."""

    def worker(self):
        """Nothing to set in a worker."""

    def run_dir(self):
        from ..state import private_dir
        for d in (OCI_SERVERS, self.run):
            private_dir(d)
        return self.run

    def enter(self):
        """Into a cgroup of its own, out of its starter's (see the module's doc)."""
        from .. import cgroups
        from ..config import DEFAULT_CGROUP_PARENT
        parent = os.environ.get("CTRUN_CGROUP_PARENT", DEFAULT_CGROUP_PARENT)
        mgr = cgroups.manager(cgroup_name(self.root), parent=parent, leaf=None)
        mgr.create()
        mgr.add(os.getpid())
        self.cgroup = mgr

    def leave(self):
        """Back into the root cgroups, its own removed; its run directory too, unless the
        log holds something or a new server has the lock already."""
        if self.cgroup is not None:
            from ..cgroups.base import write
            try:
                for mnt in self.cgroup.mounts().values():
                    write(mnt / "cgroup.procs", os.getpid())
                self.cgroup.remove()
            except Exception as e:  # noqa: BLE001 - an exit must not fail
                import sys
                print(f"ctrun-oci server: cannot remove cgroup {self.cgroup.rel}: {e}",
                      file=sys.stderr)
        try:
            fd = lock_if_free(os.path.join(self.run, LOCK), create=False)
        except OSError:
            return
        if fd is None:
            return
        try:
            log = os.path.join(self.run, "server.log")
            if os.stat(log).st_size == 0:
                os.unlink(log)
                os.unlink(os.path.join(self.run, LOCK))
                os.rmdir(self.run)
        except OSError:
            pass
        finally:
            os.close(fd)

    def warm(self):
        import importlib
        for name in WARM:
            importlib.import_module(name)
        from . import cli
        cli.SERVED = True   # its workers' calls start no server
        for _ in range(16):   # as ctrun.server.warm: argparse's code specialized once
            for argv in (["--root", "/r", "state", "c"], ["--root", "/r", "kill", "c", "9"],
                         ["--root", "/r", "delete", "--force", "c"]):
                cli.parse(argv)


def cgroup_name(root):
    return "oci-server-" + os.path.basename(oci_run_dir(root))


def server_pids(root):
    """The pids of the server of OCI state root `root` and its workers (the same argv)."""
    from ..state import proc_cmdlines
    want = os.fsencode(os.path.abspath(root))
    return [pid for pid, cmd in proc_cmdlines()
            if b"ctrun.server" in (argv := cmd.split(b"\0")) and b"--oci" in argv
            and want in argv]


def stop(root, timeout=5.0):
    """Ask the server of OCI state root `root` to leave now (SIGTERM: as when idle, its
    cgroup removed); the pids still there after `timeout` seconds.  One that has not set
    its handler yet (still importing) is waited for first: SIGTERM would kill it before it
    could leave its cgroup."""
    import signal
    import time
    deadline = time.monotonic() + timeout
    pending = server_pids(root)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                with open(f"/proc/{pid}/status") as f:
                    caught = int(f.read().split("SigCgt:")[1].split()[0], 16)
                if caught & (1 << signal.SIGTERM - 1):
                    os.kill(pid, signal.SIGTERM)
                    pending.remove(pid)
            except (FileNotFoundError, ProcessLookupError):
                pending.remove(pid)
        time.sleep(0.02)
    while server_pids(root) and time.monotonic() < deadline:
        time.sleep(0.02)
    return server_pids(root)
