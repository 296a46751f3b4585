"""cgroup v1 (one hierarchy per controller group), and the hybrid v1 + cgroup2 host.

File access for controllers goes through cgroupspy's controller classes.  Only
`cgroupspy.controllers` is used (about 1.5 ms to import): its node/tree API imports logging,
which costs about 20 ms, so it is left out, and the import is done lazily so v2 hosts and
commands that never touch a v1 controller file do not pay for it.  Limits are read through
cgroupspy but written with base.write: cgroupspy opens with O_CREAT, which turns a missing
control file into a confusing EACCES on cgroupfs.
"""

import errno
import os
import re
import signal
import time

from ..errors import Conflict, InvalidInput
from .base import (LEAF, POLL, SETTLE, CgroupManager, beancounter, read, read_keyed, read_num,
                   write, write_if_present)
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


def _limit(value):
    """None for v1's "no limit" (-1, or LONG_MAX rounded to a page)."""
    from .limits import UNLIMITED_V1
    return None if value is None or value < 0 or value >= UNLIMITED_V1 else value


def _opt_int(ctl, attr):
    """A cgroupspy integer attribute, None when the file is absent (e.g. memsw, peak)."""
    try:
        return getattr(ctl, attr)
    except FileNotFoundError:
        return None


def _throttles(path):
    """{"MAJ:MIN": rate} from a blkio.throttle.*_device file."""
    out = {}
    for line in read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _io_totals(path):
    """{"Read": n, "Write": n} summed over devices from a blkio io_service* file."""
    out = {"Read": 0, "Write": 0}
    try:
        text = read(path)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in out:
            out[parts[1]] += int(parts[2])
    return out


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

    def _create(self, device_rules=None):
        """Make the cgroup; with `device_rules`, the devices allowlist is written on
        `<parent>/<name>` before `ct` exists (the kernel refuses to change a cgroup's
        default once it has children), so `ct` inherits it at mkdir."""
        dev_key = self.layout.has_v1("devices") if device_rules is not None else None
        rules = _check_rules(device_rules) if dev_key else None
        for key, mnt in self.layout.v1.items():
            cur = mnt
            for part in self._levels():
                if key == dev_key and self.leaf and part == self.leaf:
                    self._write_device_rules(cur, rules)
                cur = cur / part
                self._make(key, cur)
            if key == dev_key and not self.leaf:  # no child yet: the list can still change
                self._write_device_rules(cur, rules)

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
        return sum(read_keyed(d / "memory.oom_control").get("oom_kill", 0)
                   for d in self._subtree(self.layout.v1[key] / self.rel))

    def supports_device_rules(self):
        return self.layout.has_v1("devices") is not None

    # -- resource control -----------------------------------------------------------------
    def has(self, group):
        return self.layout.has_v1(group) is not None

    def _dir(self, group):
        return self.layout.v1[self.layout.has_v1(group)] / self.rel

    def _apply(self, limits, fields):
        from .limits import DEVICE_FIELDS
        fs = set(fields)
        # cpuset first, so a task is never left with no cpu it may run on
        if fs & {"cpuset_cpus", "cpuset_mems"}:
            self._apply_cpuset(limits, fs)
        if fs & {"memory", "memory_swap", "memory_reservation"}:
            self._apply_memory(limits, fs)
        if fs & {"cpus", "cpu_period", "cpu_shares", "cpu_weight"}:
            self._apply_cpu(limits, fs)
        if "pids_limit" in fs:
            n = limits.pids_limit
            self._put(self._dir("pids") / "pids.max", "max" if n < 0 else n, "pids_limit", n)
        if fs & {"blkio_weight", *DEVICE_FIELDS}:
            self._apply_blkio(limits, fs)

    def _write_ordered(self, writes):
        """(path, data, field, value) in order; if the kernel refuses one with EINVAL or
        EBUSY, all again in reverse: memory must never exceed memsw, so raising both needs
        memsw first and lowering needs memory first (likewise a CFS quota and period)."""
        for path, data, field, value in writes:
            try:
                write(path, data)
            except OSError as e:
                if len(writes) < 2 or e.errno not in (errno.EINVAL, errno.EBUSY):
                    raise self._refused(e, path, field, value) from None
                break
        else:
            return
        for path, data, field, value in reversed(writes):
            self._put(path, data, field, value)

    def _apply_memory(self, limits, fs):
        d = self._dir("memory")
        self._write_ordered([
            (d / name, getattr(limits, f), f, getattr(limits, f))
            for f, name in (("memory", "memory.limit_in_bytes"),
                            ("memory_swap", "memory.memsw.limit_in_bytes")) if f in fs])
        if "memory_reservation" in fs:
            v = limits.memory_reservation
            self._put(d / "memory.soft_limit_in_bytes", v, "memory_reservation", v)

    def _apply_cpu(self, limits, fs):
        from .limits import DEFAULT_PERIOD, weight_to_shares
        d = self._dir("cpu")
        if "cpus" in fs or "cpu_period" in fs:
            cpu = _ctl("CpuController", d)
            cur_period = _opt_int(cpu, "cfs_period_us") or DEFAULT_PERIOD
            period = limits.cpu_period if "cpu_period" in fs else cur_period
            if "cpus" in fs:
                cpus = limits.cpus
            else:
                # a new period alone keeps the CPU fraction the quota gave
                quota = _opt_int(cpu, "cfs_quota_us")
                cpus = -1 if quota is None else quota / cur_period
            quota = -1 if cpus < 0 else round(cpus * period)
            field = "cpus" if "cpus" in fs else "cpu_period"
            value = getattr(limits, field)
            self._write_ordered([(d / "cpu.cfs_period_us", period, field, value),
                                 (d / "cpu.cfs_quota_us", quota, field, value)])
        if "cpu_shares" in fs:
            self._put(d / "cpu.shares", limits.cpu_shares, "cpu_shares", limits.cpu_shares)
        elif "cpu_weight" in fs:
            self._put(d / "cpu.shares", weight_to_shares(limits.cpu_weight), "cpu_weight",
                      limits.cpu_weight)

    def _apply_cpuset(self, limits, fs):
        """v1 keeps every cpuset inside its parent's, and the container's cgroup has `ct`
        (and maybe cgroups of its own) below it.  So: widen each level to old | new, parents
        first, then narrow to the target, children first.  `ct` gets the new set; deeper
        cgroups keep what they had of it (or all of it, if they had none)."""
        from .limits import format_list, parse_list
        top = self._dir("cpuset")
        for field, name in (("cpuset_mems", "cpuset.mems"), ("cpuset_cpus", "cpuset.cpus")):
            if field not in fs:
                continue
            value = getattr(limits, field)
            new = parse_list(value)
            if not top.is_dir():
                raise self._refused(FileNotFoundError(errno.ENOENT, "gone"), top / name,
                                    field, value)
            levels = list(reversed(self._subtree(top)))           # parents first
            cur = {d: parse_list(read(d / name)) for d in levels}
            target = {}
            for d in levels:
                if d in (top, top / LEAF):
                    target[d] = new
                else:
                    above = target[d.parent]
                    target[d] = (cur[d] & above) or above
            for d in levels:
                if not target[d] <= cur[d]:
                    self._put(d / name, format_list(cur[d] | target[d]), field, value)
            for d in reversed(levels):
                if target[d] != cur[d] | target[d]:
                    self._put(d / name, format_list(target[d]), field, value)

    def _apply_blkio(self, limits, fs):
        from .limits import DEVICE_FIELDS, device_name, device_number, option
        d = self._dir("blkio")
        if "blkio_weight" in fs:
            # blkio.weight was CFQ's (gone since Linux 5.0); bfq has its own file
            f = d / "blkio.weight"
            if not f.exists():
                f = d / "blkio.bfq.weight"
            self._put(f, limits.blkio_weight, "blkio_weight", limits.blkio_weight)
        for field in DEVICE_FIELDS:
            if field not in fs:
                continue
            f = d / f"blkio.throttle.{field[7:]}_device"
            want = {device_number(dev, option(field)): (dev, rate)
                    for dev, rate in getattr(limits, field).items()}
            try:
                have = _throttles(f)
            except OSError as e:
                raise self._refused(e, f, field, getattr(limits, field)) from None
            # the map is the whole truth for this field: throttles on other devices go
            for majmin in have.keys() - want.keys():
                self._put(f, f"{majmin} 0", field, {device_name(majmin, self.sysfs): 0})
            for majmin, (dev, rate) in want.items():
                if have.get(majmin, 0) != rate:
                    self._put(f, f"{majmin} {rate}", field, {dev: rate})

    def _read_limits(self, group):
        from .limits import DEVICE_FIELDS, device_name, shares_to_weight
        d = self._dir(group)
        if group == "memory":
            mem = _ctl("MemoryController", d)
            return {"memory": _limit(mem.limit_in_bytes),
                    "memory_swap": _limit(_opt_int(mem, "memsw_limit_in_bytes")),
                    "memory_reservation": _limit(mem.soft_limit_in_bytes)}
        if group == "cpu":
            cpu = _ctl("CpuController", d)
            quota, period, shares = cpu.cfs_quota_us, cpu.cfs_period_us, cpu.shares
            return {"cpus": None if quota is None else quota / period, "cpu_period": period,
                    "cpu_shares": shares, "cpu_weight": shares_to_weight(shares)}
        if group == "cpuset":
            cs = _ctl("CpuSetController", d)
            return {"cpuset_cpus": cs.get_property(b"cpuset.cpus"),
                    "cpuset_mems": cs.get_property(b"cpuset.mems")}
        if group == "pids":
            return {"pids_limit": read_num(d / "pids.max")}
        # blkio
        out = {"blkio_weight": None}
        for name in ("blkio.weight", "blkio.bfq.weight"):
            try:
                out["blkio_weight"] = int(read(d / name).split()[-1])
                break
            except FileNotFoundError:
                continue
        for field in DEVICE_FIELDS:
            try:
                rules = _throttles(d / f"blkio.throttle.{field[7:]}_device")
            except FileNotFoundError:
                if not d.is_dir():
                    raise
                continue
            out[field] = {device_name(k, self.sysfs): v for k, v in rules.items()}
        return out

    def _stats(self, section):
        # plain reads here, not cgroupspy: `ctrun stats` reads every container twice, and
        # open() costs three times os.open()
        d = self._dir(section if section != "cpu" else "cpuacct")
        if section == "cpu":
            usage = int(read(d / "cpuacct.usage"))
            user, system = read_num(d / "cpuacct.usage_user"), read_num(d / "cpuacct.usage_sys")
            if user is None or system is None:     # before Linux 4.16: USER_HZ ticks
                tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
                ticks = read_keyed(d / "cpuacct.stat")
                user, system = ticks.get("user", 0) * tick, ticks.get("system", 0) * tick
            throttle = read_keyed(self._dir("cpu") / "cpu.stat") if self.has("cpu") else {}
            return {"usage_ns": usage, "user_ns": user, "system_ns": system,
                    "throttled_ns": throttle.get("throttled_time", 0),
                    "nr_throttled": throttle.get("nr_throttled", 0)}, []
        if section == "memory":
            usage = int(read(d / "memory.usage_in_bytes"))
            limit = _limit(read_num(d / "memory.limit_in_bytes"))
            max_usage, failcnt = read_num(d / "memory.max_usage_in_bytes"), \
                read_num(d / "memory.failcnt") or 0
            soft = _limit(read_num(d / "memory.soft_limit_in_bytes"))
            memsw = read_num(d / "memory.memsw.usage_in_bytes")
            swap = None if memsw is None else max(0, memsw - usage)
            # a charge is refused by whichever counter fills first: with no room for swap
            # (memsw == memory) that is memsw, so both count as hitting the memory limit
            # (since Linux 6.15 the kernel keeps no memsw failcnt: it reads 0)
            memsw_fail = 0 if memsw is None else read_num(d / "memory.memsw.failcnt") or 0
            failcnt += memsw_fail
            kills = self.oom_kills()
            # v1 counts no OOM events apart from kills, so oom is the kill count
            data = {"usage": usage, "max_usage": max_usage, "limit": limit,
                    "failcnt": failcnt, "swap": swap, "oom": kills, "oom_kill": kills}
            rows = [beancounter("memory", usage, max_usage, soft, limit, failcnt)]
            if memsw is not None:
                total = _limit(read_num(d / "memory.memsw.limit_in_bytes"))
                swap_limit = None if total is None else total - (limit or 0)
                rows.append(beancounter("swap", swap, None, None, swap_limit, memsw_fail))
            return data, rows
        if section == "pids":
            current, limit = read_num(d / "pids.current"), read_num(d / "pids.max")
            if current is None:
                raise FileNotFoundError(errno.ENOENT, "no cgroup", str(d))
            # v1 counts a refused fork in the forking task's own cgroup: add up the subtree
            failcnt = sum(read_keyed(c / "pids.events").get("max", 0) for c in self._subtree(d))
            return ({"current": current, "limit": limit, "failcnt": failcnt},
                    [beancounter("pids", current, read_num(d / "pids.peak"), None, limit,
                                 failcnt)])
        # blkio: the throttle counters see every I/O, whatever the scheduler
        nbytes = _io_totals(d / "blkio.throttle.io_service_bytes_recursive")
        ops = _io_totals(d / "blkio.throttle.io_serviced_recursive")
        if not d.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no cgroup", str(d))
        return {"read_bytes": nbytes["Read"], "write_bytes": nbytes["Write"],
                "read_ops": ops["Read"], "write_ops": ops["Write"]}, []

    def _freeze_wait(self):
        f = self._dir("freezer") / "freezer.state"
        write(f, "FROZEN")
        # reading freezer.state is what moves FREEZING on to FROZEN
        self._wait_state(lambda: read(f).strip() == "FROZEN", self._freeze_failed(),
                         undo=lambda: write_if_present(f, "THAWED"))

    def _thaw_wait(self):
        f = self._dir("freezer") / "freezer.state"
        write(f, "THAWED")
        self._wait_state(lambda: read(f).strip() == "THAWED", self._thaw_failed())

    def _is_frozen(self):
        return read(self._dir("freezer") / "freezer.state").strip() == "FROZEN"

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

    def __init__(self, name, parent="ctrun", layout=None, timeout=None, leaf=LEAF):
        super().__init__(name, parent, layout, timeout, leaf)
        self.v1 = V1Manager(name, parent, self.layout, timeout, leaf)
        self.v2 = V2Manager(name, parent, self.layout, timeout, leaf)

    def mounts(self):
        return {**self.v1.mounts(), **self.v2.mounts()}

    def has(self, group):
        return self._side(group) is not None

    def _side(self, group):
        # a v1 controller wins: cgroup2 here holds only what v1 does not mount
        if self.v1.has(group):
            return self.v1
        if self.v2.has(group):
            return self.v2
        return None

    def _create(self, device_rules=None):
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
