"""Runners: host, container and VM instances behind one interface, so every workload and
probe is written once.

An instance is created untimed, then start() (returns when a first command has run
inside: the lab's "ready"), exec(argv) -> (exit code, output), put(local, dest), stop(),
destroy(), memory() and cgroup().  Host mode runs busybox applets from a private applet
directory on the host, in a cgroup of the lab's own, so it is measured like the others."""

import os
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import CtrunError, HostUnsupported
from ..state import proc_cmdlines

EXEC_TIMEOUT = 120.0
# the first part of an instance's name, by mode
PREFIX = {"container": "ct", "vm": "vm"}
# what `systemctl is-system-running` says once a boot is over (degraded: some unit failed)
BOOTED = ("running", "degraded")


def pss_kb(pid):
    """PSS of one process in kB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def kmem_kb(dirs):
    """Kernel memory charged to a cgroup: v1 memory.kmem.usage_in_bytes, else v2's
    memory.stat "kernel" (None when neither hierarchy reports it)."""
    for d in dirs:
        try:
            return int(Path(d, "memory.kmem.usage_in_bytes").read_text()) // 1024
        except (OSError, ValueError):
            pass
        try:
            for line in Path(d, "memory.stat").read_text().splitlines():
                if line.startswith("kernel "):
                    return int(line.split()[1]) // 1024
        except OSError:
            pass
    return None


def monitor_pids(store_root):
    """The shared monitor of the lab's store: it serves every container and VM there."""
    root = str(store_root).encode()
    return [pid for pid, cmd in proc_cmdlines() if b"ctrun.monitor" in cmd and root in cmd]


class Instance:
    kind = "?"
    root_dir = "/"              # where its root file system is, as the instance sees it
    helper = "/usr/local/bin/ctrun-lab"

    def __init__(self, mode, name):
        self.mode, self.name = mode, name

    def exec(self, argv, timeout=EXEC_TIMEOUT, stdin_path=None):
        raise NotImplementedError

    def which(self, tool):
        """The tool's path inside the instance, or None."""
        code, out = self.exec(["sh", "-c", f"command -v {tool}"])
        return out.strip() if code == 0 and out.strip().startswith("/") else None

    def put(self, local, dest):
        code, out = self.exec(["sh", "-c", f"cat > {dest} && chmod 755 {dest}"],
                              stdin_path=local)
        if code != 0:
            raise CtrunError(f"could not copy {local} into {self.name}: {out.strip()}")

    def cgroup(self):
        return self.mgr

    def memory(self, share=None):
        """{pss_kb, kmem_kb, monitor_share_kb, total_kb} of this idle instance; share: the
        mode's monitor_share_kb() when the caller has it already (one per density step)."""
        mgr = self.mgr
        pss = sum(pss_kb(p) for p in mgr.pids())
        kmem = kmem_kb([str(d) for d in mgr.dirs().values()])
        share = self.mode.monitor_share_kb() if share is None else share
        return {"pss_kb": pss, "kmem_kb": kmem, "monitor_share_kb": share,
                "total_kb": pss + (kmem or 0) + share}


class Mode:
    accel = accel_note = None   # the accelerator its instances run under, and why that one
    # density's plan: an instance's memory before one is measured, and the memory it may use
    density_guess_mb, density_budget_gib = 16, 4


class HostMode(Mode):
    """The baseline: busybox applets run directly on the host."""

    name = "host"

    def __init__(self, lab):
        self.lab = lab
        self.bin = lab.work / "host-bin"
        self.busybox = shutil.which("busybox") or "/bin/busybox"
        if not os.path.exists(self.busybox):
            raise HostUnsupported("host mode needs busybox on the host; run: apt-get install "
                                  "busybox-static")
        if not self.bin.exists():
            self.bin.mkdir()
            subprocess.run([self.busybox, "--install", "-s", str(self.bin)], check=True)

    def create(self, name):
        return HostInstance(self, f"host-{name}")

    def monitor_share_kb(self):
        return 0


class HostInstance(Instance):
    kind = "host"

    def __init__(self, mode, name):
        super().__init__(mode, name)
        from .. import cgroups
        self.dir = mode.lab.work / name
        self.dir.mkdir()
        self.root_dir = str(self.dir) + "/"
        self.helper = str(self.dir / "ctrun-lab")
        self.mgr = cgroups.manager(name, parent=mode.lab.cgroup_parent)
        self.proc = None

    def _env(self):
        return {"PATH": str(self.mode.bin), "HOME": str(self.dir), "LC_ALL": "C"}

    def _join(self):
        """In the child, before exec: into the instance's cgroup ("0" moves the writer)."""
        for f in self.mgr.procs_files():
            Path(f).write_text("0")

    def start(self):
        self.mgr.create(device_rules=None)
        self.proc = subprocess.Popen(["sleep", "2147483647"], cwd=self.dir, env=self._env(),
                                     preexec_fn=self._join, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     executable=str(self.mode.bin / "sleep"))
        code, out = self.exec(["true"])
        if code != 0:
            raise CtrunError(f"host instance {self.name}: true failed: {out}")

    def exec(self, argv, timeout=EXEC_TIMEOUT, stdin_path=None):
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        try:
            p = subprocess.run(argv if "/" in argv[0] else [str(self.mode.bin / argv[0])]
                               + list(argv[1:]), cwd=self.dir, env=self._env(),
                               preexec_fn=self._join, stdin=stdin, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CtrunError(f"{argv[0]} in {self.name} did not finish within "
                             f"{timeout:.0f} s") from None
        finally:
            if stdin_path:
                stdin.close()
        return p.returncode, p.stdout.decode(errors="replace")

    def which(self, tool):
        return shutil.which(tool)  # the host's own tools, not only the busybox applets

    def put(self, local, dest):
        shutil.copy(local, dest)
        os.chmod(dest, 0o755)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def destroy(self):
        self.stop()
        self.mgr.discard()
        shutil.rmtree(self.dir, ignore_errors=True)


class CtrunMode(Mode):
    """Containers and VMs: both are ctrun instances in the lab's private store, run by the
    backend of the mode's name (ctrun.backends)."""

    def __init__(self, lab, name):
        from .. import backends
        from ..api import Ctrun
        self.lab, self.name = lab, name
        self.ct = Ctrun(lab.store, warn=lambda m: None)
        backend = backends.for_mode(name)(self.ct.store)
        self.accel, self.accel_note = backend.check_host(lab.accel)
        self.opts = {"net": lab.network or "none", **backends.create_options(name)}
        if backend.guest:  # the lab sizes a guest: its RAM, one vCPU
            self.opts.update(accel=self.accel, limits={"memory": lab.vm_memory, "cpus": "1"})
            self.density_guess_mb, self.density_budget_gib = lab.vm_memory_mb + 100, 2

    def create(self, name, image=None):
        """An instance of the lab's image, or of `image` (the booted server's)."""
        name = f"{PREFIX[self.name]}-{name}"
        self.ct.create(name, image=image or self.lab.image, **self.opts)
        return CtrunInstance(self, name)

    def monitor_share_kb(self):
        """The shared monitor's PSS divided among the instances it supervises now."""
        n = max(1, len(self.ct.list()))
        return sum(pss_kb(p) for p in monitor_pids(self.lab.store)) // n


class CtrunInstance(Instance):
    def __init__(self, mode, name):
        super().__init__(mode, name)
        self.kind = mode.name
        self.ct = mode.ct
        # the lab sets CTRUN_CGROUP_PARENT to its own parent before making any instance;
        # the cgroup's name carries the store's id
        self.mgr = self.ct.cgroup_manager(name)

    def start(self):
        self.ct.start(self.name)
        code, out = self.exec(["true"])
        if code != 0:
            raise CtrunError(f"{self.kind} {self.name}: first command failed: {out.strip()}")

    def boot(self, deadline, poll=0.05):
        """Start, then wait until systemd inside says its boot is over: the state
        `systemctl is-system-running` ends with (running, degraded; another state once the
        monotonic deadline passed).  --wait blocks until the boot is over, but answers at
        once while systemd's bus is not up yet: then it is asked again every `poll` s."""
        self.ct.start(self.name)
        while True:
            left = deadline - time.monotonic()
            code, out = self.exec(["systemctl", "is-system-running", "--wait"],
                                  timeout=max(1.0, left))
            state = (out.strip().splitlines() or ["no answer"])[-1]
            if state in BOOTED or left <= 0:
                return state
            time.sleep(poll)

    def exec(self, argv, timeout=EXEC_TIMEOUT, stdin_path=None):
        """ctrun exec, output captured, bounded by a timeout."""
        return self.ct.exec_output(self.name, argv, timeout=timeout, stdin_path=stdin_path)

    def stop(self, timeout=10):
        self.ct.stop(self.name, timeout=timeout)

    def destroy(self):
        try:
            self.ct.destroy(self.name, force=True)
        except CtrunError:
            pass

    def set_limits(self, limits):
        self.ct.set(self.name, limits, save=False)


def make(lab, name):
    """The runner of a mode; a HostUnsupported error says why the mode cannot run here."""
    return HostMode(lab) if name == "host" else CtrunMode(lab, name)
