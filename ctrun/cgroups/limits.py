"""Resource limits: the user's options parsed and checked, and what this host cannot apply.

Only os/re/stat are imported: create and set parse limits on every call.  The managers
(v1.py, v2.py) turn a Limits into cgroup file writes.
"""

import os
import re
import stat

from ..errors import InvalidInput, quote

SYSFS = "/sys"
DEFAULT_PERIOD = 100000        # µs: the kernel's default CFS period
MIN_QUOTA = 1000               # µs: the kernel refuses a smaller CFS quota or period
MAX_PERIOD = 1000000
UNLIMITED_V1 = 1 << 62         # v1 reads "no limit" as LONG_MAX rounded to a page

FIELDS = ("memory", "memory_swap", "memory_reservation", "cpus", "cpu_period", "cpu_shares",
          "cpu_weight", "cpuset_cpus", "cpuset_mems", "pids_limit", "blkio_weight",
          "device_read_bps", "device_write_bps", "device_read_iops", "device_write_iops")
DEVICE_FIELDS = FIELDS[-4:]

# the controller each limit needs, by its v1 name (cgroup2 calls blkio "io")
CONTROLLER = {
    "memory": "memory", "memory_swap": "memory", "memory_reservation": "memory",
    "cpus": "cpu", "cpu_period": "cpu", "cpu_shares": "cpu", "cpu_weight": "cpu",
    "cpuset_cpus": "cpuset", "cpuset_mems": "cpuset", "pids_limit": "pids",
    "blkio_weight": "blkio", **{f: "blkio" for f in DEVICE_FIELDS},
}
V2_NAME = {"blkio": "io"}


def option(field):
    """The CLI spelling of a field: memory_swap -> --memory-swap."""
    return "--" + field.replace("_", "-")


# -- sizes ----------------------------------------------------------------------------------
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?b)?")
_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_NO_LIMIT = ("-1", "max", "unlimited")


def parse_size(text, what="size"):
    """Bytes from "512M", "1G", "1.5g", "100k", "1mb", "1024"; -1 for "-1"/"max"/"unlimited".

    Units are binary (k = 1024).  `what` names the option in the error.
    """
    if isinstance(text, bool):
        raise InvalidInput(f"{what} {quote(text)} is not a size; give one such as 512M or 1G")
    if isinstance(text, int):
        if text < -1:
            raise InvalidInput(f"{what} {quote(text)} is negative; give a size such as 512M, "
                               "or -1 for no limit")
        return text
    s = str(text).strip().lower()
    if s in _NO_LIMIT:
        return -1
    if s.startswith("-"):
        raise InvalidInput(f"{what} {quote(text)} is negative; give a size such as 512M, "
                           "or -1 for no limit")
    m = _SIZE.fullmatch(s)
    if not m:
        raise InvalidInput(f"{what} {quote(text)} is not a size; give bytes or a number with a "
                           "k, m, g or t suffix, such as 512M or 1.5G")
    number, unit = m[1], m[2]
    if "." in number:
        value = float(number) * _UNIT[unit]
        if value != int(value):
            raise InvalidInput(f"{what} {quote(text)} is not a whole number of bytes; "
                               "use a larger unit, such as 1.5M")
        return int(value)
    return int(number) * _UNIT[unit]


def format_size(n):
    """The shortest exact spelling of a byte count (67108864 -> "64M"); -1 -> "unlimited"."""
    if n is None or n < 0:
        return "unlimited"
    for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


# -- cpu weights: the usual linear map between v1 shares [2, 262144] and v2 weight [1, 10000].
# The inverses round up, so a value given on one scale reads back unchanged on that scale.
def shares_to_weight(shares):
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight):
    return 2 + ((weight - 1) * 262142 + 9998) // 9999


# blkio weight [10, 1000] onto cgroup2's io.weight [1, 10000] (io.bfq.weight takes it as is)
def blkio_to_io_weight(weight):
    return 1 + ((weight - 10) * 9999) // 990


def io_to_blkio_weight(weight):
    return 10 + ((weight - 1) * 990 + 9998) // 9999


# -- cpu and node lists ("0-3,6") ----------------------------------------------------------
_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


def parse_list(text):
    """{0, 1, 2, 3, 6} from "0-3,6"; ValueError when malformed or a range runs backwards."""
    out = set()
    text = text.strip()
    if not text:
        return out
    if not _LIST.fullmatch(text):
        raise ValueError(text)
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        lo, hi = int(lo), int(hi or lo)
        if hi < lo:
            raise ValueError(text)
        out.update(range(lo, hi + 1))
    return out


def format_list(items):
    """"0-3,6" from {0, 1, 2, 3, 6}."""
    parts, items = [], sorted(items)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


def _host_list(path, default):
    try:
        with open(path) as f:
            return parse_list(f.read())
    except (OSError, ValueError):
        return parse_list(default)


# -- block devices ---------------------------------------------------------------------------
def _disks(sysfs):
    """Names of the host's real disks (not loop, zram, dm...: those live under virtual/)."""
    out = []
    try:
        names = sorted(os.listdir(f"{sysfs}/block"))
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"{sysfs}/block/{name}")
        except OSError:
            target = ""
        if "/virtual/" not in target:
            out.append(name)
    return out


def _example_disk(sysfs=None):
    disks = _disks(sysfs or SYSFS)
    return f"/dev/{disks[0]}" if disks else "/dev/sda"


def device_number(path, what=None, sysfs=None):
    """"MAJ:MIN" of block device `path`; InvalidInput if it is missing or not a block device.

    `what` (an option such as --device-read-bps) starts the error message.
    """
    what = f"{what}: " if what else ""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidInput(f"{what}device {quote(path)} does not exist; give a block device such "
                           f"as {_example_disk(sysfs)}") from None
    except OSError as e:
        raise InvalidInput(f"{what}cannot look at device {quote(path)} ({e.strerror.lower()}); "
                           f"give a block device such as {_example_disk(sysfs)}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidInput(f"{what}{quote(path)} is not a block device; give one such as "
                           f"{_example_disk(sysfs)}")
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def device_name(majmin, sysfs=None):
    """"/dev/vda" for "254:0" (from sysfs), or "254:0" itself when sysfs does not know it."""
    try:
        return "/dev/" + os.path.basename(os.readlink(f"{sysfs or SYSFS}/dev/block/{majmin}"))
    except OSError:
        return majmin


# -- the limits themselves ---------------------------------------------------------------------
class Limits:
    """Resource limits of one container; a field left None is not set (left as it is).

    memory, memory_swap (memory + swap, as docker counts it) and memory_reservation are
    bytes, -1 for no limit; cpus is a fraction of CPUs (-1: no quota); cpu_period is in µs;
    device_* map the device path the user gave to bytes/s or ops/s (0: no throttle).
    (A plain class: dataclasses cost start-up time.)
    """

    __slots__ = FIELDS

    def __init__(self, **fields):
        for f in FIELDS:
            setattr(self, f, None)
        for k, v in fields.items():
            if k not in FIELDS:
                raise InvalidInput(f"unknown limit {quote(k)}; known limits: {', '.join(FIELDS)}")
            setattr(self, k, v)

    def set_fields(self):
        return [f for f in FIELDS if getattr(self, f) is not None]

    def is_empty(self):
        return not self.set_fields()

    def to_dict(self):
        """The set fields only, JSON-ready."""
        out = {}
        for f in self.set_fields():
            v = getattr(self, f)
            out[f] = dict(v) if isinstance(v, dict) else v
        return out

    @classmethod
    def from_dict(cls, d):
        """Limits from to_dict() output (e.g. a saved config); None values are not set."""
        fields = {}
        for k, v in (d or {}).items():
            if v is None:
                continue
            try:
                if k == "cpus":
                    v = float(v)
                elif k in DEVICE_FIELDS:
                    v = {str(dev): int(rate) for dev, rate in dict(v).items()}
                elif k not in ("cpuset_cpus", "cpuset_mems") and k in FIELDS:
                    v = int(v)
            except (TypeError, ValueError):
                raise InvalidInput(f"limit {k} {quote(v)} is not a number; give bytes, CPUs or "
                                   "counts (from_options() reads sizes such as 64M)") from None
            fields[k] = v
        return cls(**fields)

    def merged(self, other):
        """A copy where other's set fields win; device maps are merged device by device."""
        out = Limits(**self.to_dict())
        for f in other.set_fields():
            v = getattr(other, f)
            mine = getattr(out, f)
            if f in DEVICE_FIELDS and mine is not None:
                v = {**mine, **v}
            setattr(out, f, dict(v) if isinstance(v, dict) else v)
        return out

    def __eq__(self, other):
        return isinstance(other, Limits) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "Limits(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


def shown(field, value):
    """A limit as the user would type it, for messages: --memory 64M, --cpus 0.5."""
    if field in ("memory", "memory_swap", "memory_reservation"):
        return format_size(value)
    if field in DEVICE_FIELDS:
        rate = (lambda r: format_size(r).lower()) if field.endswith("bps") else str
        return " ".join(f"{dev}:{rate(r)}" for dev, r in value.items())
    if field == "cpus" and value is not None and value < 0:
        return "max"
    if field == "pids_limit" and value == -1:
        return "-1"
    return str(value)


def _int(field, value, lo, hi, hint):
    opt = option(field)
    try:
        n = int(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{opt} {quote(value)} is not a whole number; {hint}") from None
    if not lo <= n <= hi:
        raise InvalidInput(f"{opt} {n} is out of range; {hint}")
    return n


def _cpuset(field, value, sysfs):
    opt, text = option(field), str(value).strip()
    what = "cpus" if field == "cpuset_cpus" else "memory nodes"
    try:
        wanted = parse_list(text)
    except ValueError:
        wanted = set()
    if not wanted:
        raise InvalidInput(f"{opt} {quote(value)} is not a list of {what}; use numbers and "
                           "ranges, such as 0-1 or 0,2")
    if field == "cpuset_cpus":
        have = _host_list(f"{sysfs}/devices/system/cpu/online", f"0-{(os.cpu_count() or 1) - 1}")
    else:
        have = _host_list(f"{sysfs}/devices/system/node/online", "0")
    extra = wanted - have
    if extra:
        raise InvalidInput(f"{opt} {quote(text)} names {what} {format_list(extra)} this host "
                           f"does not have; it has {format_list(have)}")
    return text


def _devices(field, value, sysfs):
    """{path: rate} from ["/dev/vda:1mb", ...] (docker's DEVICE:RATE), or from a dict."""
    opt = option(field)
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        pairs = []
        for item in [value] if isinstance(value, str) else value:
            path, sep, rate = str(item).rpartition(":")
            if not sep or not path:
                raise InvalidInput(f"{opt} {quote(item)} is not DEVICE:RATE; use e.g. "
                                   f"{_example_disk(sysfs)}:"
                                   + ("10mb" if field.endswith("bps") else "100"))
            pairs.append((path, rate))
    out = {}
    for path, rate in pairs:
        if field.endswith("bps"):
            n = parse_size(rate, f"{opt} rate for {quote(path)}")
            if n < 0:
                raise InvalidInput(f"{opt} rate for {quote(path)} must be a size such as 10mb "
                                   "(0 lifts the throttle)")
        else:
            n = _int(field, rate, 0, (1 << 63) - 1, "give operations per second, such as "
                     "100 (0 lifts the throttle)")
        if not str(path).startswith("/"):
            raise InvalidInput(f"{opt}: device {quote(path)} must be a path such as "
                               f"{_example_disk(sysfs)}")
        majmin = device_number(path, opt, sysfs)
        if os.path.exists(f"{sysfs}/dev/block/{majmin}/partition"):
            disk = os.path.basename(os.path.dirname(
                os.path.realpath(f"{sysfs}/dev/block/{majmin}")))
            raise InvalidInput(f"{opt}: {quote(path)} is a partition; throttles apply to whole "
                               f"disks, give /dev/{disk}")
        out[str(path)] = n
    return out


def from_options(sysfs=None, **opts):
    """Limits from CLI-named options (memory="64M", cpus="0.5", device_read_bps=[...]).

    None values are ignored; every problem is one InvalidInput naming the option and the fix.
    `sysfs` moves /sys (tests point it at a fake tree).
    """
    sysfs = sysfs or SYSFS
    lim = Limits()
    for k, v in opts.items():
        if v is None:
            continue
        if k not in FIELDS:
            raise InvalidInput(f"unknown limit option {option(k)}; known: "
                               + ", ".join(option(f) for f in FIELDS))
        opt = option(k)
        if k in ("memory", "memory_swap", "memory_reservation"):
            n = parse_size(v, opt)
            if n == 0:
                raise InvalidInput(f"{opt} 0 is no memory at all; give a size such as 64M, "
                                   "or -1 for no limit")
            setattr(lim, k, n)
        elif k == "cpus":
            text = str(v).strip().lower()
            if text in _NO_LIMIT:
                lim.cpus = -1.0
                continue
            try:
                cpus = float(text)
            except ValueError:
                raise InvalidInput(f"{opt} {quote(v)} is not a number of CPUs; give one such as "
                                   "0.5 or 2") from None
            ncpu = os.cpu_count() or 1
            if not cpus > 0:
                raise InvalidInput(f"{opt} {quote(v)} must be above 0; 0.5 is half of one CPU "
                                   "(max for no limit)")
            if cpus > ncpu:
                raise InvalidInput(f"{opt} {quote(v)} is more than this host's {ncpu} CPUs; "
                                   f"give at most {ncpu}")
            lim.cpus = cpus
        elif k == "cpu_period":
            lim.cpu_period = _int(k, v, MIN_QUOTA, MAX_PERIOD,
                                  "give microseconds between 1000 and 1000000 (default 100000)")
        elif k == "cpu_shares":
            lim.cpu_shares = _int(k, v, 2, 262144, "give 2 to 262144 (default 1024)")
        elif k == "cpu_weight":
            lim.cpu_weight = _int(k, v, 1, 10000, "give 1 to 10000 (default 100)")
        elif k in ("cpuset_cpus", "cpuset_mems"):
            setattr(lim, k, _cpuset(k, v, sysfs))
        elif k == "pids_limit":
            text = str(v).strip().lower()
            n = -1 if text in _NO_LIMIT else _int(
                k, v, -1, (1 << 31) - 1, "give the most processes at once, such as 64, "
                "or -1 for no limit")
            if n == 0:
                raise InvalidInput(f"{opt} 0 would stop every process; give a number such as "
                                   "64, or -1 for no limit")
            lim.pids_limit = n
        elif k == "blkio_weight":
            lim.blkio_weight = _int(k, v, 10, 1000, "give 10 to 1000 (default 100)")
        else:
            setattr(lim, k, _devices(k, v, sysfs))
    _check_together(lim)
    return lim


def _check_together(lim):
    mem, swap, res = lim.memory, lim.memory_swap, lim.memory_reservation
    if swap is not None and swap != -1:
        if mem == -1:
            raise InvalidInput(f"--memory-swap {format_size(swap)} needs a --memory limit; "
                               "give --memory too, or drop --memory-swap")
        if mem is not None and swap < mem:
            raise InvalidInput(f"--memory-swap {format_size(swap)} is below --memory "
                               f"{format_size(mem)}; it counts memory plus swap, so give at "
                               f"least {format_size(mem)} (or -1 for unlimited swap)")
    if res is not None and res > 0 and mem is not None and mem > 0 and res > mem:
        raise InvalidInput(f"--memory-reservation {format_size(res)} is above --memory "
                           f"{format_size(mem)}; give a soft limit at most the hard one")
    if lim.cpus is not None and lim.cpus > 0:
        period = lim.cpu_period or DEFAULT_PERIOD
        if lim.cpus * period < MIN_QUOTA:
            raise InvalidInput(f"--cpus {lim.cpus:g} is below the kernel's minimum of 1 ms "
                               f"per {period} µs period; give at least "
                               f"{MIN_QUOTA / period:g}")


# -- what this host cannot apply --------------------------------------------------------------
class Problem(str):
    """One line of unsupported(); `.field` is the Limits field to put in apply()'s skip."""

    def __new__(cls, field, text):
        s = super().__new__(cls, text)
        s.field = field
        return s


def _scheduler(sysfs, disk):
    try:
        with open(f"{sysfs}/block/{disk}/queue/scheduler") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m[1] if m else text.strip() or None


def _v2_has_file(root, name):
    """Whether cgroups below the cgroup2 root have `name` (the root itself lacks the *.max
    files); True when no child shows either way."""
    try:
        children = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return True
    for e in children[:32]:
        if os.path.exists(os.path.join(e.path, "memory.max")):
            return os.path.exists(os.path.join(e.path, name))
    return True


def unsupported(limits, layout, sysfs=None):
    """One line per set limit this host cannot apply, or applies to no effect, saying why.

    Each line is a Problem (a str) whose .field names the limit, for apply(skip=...).
    `sysfs` moves /sys (tests point it at a fake tree).
    """
    sysfs = sysfs or SYSFS
    out = []
    for field in limits.set_fields():
        why = _why_not(field, limits, layout, sysfs)
        if why:
            out.append(Problem(field, why))
    return out


def for_host(opts, ignore_unsupported):
    """(Limits, fields to skip, warnings) of the user's options (as from_options takes them):
    what this host cannot apply is refused, or with ignore_unsupported skipped and named."""
    from .detect import detect
    lim = from_options(**opts)
    if lim.is_empty():
        return lim, [], []
    problems = unsupported(lim, detect())
    if problems and not ignore_unsupported:
        raise InvalidInput(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                          else "") + "; drop the option or use "
                           "--ignore-unsupported")
    return lim, sorted({p.field for p in problems}), problems


def _where(layout, controller):
    """("v1", mount) or ("v2", cgroup2 root) for the hierarchy carrying `controller`."""
    key = layout.has_v1(controller)
    if key is not None:
        return "v1", layout.v1[key]
    if layout.v2 is not None and V2_NAME.get(controller, controller) in layout.v2_controllers:
        return "v2", layout.v2
    return None, None


def _why_not(field, limits, layout, sysfs):
    opt, ctrl = option(field), CONTROLLER[field]
    kind, mnt = _where(layout, ctrl)
    if kind is None:
        if layout.kind == "v2":
            return (f"{opt}: the {V2_NAME.get(ctrl, ctrl)} controller is not available in "
                    "the cgroup2 hierarchy (see cgroup.controllers)")
        return f"{opt}: the {ctrl} controller is not mounted"
    if field == "memory_swap":
        ok = (os.path.exists(mnt / "memory.memsw.limit_in_bytes") if kind == "v1"
              else _v2_has_file(mnt, "memory.swap.max"))
        if not ok:
            return f"{opt}: swap accounting is off (boot with swapaccount=1)"
    elif field in ("cpus", "cpu_period") and kind == "v1":
        if not os.path.exists(mnt / "cpu.cfs_quota_us"):
            return (f"{opt}: this kernel has no CFS bandwidth control (CONFIG_CFS_BANDWIDTH), "
                    "so CPU quotas cannot be set")
    elif field in DEVICE_FIELDS and kind == "v1":
        if not os.path.exists(mnt / f"blkio.throttle.{field[7:]}_device"):
            return (f"{opt}: this kernel has no block I/O throttling "
                    "(CONFIG_BLK_DEV_THROTTLING)")
    elif field == "blkio_weight":
        if kind == "v1" and not any(os.path.exists(mnt / f) for f in (
                "blkio.weight", "blkio.bfq.weight", "blkio.bfq.io_service_bytes")):
            return (f"{opt}: no proportional I/O scheduler is loaded (blkio.bfq.* missing); "
                    "load it with modprobe bfq")
        # weights act only where the device's scheduler is bfq (cfq before Linux 5.0)
        slow = [(d, s) for d in _disks(sysfs) if (s := _scheduler(sysfs, d)) is not None
                and s not in ("bfq", "cfq")]
        if slow:
            uses = " and ".join(f"/dev/{d} uses {'the ' + s + ' I/O scheduler' if i == 0 else s}"
                                for i, (d, s) in enumerate(slow))
            return f"{opt} has no effect: {uses}, weights need bfq"
    return None
