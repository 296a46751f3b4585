"""cgroup v1 (one hierarchy per controller group), and the hybrid v1 + cgroup2 host.

File access for controllers goes through cgroupspy's controller classes.  Only
`cgroupspy.controllers` is used (about 1.5 ms to import): its node/tree API imports logging,
which costs about 20 ms, so it is left out, and the import is done lazily so v2 hosts and
commands that never touch a v1 controller file do not pay for it.
"""

import errno
import os
import re
import signal
import time

from ..errors import Conflict, InvalidInput
from .base import LEAF, POLL, SETTLE, CgroupManager, read, write, write_if_present
from .v2 import KEY as V2_KEY, V2Manager

# "type major:minor access", e.g. "c 1:3 rwm", "b *:* m"
_DEVICE_RULE = re.compile(r"[abc] (\d+|\*):(\d+|\*) [rwm]{1,3}")


class _Node:
    """The one attribute cgroupspy's controllers read from a tree node."""

    __slots__ = ("full_path",)

    def __init__(self, path):
        self.full_path = os.fsencode(path)


def _ctl(kind, path):
    from cgroupspy import controllers
    return getattr(controllers, kind)(_Node(path))


def _check_rules(rules):
    rules = [" ".join(str(r).split()) for r in rules]
    for r in rules:
        if not _DEVICE_RULE.fullmatch(r):
            raise InvalidInput(f"invalid device rule {r!r}; use 'c|b|a major:minor rwm', "
                               "e.g. 'c 1:3 rwm'")
    return rules


class V1Manager(CgroupManager):
    def mounts(self):
        return dict(self.layout.v1)

    def _inherit_cpuset(self, d):
        # a new v1 cpuset starts with no cpus or mems, and tasks cannot join it until set
        child, parent = _ctl("CpuSetController", d), _ctl("CpuSetController", d.parent)
        for f in (b"cpuset.cpus", b"cpuset.mems"):
            if not child.get_property(f):
                value = parent.get_property(f)
                if value:
                    child.set_property(f, value)

    def _make(self, key, d):
        self._ensure_dir(d)
        if "cpuset" in key.split(","):
            self._inherit_cpuset(d)

    def create(self, device_rules=None):
        """Make the cgroup; with `device_rules`, the devices allowlist is written on
        `<parent>/<name>` before `ct` exists (the kernel refuses to change a cgroup's
        default once it has children), so `ct` inherits it at mkdir."""
        dev_key = self.layout.has_v1("devices") if device_rules is not None else None
        rules = _check_rules(device_rules) if dev_key else None
        for key, mnt in self.layout.v1.items():
            cur = mnt
            for part in self._levels():
                if key == dev_key and part == LEAF:
                    self._write_device_rules(cur, rules)
                cur = cur / part
                self._make(key, cur)

    def _write_device_rules(self, d, rules):
        ctl = _ctl("DevicesController", d)
        ctl.set_property(b"devices.deny", "a")
        for r in rules:
            ctl.allow = r

    def _read_procs(self, directory):
        try:
            return _ctl("Controller", directory).procs
        except FileNotFoundError:
            return []

    def _freezer_state(self):
        key = self.layout.has_v1("freezer")
        return self.layout.v1[key] / self.rel / "freezer.state" if key else None

    def _freeze(self):
        f = self._freezer_state()
        if f is None or not write_if_present(f, "FROZEN"):
            return False
        end = time.monotonic() + SETTLE
        try:
            while read(f).strip() != "FROZEN" and time.monotonic() < end:
                time.sleep(POLL)
        except FileNotFoundError:
            return False
        return True

    def _thaw(self):
        f = self._freezer_state()
        if f is not None:
            write_if_present(f, "THAWED")

    def kill_all(self, sig=signal.SIGKILL, timeout=None):
        return self._signal_loop(sig, timeout)

    def oom_kills(self):
        # v1 counts a kill only in the victim's own memcg, so add up the whole subtree
        key = self.layout.has_v1("memory")
        if key is None:
            return 0
        total = 0
        for d in self._subtree(self.layout.v1[key] / self.rel):
            try:
                total += _ctl("MemoryController", d).oom_control.get("oom_kill", 0)
            except (FileNotFoundError, AttributeError):
                pass
        return total

    def supports_device_rules(self):
        return self.layout.has_v1("devices") is not None

    def set_devices_allowlist(self, rules):
        """Deny every device in `<parent>/<name>`, then allow `rules` ("c 1:3 rwm", ...).

        The kernel refuses to change a cgroup's default while it has children, so an empty
        `ct` is removed first and made again to inherit the list.  Call before any process
        joins.
        """
        key = self.layout.has_v1("devices")
        if key is None:
            return super().set_devices_allowlist(rules)
        rules = _check_rules(rules)
        top = self.layout.v1[key] / self.rel
        if self.pids():
            raise Conflict(f"cgroup {self.rel} already has processes; set device rules "
                           "before the container starts")
        for d in self._subtree(top / LEAF):
            self._rmdir(d)
        ctl = _ctl("DevicesController", top)
        # a just-removed child stays online until an RCU grace period passes: EINVAL till then
        end = time.monotonic() + SETTLE
        while True:
            try:
                ctl.set_property(b"devices.deny", "a")
                break
            except OSError as e:
                if e.errno != errno.EINVAL or time.monotonic() >= end:
                    raise
                time.sleep(POLL / 10)
        for r in rules:
            ctl.allow = r
        self._make(key, top / LEAF)


class HybridManager(CgroupManager):
    """v1 controllers plus the same path in the cgroup2 mount, so that accounting (e.g.
    hugetlb) bound to cgroup2 covers the container too.  Composed of one manager per side."""

    def __init__(self, name, parent="ctrun", layout=None, timeout=None):
        super().__init__(name, parent, layout, timeout)
        self.v1 = V1Manager(name, parent, self.layout, timeout)
        self.v2 = V2Manager(name, parent, self.layout, timeout)

    def mounts(self):
        return {**self.v1.mounts(), **self.v2.mounts()}

    def create(self, device_rules=None):
        self.v1.create(device_rules)
        self.v2.create()

    def _freeze(self):
        return self.v1._freeze()

    def _thaw(self):
        self.v1._thaw()

    def kill_all(self, sig=signal.SIGKILL, timeout=None):
        if sig == signal.SIGKILL and self.v2.mounts():
            write_if_present(self.v2.dirs()[V2_KEY] / "cgroup.kill", 1)
        # the frozen signal loop over both sides catches what cgroup.kill could not see
        return self._signal_loop(sig, timeout)

    def oom_kills(self):
        side = self.v1 if self.layout.has_v1("memory") else self.v2
        return side.oom_kills()

    def supports_device_rules(self):
        return self.v1.supports_device_rules()

    def set_devices_allowlist(self, rules):
        return self.v1.set_devices_allowlist(rules)
