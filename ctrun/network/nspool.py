"""A store's pool of pre-made network namespaces, joined by setns instead of unshare.

Each entry is an empty network namespace with lo up, kept alive by a bind mount of its
nsfs file on `<store>/run/netns/pool-<id>` (inside the store: private, and two stores never
see each other's).  A start takes one (claimed by creating `<entry>.taken` exclusively)
and names it by path in the container's spec, so the init joins it as it would a pod's;
once the init holds it, release() unmounts and unlinks the entry: a namespace serves one
start only, and the container's is gone with its last process as before.  A start that
fails before the release leaves a claimed entry, which drain() (ctrun gc, the server's
exit) removes with the rest.
"""

import errno
import os
import signal

from .. import libc
from ..kernel import linux

PREFIX = "pool-"
TAKEN = ".taken"
ANNOTATION = "run.ctrun.netns_pool"


def _make(path):
    """Fork a child that makes the namespace, brings lo up and binds it on path; it dies
    with its parent (a warm server's spare is killed at the server's exit, which then
    empties the pool: no bind may come after)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            import prctl
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            linux.unshare(libc.CLONE_NEWNET)
            from ..namespaces import loopback_up
            loopback_up()
            linux.mount("/proc/self/ns/net", str(path), None, libc.MS_BIND)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - the parent reports the failure
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _unmount(path):
    try:
        linux.umount2(str(path), libc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount
            raise


class NetnsPool:
    def __init__(self, store):
        self.store = store
        self.dir = store.run / "netns"

    def entries(self):
        """Paths of the ready (unclaimed) entries."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        taken = {n[:-len(TAKEN)] for n in names if n.endswith(TAKEN)}
        return [self.dir / n for n in sorted(names)
                if n.startswith(PREFIX) and not n.endswith(TAKEN) and n not in taken]

    def fill(self, n):
        """Make entries until there are n; returns how many were made."""
        from ..errors import CtrunError
        self.store.private_dir("run", "netns")
        made = 0
        while len(self.entries()) < n:
            path = self.dir / (PREFIX + os.urandom(6).hex())
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            if not _make(path):
                _unmount(path)
                path.unlink(missing_ok=True)
                raise CtrunError("cannot make a network namespace for the pool; check that "
                                 "this host allows new network namespaces")
            made += 1
        return made

    def take(self):
        """Claim one entry: its path, or None when the pool is empty."""
        for path in self.entries():
            try:
                os.close(os.open(f"{path}{TAKEN}", os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | os.O_CLOEXEC, 0o600))
            except FileExistsError:
                continue   # another start claimed it first
            return path
        return None

    def drain(self):
        """Remove every entry, claimed or not; returns how many namespaces went."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return 0
        count = 0
        for n in names:
            if n.startswith(PREFIX) and not n.endswith(TAKEN):
                release(self.dir / n)
                count += 1
        for n in os.listdir(self.dir):   # claims whose entry is gone
            if n.endswith(TAKEN):
                (self.dir / n).unlink(missing_ok=True)
        return count


def release(path):
    """Drop the pool's hold on a taken namespace (the joined init keeps it alive)."""
    _unmount(path)
    for p in (str(path), f"{path}{TAKEN}"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def use(store, spec):
    """Point the spec's new network namespace at a pooled one, when it has one to take
    (not with a user namespace: the container's root must own its network namespace);
    returns whether it did."""
    nss = spec["linux"]["namespaces"]
    if any(ns["type"] == "user" for ns in nss):
        return False
    for ns in nss:
        if ns["type"] == "network" and not ns.get("path"):
            path = NetnsPool(store).take()
            if path is None:
                return False
            ns["path"] = str(path)
            spec["annotations"][ANNOTATION] = str(path)
            return True
    return False


def release_spec(spec):
    """After the launch (or its failure): release the entry the spec took, if any."""
    path = spec["annotations"].get(ANNOTATION)
    if path:
        release(path)
