"""cgroup v2 (unified hierarchy): plain file writes."""

import errno
import signal
import time

from ..errors import InvalidInput
from .base import (POLL, SETTLE, CgroupManager, beancounter, read, read_keyed, read_num,
                   write, write_if_present)

KEY = "cgroup2"   # hierarchy key in paths(); /proc/<pid>/cgroup shows it as "0::"
# io.max keys of the device_* limits
IO_KEY = {"device_read_bps": "rbps", "device_write_bps": "wbps",
          "device_read_iops": "riops", "device_write_iops": "wiops"}


def _nested(path):
    """{"8:0": {"rbps": 1048576, ...}} from io.max / io.stat lines ("max" is left out)."""
    out = {}
    try:
        text = read(path)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        dev, *pairs = line.split()
        vals = {}
        for p in pairs:
            k, _, v = p.partition("=")
            if v.isdigit():
                vals[k] = int(v)
        out[dev] = vals
    return out


def _weight(path):
    """N from a cgroup2 weight file ("default N" first, then per-device lines), or None."""
    try:
        first = read(path).split("\n", 1)[0].split()
    except FileNotFoundError:
        return None
    return int(first[-1]) if first and first[-1].isdigit() else None


def joinable_procs(procs, mount, pid):
    """The cgroup.procs a new process of a container can join in the cgroup2 hierarchy at
    `mount`: `procs` itself, unless the container's init delegated controllers below it
    (systemd does, after moving itself to init.scope): then the kernel refuses processes
    there (the no-internal-processes rule, EBUSY), and the init's own cgroup is joined."""
    from pathlib import Path
    procs, mount = Path(procs), Path(mount)
    try:
        if not read(procs.with_name("cgroup.subtree_control")).strip():
            return procs
        with open(f"/proc/{pid}/cgroup") as f:
            rel = next(line[3:].strip() for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return procs
    own = mount / rel.lstrip("/")
    # only a cgroup inside the container's own subtree, never one it could point elsewhere
    if own != procs.parent and procs.parent in own.parents and ".." not in rel.split("/"):
        return own / "cgroup.procs"
    return procs


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

    def _create(self, device_rules=None):
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


    # -- resource control -----------------------------------------------------------------
    def has(self, group):
        if self.layout.v2 is None:
            return False
        if group in ("freezer", "cpuacct"):
            return True          # cgroup.freeze and cpu.stat are core files, in every cgroup
        from .limits import V2_NAME
        return V2_NAME.get(group, group) in self.layout.v2_controllers

    def _dir(self, group=None):
        return self.layout.v2 / self.rel

    def _apply(self, limits, fields):
        from .limits import DEVICE_FIELDS
        fs, d = set(fields), self._dir()
        for field, name in (("cpuset_mems", "cpuset.mems"), ("cpuset_cpus", "cpuset.cpus")):
            if field in fs:   # v2 intersects with the parent itself: no ordering needed
                self._put(d / name, getattr(limits, field), field, getattr(limits, field))
        if fs & {"memory", "memory_swap", "memory_reservation"}:
            self._apply_memory(limits, fs, d)
        if fs & {"cpus", "cpu_period", "cpu_shares", "cpu_weight"}:
            self._apply_cpu(limits, fs, d)
        if "pids_limit" in fs:
            n = limits.pids_limit
            self._put(d / "pids.max", "max" if n < 0 else n, "pids_limit", n)
        if fs & {"blkio_weight", *DEVICE_FIELDS}:
            self._apply_io(limits, fs, d)

    def _apply_memory(self, limits, fs, d):
        from .limits import format_size
        if "memory" in fs:
            n = limits.memory
            self._put(d / "memory.max", "max" if n < 0 else n, "memory", n)
        if "memory_swap" in fs:
            total = limits.memory_swap
            if total < 0:
                data = "max"
            else:
                # cgroup2 limits swap on its own: memory.swap.max = total - memory
                mem = limits.memory if "memory" in fs else read_num(d / "memory.max")
                if mem is None or mem < 0:
                    raise InvalidInput(f"cannot set --memory-swap {format_size(total)} on "
                                       f"container {self.name}: it counts memory plus swap, "
                                       "and memory has no limit; give --memory too")
                if total < mem:
                    raise InvalidInput(f"cannot set --memory-swap {format_size(total)} on "
                                       f"container {self.name}: it is below the memory limit "
                                       f"{format_size(mem)}; give at least that")
                data = total - mem
            self._put(d / "memory.swap.max", data, "memory_swap", total)
        if "memory_reservation" in fs:
            n = limits.memory_reservation
            self._put(d / "memory.low", 0 if n < 0 else n, "memory_reservation", n)

    def _cpu_max(self, d):
        """(quota or None, period) from cpu.max."""
        from .limits import DEFAULT_PERIOD
        try:
            quota, period = read(d / "cpu.max").split()
        except FileNotFoundError:
            return None, DEFAULT_PERIOD
        return (None if quota == "max" else int(quota)), int(period)

    def _apply_cpu(self, limits, fs, d):
        from .limits import shares_to_weight
        if "cpus" in fs or "cpu_period" in fs:
            quota, cur_period = self._cpu_max(d)
            period = limits.cpu_period if "cpu_period" in fs else cur_period
            if "cpus" in fs:
                cpus = limits.cpus
            else:   # a new period alone keeps the CPU fraction the quota gave
                cpus = -1 if quota is None else quota / cur_period
            quota = "max" if cpus < 0 else round(cpus * period)
            field = "cpus" if "cpus" in fs else "cpu_period"
            self._put(d / "cpu.max", f"{quota} {period}", field, getattr(limits, field))
        if "cpu_weight" in fs:
            self._put(d / "cpu.weight", limits.cpu_weight, "cpu_weight", limits.cpu_weight)
        elif "cpu_shares" in fs:
            self._put(d / "cpu.weight", shares_to_weight(limits.cpu_shares), "cpu_shares",
                      limits.cpu_shares)

    def _apply_io(self, limits, fs, d):
        from .limits import blkio_to_io_weight, device_name, device_number, option
        if "blkio_weight" in fs:
            w = limits.blkio_weight
            # bfq's own weight takes the blkio scale; io.weight (io.cost) a wider one
            if (d / "io.bfq.weight").exists():
                self._put(d / "io.bfq.weight", f"default {w}", "blkio_weight", w)
            else:
                self._put(d / "io.weight", f"default {blkio_to_io_weight(w)}", "blkio_weight", w)
        f = d / "io.max"
        have = None
        for field, key in IO_KEY.items():
            if field not in fs:
                continue
            if have is None:
                if not d.is_dir():
                    raise self._refused(FileNotFoundError(errno.ENOENT, "gone"), f, field,
                                        getattr(limits, field))
                have = _nested(f)
            want = {device_number(dev, option(field)): (dev, rate)
                    for dev, rate in getattr(limits, field).items()}
            # the map is the whole truth for this field: throttles on other devices go
            for majmin, vals in have.items():
                if key in vals and majmin not in want:
                    self._put(f, f"{majmin} {key}=max", field,
                              {device_name(majmin, self.sysfs): 0})
            for majmin, (dev, rate) in want.items():
                if have.get(majmin, {}).get(key, 0) != rate:
                    self._put(f, f"{majmin} {key}={rate or 'max'}", field, {dev: rate})

    def _read_limits(self, group):
        from .limits import device_name, io_to_blkio_weight, weight_to_shares
        d = self._dir()
        if group == "memory":
            mem = read_num(d / "memory.max")
            if mem is None and not d.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no cgroup", str(d))
            swap = read_num(d / "memory.swap.max")
            low = read_num(d / "memory.low")
            return {"memory": mem,
                    "memory_swap": None if mem is None or swap is None else mem + swap,
                    "memory_reservation": low or None}
        if group == "cpu":
            quota, period = self._cpu_max(d)
            weight = read_num(d / "cpu.weight")
            return {"cpus": None if quota is None else quota / period, "cpu_period": period,
                    "cpu_weight": weight,
                    "cpu_shares": None if weight is None else weight_to_shares(weight)}
        if group == "cpuset":
            # empty means "as the parent": report what is in force
            out = {}
            for field, name in (("cpuset_cpus", "cpuset.cpus"), ("cpuset_mems", "cpuset.mems")):
                out[field] = read(d / name).strip() or read(d / f"{name}.effective").strip()
            return out
        if group == "pids":
            return {"pids_limit": read_num(d / "pids.max")}
        # io
        weight = _weight(d / "io.bfq.weight")
        if weight is None:
            weight = _weight(d / "io.weight")
            weight = None if weight is None else io_to_blkio_weight(weight)
        out = {"blkio_weight": weight}
        limits = _nested(d / "io.max")
        for field, key in IO_KEY.items():
            out[field] = {device_name(dev, self.sysfs): vals[key]
                          for dev, vals in limits.items() if key in vals}
        return out

    def _stats(self, section):
        d = self._dir()
        if section == "cpu":
            st = read_keyed(d / "cpu.stat")
            if not st and not d.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no cgroup", str(d))
            return {"usage_ns": st.get("usage_usec", 0) * 1000,
                    "user_ns": st.get("user_usec", 0) * 1000,
                    "system_ns": st.get("system_usec", 0) * 1000,
                    "throttled_ns": st.get("throttled_usec", 0) * 1000,
                    "nr_throttled": st.get("nr_throttled", 0)}, []
        if section == "memory":
            usage = int(read(d / "memory.current"))
            peak, limit = read_num(d / "memory.peak"), read_num(d / "memory.max")
            events = read_keyed(d / "memory.events")
            kills = self.oom_kills()
            swap = read_num(d / "memory.swap.current")
            data = {"usage": usage, "max_usage": peak, "limit": limit,
                    "failcnt": events.get("max", 0), "swap": swap,
                    "oom": events.get("oom", 0), "oom_kill": kills}
            rows = [beancounter("memory", usage, peak, read_num(d / "memory.low") or None,
                                limit, events.get("max", 0))]
            if swap is not None:
                rows.append(beancounter(
                    "swap", swap, read_num(d / "memory.swap.peak"), None,
                    read_num(d / "memory.swap.max"),
                    read_keyed(d / "memory.swap.events").get("max", 0)))
            return data, rows
        if section == "pids":
            current = int(read(d / "pids.current"))
            limit = read_num(d / "pids.max")
            # a refused fork is counted where the forking task lives (the leaf) up to
            # Linux 6.8, at the cgroup whose limit refused it since 6.9: take both
            failcnt = max(read_keyed(d / "pids.events").get("max", 0),
                          read_keyed(d / (self.leaf or "") / "pids.events").get("max", 0))
            return ({"current": current, "limit": limit, "failcnt": failcnt},
                    [beancounter("pids", current, read_num(d / "pids.peak"), None, limit,
                                 failcnt)])
        # io
        totals = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
        stat = _nested(d / "io.stat")
        if not stat and not d.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no cgroup", str(d))
        for vals in stat.values():
            for k in totals:
                totals[k] += vals.get(k, 0)
        return {"read_bytes": totals["rbytes"], "write_bytes": totals["wbytes"],
                "read_ops": totals["rios"], "write_ops": totals["wios"]}, []

    def _events_frozen(self):
        return read_keyed(self._dir() / "cgroup.events").get("frozen") == 1

    def _freeze_wait(self):
        f = self._dir() / "cgroup.freeze"
        if not f.exists():
            if not f.parent.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no cgroup", str(f.parent))
            from ..errors import HostUnsupported
            raise HostUnsupported(f"cannot freeze container {self.name}: this kernel has no "
                                  "cgroup.freeze (cgroup v2 freezing needs Linux 5.2)")
        write(f, 1)
        self._wait_state(self._events_frozen, self._freeze_failed(),
                         undo=lambda: write_if_present(f, 0))

    def _thaw_wait(self):
        write(self._dir() / "cgroup.freeze", 0)
        self._wait_state(lambda: not self._events_frozen(), self._thaw_failed())

    def _is_frozen(self):
        return self._events_frozen()
