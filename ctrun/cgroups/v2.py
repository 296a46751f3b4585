"""cgroup v2 (unified hierarchy): plain file writes."""

import signal
import time

from .base import POLL, SETTLE, CgroupManager, read, read_keyed, write, write_if_present

KEY = "cgroup2"   # hierarchy key in paths(); /proc/<pid>/cgroup shows it as "0::"


class V2Manager(CgroupManager):
    def mounts(self):
        return {KEY: self.layout.v2} if self.layout.v2 is not None else {}

    def _enable_controllers(self, d):
        """Delegate to d's children every controller d has (a level may offer fewer than root)."""
        try:
            available = set(read(d / "cgroup.controllers").split())
            enabled = {c.lstrip("+") for c in read(d / "cgroup.subtree_control").split()}
        except FileNotFoundError:
            return
        missing = sorted(available - enabled)
        if not missing:
            return
        try:
            write(d / "cgroup.subtree_control", " ".join("+" + c for c in missing))
        except OSError:
            # one refusal (e.g. cpu with RT tasks, or a level holding processes) must not
            # block the rest; limits that need a missing controller fail loudly later
            for c in missing:
                try:
                    write(d / "cgroup.subtree_control", "+" + c)
                except OSError:
                    pass

    def create(self, device_rules=None):
        """device_rules are not supported on v2 (they need a BPF program): callers check
        supports_device_rules() and drop CAP_MKNOD instead."""
        mnt = self.layout.v2
        if mnt is None:
            return
        cur = mnt
        for part in self._levels():
            self._enable_controllers(cur)
            cur = cur / part
            self._ensure_dir(cur)

    def _freeze(self):
        f = self.dirs()[KEY] / "cgroup.freeze"
        if not write_if_present(f, 1):
            return False
        end = time.monotonic() + SETTLE
        while read_keyed(f.with_name("cgroup.events")).get("frozen") != 1:
            if time.monotonic() >= end:
                break
            time.sleep(POLL)
        return True

    def _thaw(self):
        write_if_present(self.dirs()[KEY] / "cgroup.freeze", 0)

    def kill_all(self, sig=signal.SIGKILL, timeout=None):
        if self.layout.v2 is None:
            return []
        kill = self.dirs()[KEY] / "cgroup.kill"
        if sig == signal.SIGKILL and kill.exists():
            # the kernel kills the whole subtree atomically, forks included
            write_if_present(kill, 1)
            return self._wait_empty(timeout)
        return self._signal_loop(sig, timeout)

    def oom_kills(self):
        top = self.dirs().get(KEY)
        if top is None or not top.is_dir():
            return 0
        if (top / "memory.events.local").exists():
            # summing the local counters is right whether or not memory_localevents is set
            return sum(read_keyed(d / "memory.events.local").get("oom_kill", 0)
                       for d in self._subtree(top))
        return read_keyed(top / "memory.events").get("oom_kill", 0)

