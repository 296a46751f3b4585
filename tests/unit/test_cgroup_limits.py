"""Limits: option parsing, what a host cannot apply, and the v1/v2 writers on fake trees.

The fake cgroupfs of test_cgroups.py is extended with the control files limits touch and a
write() that behaves like the kernel where the writers depend on it: keyed throttle files
merge lines, v1 memory refuses memory > memsw (EINVAL) and a limit below usage (EBUSY), and a
v1 cpuset must stay inside its parent and around its children.  The real kernel is covered
by tests/integration/test_cgroup_limits_real.py.
"""

import errno
import os
from pathlib import Path

import pytest

from ctrun.cgroups import limits as L, manager
from ctrun.cgroups.limits import Limits, from_options, parse_size, unsupported
from ctrun.cgroups.v1 import HybridManager, V1Manager
from ctrun.cgroups.v2 import V2Manager
from ctrun.errors import CtrunError, HostUnsupported, InvalidInput, NotFound

from test_cgroups import CENTOS7_V1, DEBIAN12_V2, THIS_HOST, fake_host

NOLIMIT = "9223372036854771712"   # what v1 shows for "no limit"
DEVICES = {"/dev/vda": "254:0", "/dev/vdb": "254:16", "/dev/vda1": "254:1"}


# -- a fake /sys ---------------------------------------------------------------------------------
def make_sysfs(root, schedulers=None, cpus="0-1", nodes="0"):
    """/sys with disks vda (and vdb), a loop device, their numbers and the online cpus."""
    schedulers = schedulers or {"vda": "none [mq-deadline] kyber bfq",
                                "vdb": "none mq-deadline kyber [bfq]"}
    for name, sched in {**schedulers, "loop0": "[none] mq-deadline kyber bfq"}.items():
        parent = "virtual" if name.startswith("loop") else "pci0000:00/virtio"
        dev = root / "devices" / parent / "block" / name
        (dev / "queue").mkdir(parents=True)
        (dev / "queue/scheduler").write_text(sched + "\n")
        (root / "block").mkdir(exist_ok=True)
        os.symlink(os.path.relpath(dev, root / "block"), root / "block" / name)
        (root / "dev/block").mkdir(parents=True, exist_ok=True)
        majmin = DEVICES.get(f"/dev/{name}", "7:0")
        os.symlink(os.path.relpath(dev, root / "dev/block"), root / "dev/block" / majmin)
    part = root / "devices/pci0000:00/virtio/block/vda/vda1"
    part.mkdir()
    (part / "partition").write_text("1\n")
    os.symlink(os.path.relpath(part, root / "dev/block"), root / "dev/block/254:1")
    for what, value in (("cpu", cpus), ("node", nodes)):
        (root / "devices/system" / what).mkdir(parents=True)
        (root / "devices/system" / what / "online").write_text(value + "\n")
    return root


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    root = make_sysfs(tmp_path / "sys")
    monkeypatch.setattr(L, "SYSFS", str(root))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def device_number(path, what=None, sysfs=None):
        if path not in DEVICES:
            raise InvalidInput(f"{what}: device {path!r} does not exist; give a block device "
                               "such as /dev/vda")
        return DEVICES[path]
    monkeypatch.setattr(L, "device_number", device_number)
    return root


# -- a fake kernel's control files ---------------------------------------------------------------
V1_LIMIT_FILES = {
    "memory": {"memory.limit_in_bytes": NOLIMIT, "memory.memsw.limit_in_bytes": NOLIMIT,
               "memory.soft_limit_in_bytes": NOLIMIT, "memory.usage_in_bytes": "4096",
               "memory.max_usage_in_bytes": "8192", "memory.failcnt": "0",
               "memory.memsw.usage_in_bytes": "4096", "memory.memsw.failcnt": "0"},
    "cpu": {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000", "cpu.shares": "1024",
            "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"},
    "cpuacct": {"cpuacct.usage": "0", "cpuacct.usage_user": "0", "cpuacct.usage_sys": "0",
                "cpuacct.stat": "user 0\nsystem 0\n"},
    "pids": {"pids.max": "max", "pids.current": "0", "pids.events": "max 0\n", "pids.peak": "0"},
    "blkio": {"blkio.bfq.weight": "100", "blkio.throttle.read_bps_device": "",
              "blkio.throttle.write_bps_device": "", "blkio.throttle.read_iops_device": "",
              "blkio.throttle.write_iops_device": "",
              "blkio.throttle.io_service_bytes_recursive": "Total 0\n",
              "blkio.throttle.io_serviced_recursive": "Total 0\n"},
}
V2_LIMIT_FILES = {
    "memory.max": "max", "memory.swap.max": "max", "memory.low": "0", "memory.current": "4096",
    "memory.peak": "8192", "memory.swap.current": "0", "memory.swap.events": "high 0\nmax 0\nfail 0\n",
    "cpu.max": "max 100000", "cpu.weight": "100",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
    "cpuset.cpus": "", "cpuset.cpus.effective": "0-1", "cpuset.mems": "", "cpuset.mems.effective": "0",
    "pids.max": "max", "pids.current": "0", "pids.events": "max 0\n", "pids.peak": "0",
    "io.bfq.weight": "default 100\n", "io.max": "", "io.stat": "",
}


def populate(m):
    """Put the limit files the kernel would show into every level of m's cgroups."""
    for key, top in m.dirs().items():
        for d in [top, top / "ct"]:
            if key == "cgroup2":
                files = V2_LIMIT_FILES
            else:
                files = {}
                for c in key.split(","):
                    files.update(V1_LIMIT_FILES.get(c, {}))
            for name, content in files.items():
                (d / name).write_text(content)


def _num(path):
    text = path.read_text().strip()
    return int(text) if text.lstrip("-").isdigit() else None


def kernel_write(path, data):
    """base.write as cgroupfs answers it, for the files whose semantics the writers use."""
    path, data = Path(path), str(data)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    name, d = path.name, path.parent
    if name.startswith("blkio.throttle."):
        dev, rate = data.split()
        rules = dict(line.split() for line in path.read_text().splitlines())
        rules.pop(dev, None)
        if rate != "0":
            rules[dev] = rate
        data = "".join(f"{k} {v}\n" for k, v in sorted(rules.items()))
    elif name == "io.max":
        dev, *pairs = data.split()
        table = {}
        for line in path.read_text().splitlines():
            k, *rest = line.split()
            table[k] = dict(p.split("=") for p in rest)
        entry = table.setdefault(dev, {})
        for p in pairs:
            k, v = p.split("=")
            if v == "max":
                entry.pop(k, None)
            else:
                entry[k] = v
        data = "".join(f"{k} " + " ".join(f"{a}={b}" for a, b in sorted(v.items())) + "\n"
                       for k, v in sorted(table.items()) if v)
    elif name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
        n = int(NOLIMIT) if data == "-1" else int(data)
        mem = n if name == "memory.limit_in_bytes" else _num(d / "memory.limit_in_bytes")
        memsw = n if name != "memory.limit_in_bytes" else _num(d / "memory.memsw.limit_in_bytes")
        if memsw is not None and mem > memsw:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        if n < _num(d / "memory.usage_in_bytes"):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        data = str(n)
    elif name == "memory.soft_limit_in_bytes" and data == "-1":
        data = NOLIMIT
    elif name in ("cpuset.cpus", "cpuset.mems") and (d.parent / name).exists():
        new = L.parse_list(data)
        if not new <= L.parse_list((d.parent / name).read_text()):
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        for child in d.iterdir():
            if child.is_dir() and not L.parse_list((child / name).read_text()) <= new:
                raise OSError(errno.EBUSY, "Device or resource busy", str(path))
    elif name == "freezer.state" and data == "FROZEN" and (d / "stuck").exists():
        data = "FREEZING"
    elif name == "cgroup.freeze":
        events = (d / "cgroup.events").read_text().replace(f"frozen {1 - int(data)}",
                                                          f"frozen {data}")
        (d / "cgroup.events").write_text(events)
    path.write_text(data)


@pytest.fixture
def kernel(monkeypatch):
    from ctrun.cgroups import base, v1, v2
    for mod in (base, v1, v2):
        monkeypatch.setattr(mod, "write", kernel_write)


@pytest.fixture
def v1(tmp_path, monkeypatch, sysfs, kernel):
    # this host without its cgroup2 line: plain v1
    layout = fake_host(tmp_path, monkeypatch, THIS_HOST.replace("cgroup2 cgroup2", "tmpfs tmpfs"))
    m = manager("web", layout=layout)
    m.create()
    populate(m)
    m.sysfs = str(sysfs)
    return m


@pytest.fixture
def v2(tmp_path, monkeypatch, sysfs, kernel):
    layout = fake_host(tmp_path, monkeypatch, DEBIAN12_V2, "cpuset cpu io memory pids")
    m = manager("web", layout=layout)
    m.create()
    populate(m)
    m.sysfs = str(sysfs)
    return m


def v1f(m, ctrl, name, level=""):
    return m.layout.v1[ctrl] / m.rel / level / name


def v2f(m, name):
    return m.layout.v2 / m.rel / name


# -- sizes and conversions -------------------------------------------------------------------
@pytest.mark.parametrize("text,n", [
    ("1024", 1024), ("100k", 100 << 10), ("512M", 512 << 20), ("1G", 1 << 30), ("1.5g", 3 << 29),
    ("1mb", 1 << 20), ("2KiB", 2048), ("10b", 10), (" 64m ", 64 << 20), (4096, 4096),
    ("-1", -1), ("max", -1), ("Unlimited", -1), (-1, -1), ("0", 0)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text,message", [
    ("abc", "'abc' is not a size; give bytes or a number with a k, m, g or t suffix"),
    ("12x", "is not a size"), ("", "is not a size"), ("1.5", "not a whole number of bytes"),
    ("-5M", "'-5M' is negative; give a size such as 512M, or -1 for no limit"),
    (-2, "'-2' is negative"), (True, "is not a size")])
def test_parse_size_rejects_nonsense(text, message):
    with pytest.raises(InvalidInput, match=message):
        parse_size(text, "--memory")


def test_format_size():
    assert [L.format_size(n) for n in (64 << 20, 3 << 29, 1 << 30, 1000, -1)] == \
        ["64M", "1536M", "1G", "1000", "unlimited"]


def test_shares_weight_conversion_covers_both_ranges():
    assert L.shares_to_weight(2) == 1 and L.shares_to_weight(262144) == 10000
    assert L.weight_to_shares(1) == 2 and L.weight_to_shares(10000) == 262144
    assert L.shares_to_weight(1024) == 39
    assert L.weight_to_shares(100) == 2598
    for w in (1, 2, 39, 100, 200, 9999, 10000):            # a weight survives the trip
        assert L.shares_to_weight(L.weight_to_shares(w)) == w
    for b in range(10, 1001):
        assert L.io_to_blkio_weight(L.blkio_to_io_weight(b)) == b
    assert L.blkio_to_io_weight(10) == 1 and L.blkio_to_io_weight(1000) == 10000
    assert L.io_to_blkio_weight(L.blkio_to_io_weight(500)) == 500


def test_cpu_lists():
    assert L.parse_list("0-3,6") == {0, 1, 2, 3, 6}
    assert L.format_list({0, 1, 2, 3, 6, 8, 9}) == "0-3,6,8-9"
    for bad in ("3-1", "a", "1,,2"):
        with pytest.raises(ValueError):
            L.parse_list(bad)


# -- from_options ---------------------------------------------------------------------------
def test_from_options_parses_every_limit(sysfs):
    lim = from_options(memory="64M", memory_swap="128m", memory_reservation="32M", cpus="0.5",
                       cpu_period="50000", cpu_shares="512", cpu_weight=None, cpuset_cpus="0-1",
                       cpuset_mems="0", pids_limit="64", blkio_weight="300",
                       device_read_bps=["/dev/vda:1mb"], device_write_bps=["/dev/vdb:2M"],
                       device_read_iops=["/dev/vda:100"], device_write_iops={"/dev/vda": 50})
    assert lim.to_dict() == {
        "memory": 64 << 20, "memory_swap": 128 << 20, "memory_reservation": 32 << 20,
        "cpus": 0.5, "cpu_period": 50000, "cpu_shares": 512, "cpuset_cpus": "0-1",
        "cpuset_mems": "0", "pids_limit": 64, "blkio_weight": 300,
        "device_read_bps": {"/dev/vda": 1 << 20}, "device_write_bps": {"/dev/vdb": 2 << 20},
        "device_read_iops": {"/dev/vda": 100}, "device_write_iops": {"/dev/vda": 50}}
    assert from_options(pids_limit="-1", cpus="max", memory_swap="-1").to_dict() == \
        {"pids_limit": -1, "cpus": -1.0, "memory_swap": -1}
    assert from_options().is_empty()


@pytest.mark.parametrize("opts,message", [
    ({"memory": "0"}, "^--memory 0 is no memory at all; give a size such as 64M, or -1 for no limit$"),
    ({"memory": "-5M"}, "^--memory '-5M' is negative"),
    ({"memory": "lots"}, "^--memory 'lots' is not a size"),
    ({"memory": "64M", "memory_swap": "32M"},
     "^--memory-swap 32M is below --memory 64M; it counts memory plus swap, so give at least 64M"),
    ({"memory": "-1", "memory_swap": "1G"}, "^--memory-swap 1G needs a --memory limit"),
    ({"memory": "64M", "memory_reservation": "128M"},
     "^--memory-reservation 128M is above --memory 64M"),
    ({"cpus": "0"}, r"^--cpus '0' must be above 0; 0.5 is half of one CPU"),
    ({"cpus": "-0.5"}, "^--cpus '-0.5' must be above 0"),
    ({"cpus": "4"}, "^--cpus '4' is more than this host's 2 CPUs; give at most 2$"),
    ({"cpus": "half"}, "^--cpus 'half' is not a number of CPUs"),
    ({"cpus": "0.005"}, "^--cpus 0.005 is below the kernel's minimum of 1 ms"),
    ({"cpu_period": "500"}, "^--cpu-period 500 is out of range; give microseconds between 1000"),
    ({"cpu_shares": "1"}, "^--cpu-shares 1 is out of range; give 2 to 262144"),
    ({"cpu_weight": "10001"}, "^--cpu-weight 10001 is out of range; give 1 to 10000"),
    ({"cpu_weight": "high"}, "^--cpu-weight 'high' is not a whole number"),
    ({"cpuset_cpus": "0-3"}, "^--cpuset-cpus '0-3' names cpus 2-3 this host does not have; it has 0-1$"),
    ({"cpuset_cpus": "1-0"}, "^--cpuset-cpus '1-0' is not a list of cpus"),
    ({"cpuset_mems": "1"}, "^--cpuset-mems '1' names memory nodes 1 this host does not have"),
    ({"pids_limit": "0"}, "^--pids-limit 0 would stop every process"),
    ({"pids_limit": "-7"}, "^--pids-limit -7 is out of range"),
    ({"blkio_weight": "5"}, "^--blkio-weight 5 is out of range; give 10 to 1000"),
    ({"device_read_bps": ["/dev/nope:1mb"]},
     "^--device-read-bps: device '/dev/nope' does not exist; give a block device such as /dev/vda$"),
    ({"device_read_bps": ["/dev/vda"]}, "^--device-read-bps '/dev/vda' is not DEVICE:RATE"),
    ({"device_read_bps": ["/dev/vda:fast"]}, "^--device-read-bps rate for '/dev/vda' 'fast' is not a size"),
    ({"device_read_iops": ["/dev/vda:1k"]}, "^--device-read-iops '1k' is not a whole number"),
    ({"device_write_bps": ["/dev/vda1:1mb"]},
     "^--device-write-bps: '/dev/vda1' is a partition; throttles apply to whole disks, give /dev/vda$"),
    ({"swap": "1G"}, "^unknown limit option --swap"),
])
def test_from_options_errors_name_the_option_and_the_fix(sysfs, opts, message):
    with pytest.raises(InvalidInput, match=message) as e:
        from_options(**opts)
    assert "\n" not in str(e.value)


def test_real_device_lookup_rejects_missing_and_character_devices():
    with pytest.raises(InvalidInput, match="^--device-read-bps: device '/dev/nope' does not exist; "
                                           "give a block device such as /dev/"):
        L.device_number("/dev/nope", "--device-read-bps")
    with pytest.raises(InvalidInput, match="^'/dev/null' is not a block device; give one such as"):
        L.device_number("/dev/null")


def test_limits_dict_round_trip_merge_and_empty():
    a = Limits(memory=64 << 20, pids_limit=10, device_read_bps={"/dev/vda": 1})
    assert Limits.from_dict(a.to_dict()) == a
    assert Limits.from_dict({"cpus": 1, "memory": None}).to_dict() == {"cpus": 1.0}
    b = Limits(memory=128 << 20, device_read_bps={"/dev/vdb": 2}, cpus=0.5)
    m = a.merged(b)
    assert m.to_dict() == {"memory": 128 << 20, "cpus": 0.5, "pids_limit": 10,
                           "device_read_bps": {"/dev/vda": 1, "/dev/vdb": 2}}
    assert a.to_dict()["memory"] == 64 << 20 and a.device_read_bps == {"/dev/vda": 1}
    assert Limits().is_empty() and not a.is_empty()
    with pytest.raises(InvalidInput, match="unknown limit 'memroy'"):
        Limits.from_dict({"memroy": 1})
    with pytest.raises(InvalidInput, match="^limit memory '64M' is not a number"):
        Limits.from_dict({"memory": "64M"})
    assert not hasattr(a, "__dict__")


# -- unsupported ----------------------------------------------------------------------------
def test_unsupported_on_this_kind_of_host(tmp_path, monkeypatch, sysfs):
    layout = fake_host(tmp_path, monkeypatch, THIS_HOST, "hugetlb")
    (layout.v1["memory"] / "memory.memsw.limit_in_bytes").write_text(NOLIMIT)
    (layout.v1["cpu"] / "cpu.cfs_quota_us").write_text("-1")
    (layout.v1["blkio"] / "blkio.bfq.io_service_bytes").write_text("")
    for f in ("read_bps", "write_iops"):
        (layout.v1["blkio"] / f"blkio.throttle.{f}_device").write_text("")
    lim = Limits(memory=1 << 26, memory_swap=1 << 27, cpus=0.5, pids_limit=5, blkio_weight=500,
                 device_read_bps={"/dev/vda": 1}, device_write_iops={"/dev/vda": 1})
    problems = unsupported(lim, layout, sysfs=str(sysfs))
    assert problems == ["--blkio-weight has no effect: /dev/vda uses the mq-deadline I/O "
                        "scheduler, weights need bfq"]
    assert [p.field for p in problems] == ["blkio_weight"]
    # once vda is on bfq the weight works (the loop device does not count)
    (sysfs / "block/vda/queue/scheduler").write_text("none mq-deadline kyber [bfq]\n")
    assert unsupported(lim, layout, sysfs=str(sysfs)) == []
    # swap accounting off: the memsw files are missing
    (layout.v1["memory"] / "memory.memsw.limit_in_bytes").unlink()
    assert unsupported(lim, layout, sysfs=str(sysfs)) == [
        "--memory-swap: swap accounting is off (boot with swapaccount=1)"]


def test_unsupported_names_missing_controllers(tmp_path, monkeypatch, sysfs):
    layout = fake_host(tmp_path, monkeypatch, CENTOS7_V1)   # no pids, blkio or cpuset
    lim = Limits(pids_limit=5, blkio_weight=100, cpuset_cpus="0", cpu_shares=100)
    problems = unsupported(lim, layout, sysfs=str(sysfs))
    assert problems == ["--cpuset-cpus: the cpuset controller is not mounted",
                        "--pids-limit: the pids controller is not mounted",
                        "--blkio-weight: the blkio controller is not mounted"]
    assert [p.field for p in problems] == ["cpuset_cpus", "pids_limit", "blkio_weight"]
    (layout.v1["cpu,cpuacct"] / "cpu.shares").write_text("1024")
    assert unsupported(Limits(cpus=1.0), layout, sysfs=str(sysfs)) == [
        "--cpus: this kernel has no CFS bandwidth control (CONFIG_CFS_BANDWIDTH), so CPU "
        "quotas cannot be set"]


def test_unsupported_on_v2(tmp_path, monkeypatch, sysfs):
    layout = fake_host(tmp_path, monkeypatch, DEBIAN12_V2, "cpu memory pids")
    lim = Limits(memory=1 << 26, memory_swap=1 << 27, device_read_bps={"/dev/vda": 1})
    assert unsupported(lim, layout, sysfs=str(sysfs)) == [
        "--device-read-bps: the io controller is not available in the cgroup2 hierarchy "
        "(see cgroup.controllers)"]
    # a child cgroup with memory files but no memory.swap.max: swap accounting is off
    (layout.v2 / "system.slice").mkdir()
    (layout.v2 / "system.slice/memory.max").write_text("max")
    assert [p.field for p in unsupported(lim, layout, sysfs=str(sysfs))] == \
        ["memory_swap", "device_read_bps"]


# -- v1 writers -----------------------------------------------------------------------------
def test_v1_apply_and_read_back(v1):
    lim = Limits(memory=64 << 20, memory_swap=128 << 20, memory_reservation=32 << 20, cpus=0.5,
                 cpu_shares=512, pids_limit=16, blkio_weight=300,
                 device_read_bps={"/dev/vda": 1 << 20}, device_write_iops={"/dev/vdb": 100})
    v1.apply(lim)
    v1.apply(lim)                                    # idempotent
    assert v1f(v1, "memory", "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert v1f(v1, "memory", "memory.memsw.limit_in_bytes").read_text() == str(128 << 20)
    assert v1f(v1, "memory", "memory.soft_limit_in_bytes").read_text() == str(32 << 20)
    assert v1f(v1, "cpu", "cpu.cfs_quota_us").read_text() == "50000"
    assert v1f(v1, "cpu", "cpu.cfs_period_us").read_text() == "100000"
    assert v1f(v1, "cpu", "cpu.shares").read_text() == "512"
    assert v1f(v1, "pids", "pids.max").read_text() == "16"
    assert v1f(v1, "blkio", "blkio.bfq.weight").read_text() == "300"
    assert v1f(v1, "blkio", "blkio.throttle.read_bps_device").read_text() == "254:0 1048576\n"
    assert v1f(v1, "blkio", "blkio.throttle.write_iops_device").read_text() == "254:16 100\n"
    assert v1f(v1, "memory", "memory.limit_in_bytes", "ct").read_text() == NOLIMIT  # limits sit above ct
    assert v1.read_limits() == {
        "memory": 64 << 20, "memory_swap": 128 << 20, "memory_reservation": 32 << 20,
        "cpus": 0.5, "cpu_period": 100000, "cpu_shares": 512, "cpu_weight": 20,
        "cpuset_cpus": "0-1", "cpuset_mems": "0", "pids_limit": 16, "blkio_weight": 300,
        "device_read_bps": {"/dev/vda": 1 << 20}, "device_write_bps": {},
        "device_read_iops": {}, "device_write_iops": {"/dev/vdb": 100}}


def test_v1_unlimited_values(v1):
    v1.apply(Limits(memory=64 << 20, memory_swap=128 << 20, cpus=1.0, pids_limit=5))
    v1.apply(Limits(memory=-1, memory_swap=-1, cpus=-1.0, pids_limit=-1, memory_reservation=-1))
    got = v1.read_limits()
    assert (got["memory"], got["memory_swap"], got["memory_reservation"], got["cpus"],
            got["pids_limit"]) == (None, None, None, None, None)
    assert v1f(v1, "pids", "pids.max").read_text() == "max"
    assert v1f(v1, "cpu", "cpu.cfs_quota_us").read_text() == "-1"


def test_v1_memory_and_memsw_are_ordered_both_ways(v1):
    v1.apply(Limits(memory=64 << 20, memory_swap=128 << 20))
    v1.apply(Limits(memory=256 << 20, memory_swap=512 << 20))   # memsw must grow first
    assert v1.read_limits()["memory"] == 256 << 20
    v1.apply(Limits(memory=32 << 20, memory_swap=48 << 20))     # memory must shrink first
    assert (v1.read_limits()["memory"], v1.read_limits()["memory_swap"]) == (32 << 20, 48 << 20)


def test_v1_kernel_refusals_are_one_line_errors(v1):
    v1f(v1, "memory", "memory.usage_in_bytes").write_text(str(10 << 20))
    with pytest.raises(CtrunError, match=r"^cannot set --memory 1M on container web: the kernel "
                       r"refused \(Device or resource busy\): current usage is above it$"):
        v1.apply(Limits(memory=1 << 20))
    v1.apply(Limits(memory=64 << 20, memory_swap=64 << 20))
    with pytest.raises(CtrunError, match=r"^cannot set --memory 128M on container web: the "
                       r"kernel refused \(Invalid argument\): it is above the memory\+swap limit; "
                       "raise --memory-swap with it$"):
        v1.apply(Limits(memory=128 << 20))


def test_v1_missing_file_cgroup_or_controller(v1, tmp_path, monkeypatch):
    v1f(v1, "memory", "memory.memsw.limit_in_bytes").unlink()
    with pytest.raises(HostUnsupported, match="^cannot set --memory-swap 1G on container web: "
                       "this kernel has no memory.memsw.limit_in_bytes; drop the option or use "
                       "--ignore-unsupported$"):
        v1.apply(Limits(memory_swap=1 << 30))
    v1.apply(Limits(memory_swap=1 << 30, pids_limit=7), skip=["memory_swap"])
    assert v1.read_limits()["pids_limit"] == 7
    ghost = manager("ghost", layout=v1.layout)
    with pytest.raises(NotFound, match="^cannot set --pids-limit 7 on container ghost: its cgroup "
                       ".*/ghost does not exist; start the container first$"):
        ghost.apply(Limits(pids_limit=7))
    with pytest.raises(NotFound, match="^container ghost has no cgroup ctrun/ghost"):
        ghost.read_limits()
    with pytest.raises(NotFound):
        ghost.stats()
    centos = manager("web", layout=fake_host(tmp_path / "c7", monkeypatch, CENTOS7_V1))
    with pytest.raises(HostUnsupported, match="^cannot set --pids-limit on container web: this "
                       "host has no pids controller; drop the option or use --ignore-unsupported$"):
        centos.apply(Limits(pids_limit=5))


def test_v1_weight_converts_to_shares_and_cpu_period_alone_keeps_the_fraction(v1):
    v1.apply(Limits(cpu_weight=100))
    assert v1f(v1, "cpu", "cpu.shares").read_text() == "2598"
    v1.apply(Limits(cpus=0.5, cpu_period=50000))
    assert v1f(v1, "cpu", "cpu.cfs_quota_us").read_text() == "25000"
    v1.apply(Limits(cpu_period=200000))
    assert v1f(v1, "cpu", "cpu.cfs_quota_us").read_text() == "100000"
    assert v1.read_limits()["cpus"] == 0.5
    v1.apply(Limits(cpus=1.5))                       # keeps the period the kernel has
    assert v1f(v1, "cpu", "cpu.cfs_quota_us").read_text() == "300000"


def test_v1_blkio_weight_prefers_cfq_file_when_present(v1):
    v1f(v1, "blkio", "blkio.weight").write_text("500")
    v1.apply(Limits(blkio_weight=700))
    assert v1f(v1, "blkio", "blkio.weight").read_text() == "700"
    assert v1f(v1, "blkio", "blkio.bfq.weight").read_text() == "100"
    assert v1.read_limits()["blkio_weight"] == 700


def test_v1_device_map_replaces_other_devices_and_zero_lifts(v1):
    v1.apply(Limits(device_read_bps={"/dev/vda": 100, "/dev/vdb": 200}))
    assert v1f(v1, "blkio", "blkio.throttle.read_bps_device").read_text() == "254:0 100\n254:16 200\n"
    v1.apply(Limits(device_read_bps={"/dev/vdb": 300}))
    assert v1.read_limits()["device_read_bps"] == {"/dev/vdb": 300}
    v1.apply(Limits(device_read_bps={"/dev/vdb": 0}))
    assert v1.read_limits()["device_read_bps"] == {}


def test_v1_cpuset_narrows_children_first_and_widens_parents_first(v1):
    top = v1.layout.v1["cpuset"] / v1.rel
    (top / "ct/inner").mkdir()
    for name, value in (("cpuset.cpus", "1"), ("cpuset.mems", "0")):
        (top / "ct/inner" / name).write_text(value)
    v1.apply(Limits(cpuset_cpus="0"))
    assert [(d / "cpuset.cpus").read_text() for d in (top, top / "ct", top / "ct/inner")] == \
        ["0", "0", "0"]      # inner had none of the new set: it gets all of it
    v1.apply(Limits(cpuset_cpus="0-1", cpuset_mems="0"))
    assert [(d / "cpuset.cpus").read_text() for d in (top, top / "ct", top / "ct/inner")] == \
        ["0-1", "0-1", "0"]  # ct follows the container; a cgroup of its own keeps its choice
    v1.apply(Limits(cpuset_cpus="1"))
    assert v1.read_limits()["cpuset_cpus"] == "1"
    assert (top / "ct/inner/cpuset.cpus").read_text() == "1"


def test_v1_stats_and_beancounters(v1):
    m = v1
    v1.apply(Limits(memory=64 << 20, memory_swap=96 << 20, memory_reservation=32 << 20,
                    pids_limit=16))
    v1f(m, "memory", "memory.usage_in_bytes").write_text(str(10 << 20))
    v1f(m, "memory", "memory.max_usage_in_bytes").write_text(str(60 << 20))
    v1f(m, "memory", "memory.memsw.usage_in_bytes").write_text(str(12 << 20))
    v1f(m, "memory", "memory.failcnt").write_text("7")
    v1f(m, "memory", "memory.memsw.failcnt").write_text("2")
    v1f(m, "memory", "memory.oom_control", "ct").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    v1f(m, "cpuacct", "cpuacct.usage").write_text("5000000000")
    v1f(m, "cpuacct", "cpuacct.usage_user").write_text("3000000000")
    v1f(m, "cpuacct", "cpuacct.usage_sys").write_text("2000000000")
    v1f(m, "cpu", "cpu.stat").write_text("nr_periods 9\nnr_throttled 4\nthrottled_time 777\n")
    v1f(m, "pids", "pids.current").write_text("16")
    v1f(m, "pids", "pids.events").write_text("max 5\n")
    v1f(m, "pids", "pids.events", "ct").write_text("max 2\n")   # v1 counts where the fork was
    v1f(m, "pids", "pids.peak").write_text("16")
    v1f(m, "blkio", "blkio.throttle.io_service_bytes_recursive").write_text(
        "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n254:16 Read 1\nTotal 12289\n")
    v1f(m, "blkio", "blkio.throttle.io_serviced_recursive").write_text(
        "254:0 Read 1\n254:0 Write 2\nTotal 3\n")
    assert m.stats() == {
        "cpu": {"usage_ns": 5000000000, "user_ns": 3000000000, "system_ns": 2000000000,
                "throttled_ns": 777, "nr_throttled": 4},
        "memory": {"usage": 10 << 20, "max_usage": 60 << 20, "limit": 64 << 20, "failcnt": 9,
                   "swap": 2 << 20, "oom": 3, "oom_kill": 3},
        "pids": {"current": 16, "limit": 16, "failcnt": 7},
        "blkio": {"read_bytes": 4097, "write_bytes": 8192, "read_ops": 1, "write_ops": 2},
        "beancounters": [
            {"resource": "memory", "held": 10 << 20, "maxheld": 60 << 20, "barrier": 32 << 20,
             "limit": 64 << 20, "failcnt": 9},   # memory and memsw refusals
            {"resource": "swap", "held": 2 << 20, "maxheld": None, "barrier": None,
             "limit": 32 << 20, "failcnt": 2},
            {"resource": "pids", "held": 16, "maxheld": 16, "barrier": None, "limit": 16,
             "failcnt": 7}]}


def test_v1_freeze_thaw(v1, tmp_path, monkeypatch):
    state = v1f(v1, "freezer", "freezer.state")
    assert not v1.frozen()
    v1.freeze()
    assert state.read_text() == "FROZEN" and v1.frozen()
    v1.thaw()
    assert state.read_text() == "THAWED" and not v1.frozen()
    (state.parent / "stuck").write_text("")          # the fake kernel never finishes freezing
    v1.timeout = 0.05
    with pytest.raises(CtrunError, match="^cannot freeze container web: its processes did not "
                       "all stop within 0.05s .*; it was left running, retry$"):
        v1.freeze()
    assert state.read_text() == "THAWED"
    text = THIS_HOST.replace("cgroup2 cgroup2", "tmpfs tmpfs").replace("rw,freezer", "rw,net_cls")
    nofreezer = manager("web", layout=fake_host(tmp_path / "nf", monkeypatch, text))
    assert not nofreezer.frozen()
    with pytest.raises(HostUnsupported, match="^cannot freeze container web: this host has no "
                       "cgroup freezer"):
        nofreezer.freeze()


# -- v2 writers -----------------------------------------------------------------------------
def test_v2_apply_and_read_back(v2):
    lim = Limits(memory=64 << 20, memory_swap=96 << 20, memory_reservation=16 << 20, cpus=0.5,
                 cpu_weight=200, cpuset_cpus="1", cpuset_mems="0", pids_limit=-1,
                 blkio_weight=300, device_read_bps={"/dev/vda": 1 << 20},
                 device_write_iops={"/dev/vda": 100})
    v2.apply(lim)
    v2.apply(lim)
    assert v2f(v2, "memory.max").read_text() == str(64 << 20)
    assert v2f(v2, "memory.swap.max").read_text() == str(32 << 20)   # swap alone
    assert v2f(v2, "memory.low").read_text() == str(16 << 20)
    assert v2f(v2, "cpu.max").read_text() == "50000 100000"
    assert v2f(v2, "cpu.weight").read_text() == "200"
    assert v2f(v2, "pids.max").read_text() == "max"
    assert v2f(v2, "io.bfq.weight").read_text() == "default 300"
    assert v2f(v2, "io.max").read_text() == "254:0 rbps=1048576 wiops=100\n"
    assert v2.read_limits() == {
        "memory": 64 << 20, "memory_swap": 96 << 20, "memory_reservation": 16 << 20,
        "cpus": 0.5, "cpu_period": 100000, "cpu_weight": 200, "cpu_shares": 5220,
        "cpuset_cpus": "1", "cpuset_mems": "0", "pids_limit": None, "blkio_weight": 300,
        "device_read_bps": {"/dev/vda": 1 << 20}, "device_write_bps": {},
        "device_read_iops": {}, "device_write_iops": {"/dev/vda": 100}}


def test_v2_shares_swap_and_period(v2):
    v2.apply(Limits(cpu_shares=1024))
    assert v2f(v2, "cpu.weight").read_text() == "39"
    v2.apply(Limits(memory=64 << 20))
    v2.apply(Limits(memory_swap=128 << 20))          # the memory limit comes from the kernel
    assert v2f(v2, "memory.swap.max").read_text() == str(64 << 20)
    v2.apply(Limits(memory_swap=-1))
    assert v2f(v2, "memory.swap.max").read_text() == "max"
    assert v2.read_limits()["memory_swap"] is None
    v2.apply(Limits(cpus=0.25))
    v2.apply(Limits(cpu_period=200000))
    assert v2f(v2, "cpu.max").read_text() == "50000 200000"
    v2.apply(Limits(cpus=-1.0))
    assert v2f(v2, "cpu.max").read_text() == "max 200000"
    assert v2.read_limits()["cpus"] is None
    v2.apply(Limits(memory=-1))
    with pytest.raises(InvalidInput, match="^cannot set --memory-swap 128M on container web: it "
                       "counts memory plus swap, and memory has no limit; give --memory too$"):
        v2.apply(Limits(memory_swap=128 << 20))


def test_v2_io_weight_without_bfq_and_device_map(v2):
    v2f(v2, "io.bfq.weight").unlink()
    v2f(v2, "io.weight").write_text("default 100\n")
    v2.apply(Limits(blkio_weight=500))
    assert v2f(v2, "io.weight").read_text() == "default 4950"
    assert v2.read_limits()["blkio_weight"] == 500
    v2.apply(Limits(device_read_bps={"/dev/vda": 10, "/dev/vdb": 20}, device_write_bps={"/dev/vda": 5}))
    v2.apply(Limits(device_read_bps={"/dev/vdb": 0}))
    assert v2f(v2, "io.max").read_text() == "254:0 wbps=5\n"


def test_v2_stats_and_beancounters(v2):
    v2.apply(Limits(memory=64 << 20, memory_reservation=8 << 20, pids_limit=64))
    v2f(v2, "memory.current").write_text(str(10 << 20))
    v2f(v2, "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    v2f(v2, "memory.events.local").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    v2f(v2, "memory.swap.current").write_text("4096")
    v2f(v2, "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
                                   "nr_periods 3\nnr_throttled 2\nthrottled_usec 40\n")
    v2f(v2, "pids.current").write_text("64")
    v2f(v2, "pids.events").write_text("max 11\n")
    v2f(v2, "io.stat").write_text("254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n"
                                  "254:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n")
    s = v2.stats()
    assert s["cpu"] == {"usage_ns": 1500000, "user_ns": 1000000, "system_ns": 500000,
                        "throttled_ns": 40000, "nr_throttled": 2}
    assert s["memory"] == {"usage": 10 << 20, "max_usage": 8192, "limit": 64 << 20,
                           "failcnt": 9, "swap": 4096, "oom": 2, "oom_kill": 1}
    assert s["pids"] == {"current": 64, "limit": 64, "failcnt": 11}
    assert s["blkio"] == {"read_bytes": 101, "write_bytes": 202, "read_ops": 4, "write_ops": 6}
    assert s["beancounters"] == [
        {"resource": "memory", "held": 10 << 20, "maxheld": 8192, "barrier": 8 << 20,
         "limit": 64 << 20, "failcnt": 9},
        {"resource": "swap", "held": 4096, "maxheld": None, "barrier": None, "limit": None,
         "failcnt": 0},
        {"resource": "pids", "held": 64, "maxheld": 0, "barrier": None, "limit": 64,
         "failcnt": 11}]


def test_v2_freeze_thaw(v2):
    assert not v2.frozen()
    v2.freeze()
    assert v2f(v2, "cgroup.freeze").read_text() == "1" and v2.frozen()
    v2.thaw()
    assert v2f(v2, "cgroup.freeze").read_text() == "0" and not v2.frozen()


def test_v2_missing_controller_is_refused(tmp_path, monkeypatch, kernel):
    layout = fake_host(tmp_path, monkeypatch, DEBIAN12_V2, "memory pids")
    m = manager("web", layout=layout)
    m.create()
    with pytest.raises(HostUnsupported, match="this host has no cpu controller"):
        m.apply(Limits(cpus=1.0))
    assert "cpus" not in m.read_limits() and "blkio_weight" not in m.read_limits()


# -- hybrid: v1 controllers, plus what only cgroup2 holds ----------------------------------------
def test_hybrid_routes_each_limit_to_the_hierarchy_holding_its_controller(tmp_path, monkeypatch,
                                                                          sysfs, kernel):
    layout = fake_host(tmp_path, monkeypatch, THIS_HOST, "hugetlb")
    m = manager("web", layout=layout)
    assert isinstance(m, HybridManager)
    m.create()
    populate(m)
    m.apply(Limits(memory=64 << 20, cpus=0.5, pids_limit=9))
    assert v1f(m.v1, "memory", "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert v2f(m, "memory.max").read_text() == "max"       # cgroup2 has no memory here
    assert m.read_limits()["pids_limit"] == 9
    assert set(m.stats()) == {"cpu", "memory", "pids", "blkio", "beancounters"}
    m.freeze()
    assert v1f(m.v1, "freezer", "freezer.state").read_text() == "FROZEN"
    assert v2f(m, "cgroup.freeze").read_text() == "0\n"    # the v1 freezer did it
    m.thaw()
    assert m._side("cpuacct") is m.v1 and m._side("hugetlb") is m.v2


def test_limits_import_is_light():
    import subprocess
    import sys
    code = ("import sys; import ctrun.cgroups.limits; "
            "print(sorted(m for m in ('logging', 'cgroupspy', 'dataclasses') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert out.strip() == "[]"


def test_managers_are_the_right_classes(v1, v2):
    assert isinstance(v1, V1Manager) and isinstance(v2, V2Manager)
