"""What every cgroup backend offers, plus the parts that are the same on v1 and v2.

A container's cgroup is `<parent>/<name>` in every hierarchy the backend handles; limits are
written there.  Its processes live one level down in `<parent>/<name>/ct`, which becomes the
root of the container's cgroup namespace, so the container may be given that subtree to
write in without being able to raise the limits set above it.
"""

import abc
import errno
import os
import signal
import time
from pathlib import Path

from .. import cgroupfs
from ..cgroupfs import POLL   # seconds between looks while waiting for processes to exit
from ..errors import Conflict, CtrunError, HostUnsupported, InvalidInput, NotFound

LEAF = "ct"
# v1 devices cgroup allowlist: what a container's /dev holds, plus pty masters/slaves.
DEVICE_ALLOW = ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
                "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c *:* m", "b *:* m"]
SETTLE = 1.0         # longest wait for the kernel to settle (a freeze, a child going offline)


def read(path):
    """A control file's text.  os-level I/O: a third of open()'s cost, which `stats` of many
    containers feels; a short read is the end of a cgroup (seq_file) file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536:
            while chunk := os.read(fd, 65536):
                data += chunk
    finally:
        os.close(fd)
    return data.decode()


def write(path, data):
    """One write() per value, as cgroupfs expects; no O_CREAT: a missing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, str(data).encode())
    finally:
        os.close(fd)


def write_if_present(path, data):
    """write() for teardown paths: False when the cgroup is already gone (ENOENT/ENODEV).

    The monitor and a destroy may remove the same cgroup at once; the loser must not fail.
    """
    try:
        write(path, data)
        return True
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise


def read_keyed(path):
    """A flat keyed file ("key value" lines) as a dict of ints; {} when absent."""
    try:
        text = read(path)
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_num(path):
    """The int in a one-value file ("max" and a missing file read as None)."""
    try:
        text = read(path).split()
    except FileNotFoundError:
        return None
    if not text or text[0] == "max":
        return None
    return int(text[0])


def beancounter(resource, held, maxheld=None, barrier=None, limit=None, failcnt=0):
    """One OpenVZ-style row (/proc/user_beancounters columns)."""
    return {"resource": resource, "held": held, "maxheld": maxheld, "barrier": barrier,
            "limit": limit, "failcnt": failcnt}


# why the kernel refuses a limit, by (field, errno); the message says what to change
_HINTS = {
    ("memory", errno.EBUSY): "current usage is above it",
    ("memory_swap", errno.EBUSY): "current memory plus swap usage is above it",
    ("memory", errno.EINVAL): "it is above the memory+swap limit; raise --memory-swap with it",
    ("memory_swap", errno.EINVAL): "it is below the memory limit; give at least --memory",
    ("cpus", errno.EINVAL): "a quota must be at least 1 ms and within the parent cgroup's",
    ("cpu_period", errno.EINVAL): "a period must be 1 ms to 1 s and keep the quota within "
                                  "the parent cgroup's",
    ("cpuset_cpus", errno.EINVAL): "the cpus must be online and allowed to the parent cgroup",
    ("cpuset_mems", errno.EINVAL): "the nodes must be online and allowed to the parent cgroup",
    ("cpuset_cpus", errno.EBUSY): "a sub-cgroup of the container still uses other cpus",
    ("cpuset_mems", errno.EBUSY): "a sub-cgroup of the container still uses other nodes",
}

# stats() sections and the controller group each is read from ("cpuacct": CPU accounting)
STAT_SECTIONS = (("cpu", "cpuacct"), ("memory", "memory"), ("pids", "pids"),
                 ("blkio", "blkio"))
LIMIT_GROUPS = ("cpuset", "memory", "cpu", "pids", "blkio")


def _check_component(part, what):
    if not part or part in (".", "..") or "/" in part or "\0" in part or "\n" in part:
        raise InvalidInput(f"invalid cgroup {what} {part!r}; use a plain directory name")


class CgroupManager(abc.ABC):
    """One container's cgroup across the hierarchies of one backend."""

    timeout = cgroupfs.TIMEOUT   # default bound, in seconds, on waiting for processes to go
    sysfs = None     # where /sys is (None: limits.SYSFS); tests point it at a fake tree

    def __init__(self, name, parent="ctrun", layout=None, timeout=None, leaf=LEAF):
        """leaf: the level below `<parent>/<name>` the processes join; None puts them in
        `<parent>/<name>` itself, where an OCI client's cgroupsPath says they are."""
        _check_component(name, "name")
        self.leaf = leaf
        self.parent_parts = [p for p in str(parent).split("/") if p]
        for part in self.parent_parts:
            _check_component(part, "parent")
        if layout is None:
            from .detect import detect
            layout = detect()
        self.name, self.layout = name, layout
        self.rel = "/".join(self.parent_parts + [name])
        if timeout is not None:
            self.timeout = timeout

    # -- what a backend provides ---------------------------------------------------------
    @abc.abstractmethod
    def mounts(self):
        """{hierarchy key: mount point} this manager writes in."""

    def create(self, device_rules=None):
        """Make `<parent>/<name>/ct` in every hierarchy; idempotent.  remove() of another
        container of the parent may rmdir the emptied parent between two of our mkdirs: the
        whole creation then runs again (the parent cannot go once our cgroup is in it)."""
        for attempt in range(3):
            try:
                return self._create(device_rules)
            except FileNotFoundError:
                if attempt == 2:
                    raise

    @abc.abstractmethod
    def _create(self, device_rules=None):
        """create()'s work, once."""

    @abc.abstractmethod
    def kill_all(self, sig=signal.SIGKILL, timeout=None):
        """Signal every process in the cgroup; returns the pids still there after the wait."""

    @abc.abstractmethod
    def oom_kills(self):
        """How many processes the OOM killer has killed in this cgroup's subtree."""

    def supports_device_rules(self):
        return False

    # -- resource control: a backend says which controller groups it carries ("memory",
    # "cpu", "cpuacct", "cpuset", "pids", "blkio", "freezer") and reads/writes their files
    def has(self, group):
        return False

    def _side(self, group):
        """The manager holding `group` here: self, one side of a hybrid, or None."""
        return self if self.has(group) else None

    def _apply(self, limits, fields):
        raise NotImplementedError

    def _read_limits(self, group):
        raise NotImplementedError

    def _stats(self, section):
        raise NotImplementedError

    def _freeze_wait(self):
        raise NotImplementedError

    def _thaw_wait(self):
        raise NotImplementedError

    def _is_frozen(self):
        return False

    def set_devices_allowlist(self, rules):
        raise HostUnsupported(f"cgroup {self.rel}: device rules need the cgroup v1 devices "
                              "controller, which this host lacks; drop CAP_MKNOD and mount nodev")

    # -- test hooks: cgroupfs populates new directories and lets rmdir remove its files ------
    def _mkdir(self, path):
        os.mkdir(path)

    def _rmdir(self, path):
        os.rmdir(path)

    # -- shared behaviour -----------------------------------------------------------------
    def dirs(self):
        """{hierarchy key: Path of <parent>/<name>}."""
        return {key: mnt / self.rel for key, mnt in self.mounts().items()}

    def paths(self):
        return {key: str(p) for key, p in self.dirs().items()}

    def procs_files(self):
        return [(p / self.leaf if self.leaf else p) / "cgroup.procs"
                for p in self.dirs().values()]

    def exists(self):
        return any(p.is_dir() for p in self.dirs().values())

    def _ensure_dir(self, path):
        """mkdir that tolerates an existing cgroup and turns host refusals into one-line errors."""
        try:
            self._mkdir(path)
        except FileExistsError:
            if not path.is_dir():
                raise InvalidInput(f"cannot create cgroup {path}: a file of that name exists; "
                                   "pick another container name") from None
            return False
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise HostUnsupported(f"cannot create cgroup {path}: {e.strerror.lower()}; "
                                      "run ctrun as root with a writable cgroup mount") from None
            raise
        return True

    def _levels(self):
        return self.parent_parts + [self.name] + ([self.leaf] if self.leaf else [])

    def add(self, pid):
        for f in self.procs_files():
            try:
                write(f, pid)
            except ProcessLookupError:
                raise NotFound(f"process {pid} does not exist; start it before adding it "
                               f"to cgroup {self.rel}") from None

    def _subtree(self, top):
        """Every cgroup directory at or below `top`, deepest first; [] if absent."""
        return [Path(d) for d in cgroupfs.subtree(top)]

    def _read_procs(self, directory):
        try:
            return [int(x) for x in read(directory / "cgroup.procs").split()]
        except FileNotFoundError:
            return []

    def pids(self):
        """Every process in the cgroup or below it, in any hierarchy, sorted."""
        found = set()
        for top in self.dirs().values():
            for d in self._subtree(top):
                found.update(self._read_procs(d))
        return sorted(found)

    # freezing stops forks racing the signal loop; backends say how (or that they can't)
    def _freeze(self):
        return False

    def _thaw(self):
        pass

    def _signal_loop(self, sig, timeout):
        """Freeze, signal every pid, thaw, and repeat for SIGKILL until empty or out of time.

        Other signals are sent once: re-sending SIGTERM would interrupt a clean shutdown.
        """
        if not self.pids():
            return []  # the common case at teardown: nothing to freeze or signal
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        me, first = os.getpid(), True
        while True:
            if first or sig == signal.SIGKILL:
                frozen = self._freeze()
                try:
                    pids = self.pids()
                    for pid in pids:
                        if pid != me:
                            try:
                                os.kill(pid, sig)
                            except ProcessLookupError:
                                pass
                finally:
                    if frozen:
                        self._thaw()
                first = False
            else:
                pids = self.pids()
            if not pids:
                return []
            if time.monotonic() >= deadline:
                return pids
            time.sleep(POLL)

    def _wait_empty(self, timeout):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while pids := self.pids():
            if time.monotonic() >= deadline:
                return pids
            time.sleep(POLL)
        return []

    def discard(self):
        """Kill whatever is left and remove the cgroup; True if there was one."""
        gone = self._remove_idle()
        if gone is not None:
            return gone
        if not self.exists():
            return False
        self.kill_all()
        self.remove()
        return True

    def _remove_idle(self):
        """discard() of the common case at a container's end, in one pass: no process and
        no cgroup of the container's own below the leaf, so each level goes at its first
        rmdir (no scan for processes or sub-cgroups, no wait).  True/False as discard
        returns; None as soon as one level is busy: discard's full way does the rest."""
        existed = False
        for d in self.dirs().values():
            for p in ([d / self.leaf] if self.leaf else []) + [d]:
                try:
                    self._rmdir(p)
                    existed = True
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        return None
                    raise
        if existed:
            self.remove_parent_if_empty(levels=1)
        return existed

    def remove(self, timeout=None):
        """rmdir `<parent>/<name>` and everything below it, leaves first, then the parent's
        last level once no container is left in it (ctrun makes it on demand: `ctrun`, or
        CTRUN_CGROUP_PARENT's last part; the levels above are the host's placement of it);
        fine if already gone."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        busy = cgroupfs.remove(self.dirs().values(), deadline, self._rmdir)
        if busy is not None:
            pids = self.pids()
            if pids:
                raise Conflict(f"cgroup {self.rel} still has processes "
                               f"{', '.join(map(str, pids))}; kill them and retry")
            raise Conflict(f"cgroup {self.rel} is busy ({busy} cannot be removed); "
                           "remove what holds it and retry")
        self.remove_parent_if_empty(levels=1)

    def remove_parent_if_empty(self, levels=None):
        """rmdir the parent levels (the innermost `levels` of them, or all) that no other
        cgroup uses; a busy level (another container, a create under way) stays."""
        n = len(self.parent_parts)
        for mnt in self.mounts().values():
            for i in range(n, max(0, n - (levels or n)), -1):
                if not cgroupfs.rmdir_if_empty(mnt.joinpath(*self.parent_parts[:i]), self._rmdir):
                    break

    # -- resource control ------------------------------------------------------------------
    def apply(self, limits, skip=()):
        """Write the set fields of `limits` (a limits.Limits) into `<parent>/<name>`, except
        the fields named in `skip`.  Idempotent, and fine on a running container."""
        from .limits import CONTROLLER, option
        plan = {}
        for f in limits.set_fields():
            if f in skip:
                continue
            side = self._side(CONTROLLER[f])
            if side is None:
                raise HostUnsupported(
                    f"cannot set {option(f)} on container {self.name}: this host has no "
                    f"{CONTROLLER[f]} controller; drop the option or use --ignore-unsupported")
            plan.setdefault(side, []).append(f)
        for side, fields in plan.items():
            side._apply(limits, fields)

    def _gone(self, e):
        return NotFound(f"container {self.name} has no cgroup {self.rel} ({e.filename}); "
                        "start the container first")

    def read_limits(self):
        """The limits as the kernel has them now: bytes, CPU fractions, None = no limit.
        A controller this host lacks leaves its keys out."""
        out = {}
        try:
            for group in LIMIT_GROUPS:
                side = self._side(group)
                if side is not None:
                    out.update(side._read_limits(group))
        except FileNotFoundError as e:
            raise self._gone(e) from None
        return out

    def stats(self, only=None):
        """Usage counters and OpenVZ-style beancounters, from a few files per controller.

        only: the sections to read (e.g. ("cpu",) for a second CPU sample)."""
        out, beans = {}, []
        try:
            for section, group in STAT_SECTIONS:
                if only is not None and section not in only:
                    continue
                side = self._side(group)
                if side is not None:
                    out[section], rows = side._stats(section)
                    beans += rows
        except FileNotFoundError as e:
            raise self._gone(e) from None
        out["beancounters"] = beans
        return out

    def _freezer(self, verb):
        side = self._side("freezer")
        if side is None:
            raise HostUnsupported(f"cannot {verb} container {self.name}: this host has no "
                                  "cgroup freezer; mount the v1 freezer controller or use "
                                  "cgroup v2 (Linux 5.2 or later)")
        return side

    def freeze(self):
        """Stop every process of the container (OpenVZ's suspend); waits, bounded by
        self.timeout, until the kernel reports the cgroup frozen."""
        try:
            self._freezer("freeze")._freeze_wait()
        except FileNotFoundError as e:
            raise self._gone(e) from None

    def thaw(self):
        try:
            self._freezer("thaw")._thaw_wait()
        except FileNotFoundError as e:
            raise self._gone(e) from None

    def frozen(self):
        side = self._side("freezer")
        try:
            return side is not None and side._is_frozen()
        except FileNotFoundError:
            return False

    def _wait_state(self, check, failure, undo=None):
        """Poll check() until true; after self.timeout, undo() and raise `failure`."""
        deadline = time.monotonic() + self.timeout
        while not check():
            if time.monotonic() >= deadline:
                if undo is not None:
                    undo()
                raise CtrunError(failure)
            time.sleep(POLL)

    def _freeze_failed(self):
        return (f"cannot freeze container {self.name}: its processes did not all stop within "
                f"{self.timeout:g}s (one may be stuck in the kernel); it was left running, retry")

    def _thaw_failed(self):
        return (f"cannot thaw container {self.name}: the kernel did not report it thawed "
                f"within {self.timeout:g}s; retry")

    def _put(self, path, data, field, value):
        """One limit file write; a refusal becomes a one-line error naming the option."""
        try:
            write(path, data)
        except OSError as e:
            raise self._refused(e, path, field, value) from None

    def _refused(self, e, path, field, value):
        from .limits import option, shown
        what = f"cannot set {option(field)} {shown(field, value)} on container {self.name}"
        if e.errno == errno.ENOENT:
            if not path.parent.is_dir():
                return NotFound(f"{what}: its cgroup {path.parent} does not exist; start the "
                                "container first")
            return HostUnsupported(f"{what}: this kernel has no {path.name}; drop the option "
                                   "or use --ignore-unsupported")
        hint = _HINTS.get((field, e.errno))
        return CtrunError(f"{what}: the kernel refused ({e.strerror})"
                          + (f": {hint}" if hint else ""))

    def __repr__(self):
        return f"<{type(self).__name__} {self.rel}>"
