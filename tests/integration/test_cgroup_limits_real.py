"""Limits, stats and the freezer against the host's real cgroups (needs root).

Uses the per-run parent and the leak-checking `cg` fixture of test_cgroups_real.py: every
cgroup and process is removed even when a test fails.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctrun.cgroups.limits import Limits, from_options, unsupported
from ctrun.errors import CtrunError

from test_cgroups_real import _host_layout, cg, restore_v2_root, wait_for  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")


def _need(m, *groups):
    for g in groups:
        if not m.has(g):
            pytest.skip(f"no {g} controller here")


def _file(m, group, name, level=""):
    side = m._side(group)
    return side._dir(group) / level / name


def _ready(p):
    """Wait for the child's first line (it has set itself up)."""
    line = p.stdout.readline()
    assert line, "the child died before it was ready"
    return line.strip()


def _cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])    # utime + stime


HOG = "b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
HOLD = ("import sys, time\nb = bytearray(40 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
        "print('ready', flush=True)\ntime.sleep(60)\n")
FORK = """
import errno, os, time
kids = []
try:
    while len(kids) < 200:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
    print(len(kids), 0, flush=True)
except OSError as e:
    print(len(kids), e.errno, flush=True)
time.sleep(60)
"""


def test_memory_limit_is_written_and_read_back(cg):
    m = cg.make("mem")
    _need(m, "memory")
    m.create()
    m.apply(from_options(memory="64M", memory_reservation="32M"))
    assert m.read_limits()["memory"] == 64 << 20
    assert m.read_limits()["memory_reservation"] == 32 << 20
    name = "memory.limit_in_bytes" if m.layout.has_v1("memory") else "memory.max"
    assert _file(m, "memory", name).read_text().strip() == str(64 << 20)
    m.apply(Limits(memory=-1))
    assert m.read_limits()["memory"] is None


def test_allocating_past_32m_is_oom_killed_and_counted(cg):
    m = cg.make("oom32")
    _need(m, "memory")
    m.create()
    swap_on = Path("/proc/swaps").read_text().count("\n") > 1
    # with swap on, memory+swap must be capped too or the hog just swaps; without it, memory
    # alone: this kernel (6.15+) keeps no failcnt for memsw, only for memory
    lim = from_options(memory="32M", memory_swap="32M" if swap_on else None)
    assert unsupported(lim, m.layout) == []
    m.apply(lim)
    before = m.stats()["memory"]
    assert before["oom_kill"] == 0 and before["failcnt"] == 0 and before["limit"] == 32 << 20
    p = cg.spawn(m, [sys.executable, "-c", HOG])
    assert p.wait(timeout=60) == -signal.SIGKILL
    st = m.stats()
    assert st["memory"]["oom_kill"] >= 1
    assert st["memory"]["max_usage"] is None or st["memory"]["max_usage"] <= 32 << 20
    bean = {b["resource"]: b for b in st["beancounters"]}["memory"]
    assert bean["limit"] == 32 << 20
    if not swap_on:
        assert st["memory"]["failcnt"] > 0 and bean["failcnt"] == st["memory"]["failcnt"]


def test_pids_limit_stops_a_fork_loop(cg):
    m = cg.make("forks")
    _need(m, "pids")
    m.create()
    m.apply(from_options(pids_limit="16"))
    assert m.read_limits()["pids_limit"] == 16
    p = cg.spawn(m, [sys.executable, "-c", FORK], stdout=subprocess.PIPE, text=True)
    forked, err = map(int, _ready(p).split())
    assert err == errno.EAGAIN
    assert forked <= 15                        # 16 with the forking process itself
    st = m.stats()
    assert st["pids"]["current"] <= 16 and st["pids"]["limit"] == 16
    assert st["pids"]["failcnt"] > 0
    bean = {b["resource"]: b for b in st["beancounters"]}["pids"]
    assert bean["held"] <= 16 and bean["limit"] == 16 and bean["failcnt"] > 0
    assert m.kill_all() == []


def test_cpus_half_is_a_cfs_quota(cg):
    m = cg.make("half")
    _need(m, "cpu")
    m.create()
    m.apply(from_options(cpus="0.5", cpu_shares="512"))
    got = m.read_limits()
    assert got["cpus"] == 0.5 and got["cpu_period"] == 100000
    # v2 keeps cpu.weight (1..10000), so shares come back through the conversion: 512 -> 501
    from ctrun.cgroups.v2 import V2Manager
    if isinstance(m._side("cpu"), V2Manager):
        assert abs(got["cpu_shares"] - 512) <= 16
    else:
        assert got["cpu_shares"] == 512
    if m.layout.has_v1("cpu"):
        assert _file(m, "cpu", "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert _file(m, "cpu", "cpu.cfs_period_us").read_text().strip() == "100000"
    else:
        assert _file(m, "cpu", "cpu.max").read_text().split() == ["50000", "100000"]
    m.apply(from_options(cpus="max"))
    assert m.read_limits()["cpus"] is None


def test_freeze_and_thaw_a_running_process(cg):
    m = cg.make("ice")
    _need(m, "freezer")
    m.create()
    p = cg.spawn(m, ["sh", "-c", "while :; do :; done"])
    wait_for(lambda: _cpu_ticks(p.pid) > 0, "the loop to run")
    assert not m.frozen()
    m.freeze()
    assert m.frozen()
    if m.layout.has_v1("freezer"):
        assert _file(m, "freezer", "freezer.state").read_text().strip() == "FROZEN"
    ticks = _cpu_ticks(p.pid)
    time.sleep(0.3)
    assert _cpu_ticks(p.pid) == ticks          # a frozen task does not run at all
    m.freeze()                                 # already frozen: fine
    m.thaw()
    assert not m.frozen()
    wait_for(lambda: _cpu_ticks(p.pid) > ticks, "the loop to run again")
    assert p.poll() is None


def test_live_memory_changes_on_a_running_process(cg):
    m = cg.make("live")
    _need(m, "memory")
    m.create()
    m.apply(from_options(memory="64M"))
    p = cg.spawn(m, [sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    assert _ready(p) == "ready"
    m.apply(from_options(memory="128M"))                      # raise
    assert m.read_limits()["memory"] == 128 << 20
    m.apply(from_options(memory="96M"))                       # lower, still above usage
    assert m.read_limits()["memory"] == 96 << 20
    if m.layout.has_v1("memory") and not Path("/proc/swaps").read_text().strip().count("\n"):
        # v1 with no swap to push to: the kernel refuses a limit below what is in use
        with pytest.raises(CtrunError, match=r"^cannot set --memory 1M on container live: the "
                           r"kernel refused \(Device or resource busy\): current usage is "
                           "above it$"):
            m.apply(from_options(memory="1M"))
        assert p.poll() is None and m.read_limits()["memory"] == 96 << 20
    if m.layout.has_v1("memory") and not unsupported(Limits(memory_swap=1), m.layout):
        # both at once, up and then down: memsw has to move first going up
        m.apply(from_options(memory="80M", memory_swap="80M"))
        m.apply(from_options(memory="200M", memory_swap="300M"))
        got = m.read_limits()
        assert (got["memory"], got["memory_swap"]) == (200 << 20, 300 << 20)
        with pytest.raises(CtrunError, match="it is above the memory\\+swap limit; raise "
                           "--memory-swap with it$"):
            m.apply(from_options(memory="400M"))
        m.apply(from_options(memory="64M", memory_swap="64M"))
        got = m.read_limits()
        assert (got["memory"], got["memory_swap"]) == (64 << 20, 64 << 20)
    assert p.poll() is None                    # never restarted, never killed
    assert m.stats()["memory"]["usage"] >= 40 << 20


@pytest.mark.cgroup_v1
def test_v1_cpuset_follows_into_ct(cg):
    m = cg.make("pin")
    _need(m, "cpuset")
    if not m.layout.has_v1("cpuset"):
        pytest.skip("no v1 cpuset")
    cpus = Path("/sys/devices/system/cpu/online").read_text().strip()
    if cpus == "0":
        pytest.skip("one cpu only")
    m.create()
    p = cg.spawn(m, ["sleep", "60"])
    m.apply(from_options(cpuset_cpus="0"))      # ct holds the old set: narrowed first
    assert _file(m, "cpuset", "cpuset.cpus", "ct").read_text().strip() == "0"
    assert m.read_limits()["cpuset_cpus"] == "0"
    assert os.sched_getaffinity(p.pid) == {0}
    m.apply(from_options(cpuset_cpus=cpus))     # widened parents first
    assert _file(m, "cpuset", "cpuset.cpus", "ct").read_text().strip() == cpus
    assert m.read_limits()["cpuset_cpus"] == cpus


@pytest.mark.cgroup_v1
def test_v1_device_throttles_are_written_and_read_back(cg):
    m = cg.make("disk")
    if not m.layout.has_v1("blkio"):
        pytest.skip("no v1 blkio")
    disk = next((f"/dev/{d}" for d in sorted(os.listdir("/sys/block"))
                 if "/virtual/" not in os.readlink(f"/sys/block/{d}")), None)
    if disk is None:
        pytest.skip("no real disk")
    st = os.stat(disk)
    majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    m.create()
    lim = from_options(device_read_bps=[f"{disk}:1mb"], device_write_bps=[f"{disk}:2M"],
                       device_read_iops=[f"{disk}:100"], device_write_iops=[f"{disk}:50"])
    assert unsupported(lim, m.layout) == []
    m.apply(lim)
    m.apply(lim)
    blk = _file(m, "blkio", "")
    assert (blk / "blkio.throttle.read_bps_device").read_text() == f"{majmin} 1048576\n"
    assert (blk / "blkio.throttle.write_bps_device").read_text() == f"{majmin} 2097152\n"
    assert (blk / "blkio.throttle.read_iops_device").read_text() == f"{majmin} 100\n"
    assert (blk / "blkio.throttle.write_iops_device").read_text() == f"{majmin} 50\n"
    got = m.read_limits()
    assert got["device_read_bps"] == {disk: 1 << 20} and got["device_write_iops"] == {disk: 50}
    m.apply(from_options(device_read_bps=[f"{disk}:0"]))        # 0 lifts the throttle
    assert m.read_limits()["device_read_bps"] == {}


def test_blkio_weight_is_reported_where_the_scheduler_ignores_it(cg):
    """Whatever the host's disks, schedulers and loaded modules: a weight that cannot act
    gives exactly one problem, on one line, naming --blkio-weight and what it needs; a
    weight is accepted silently only where the controller exists and every disk's scheduler
    honours weights.  (The wording differs by host: bfq not loaded, or a disk under another
    scheduler; the behaviour must not.)"""
    layout = _host_layout()
    slow = []
    for d in sorted(os.listdir("/sys/block")):
        if "/virtual/" in os.readlink(f"/sys/block/{d}"):
            continue
        try:
            sched = Path(f"/sys/block/{d}/queue/scheduler").read_text()
        except OSError:
            continue
        current = sched.split("[", 1)[1].split("]", 1)[0] if "[" in sched else sched.strip()
        if current not in ("bfq", "cfq"):
            slow.append(d)
    controller = bool(layout.has_v1("blkio") or "io" in layout.v2_controllers)
    problems = unsupported(from_options(blkio_weight="500"), layout)
    assert len(problems) <= 1, problems
    if not problems:                # only a host where weights act may report nothing
        assert controller and not slow, (f"weights cannot act here (controller: {controller}, "
                                          f"disks without bfq: {slow}), yet nothing was said")
        return
    p = problems[0]
    assert p.field == "blkio_weight"
    assert p.startswith("--blkio-weight") and "\n" not in p
    if controller:
        assert "bfq" in p           # the fix: the scheduler weights need


def test_every_limit_at_once_then_stats(cg):
    m = cg.make("all")
    m.create()
    opts = dict(memory="64M", memory_reservation="16M", cpus="1", cpu_weight="200",
                cpuset_cpus="0", cpuset_mems="0", pids_limit="100", blkio_weight="300")
    lim = from_options(**opts)
    skip = [p.field for p in unsupported(lim, m.layout)]
    m.apply(lim, skip=skip)
    got = m.read_limits()
    want = {"memory": 64 << 20, "memory_reservation": 16 << 20, "cpus": 1.0, "cpu_weight": 200,
            "cpuset_cpus": "0", "cpuset_mems": "0", "pids_limit": 100, "blkio_weight": 300}
    for k, v in want.items():
        if k in got and k not in skip:
            assert got[k] == v, k
    p = cg.spawn(m, ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
    assert p.wait(timeout=60) == 0
    st = m.stats()
    assert set(st) >= {"beancounters"}
    if "cpu" in st:
        assert st["cpu"]["usage_ns"] > 0
        assert st["cpu"]["user_ns"] + st["cpu"]["system_ns"] > 0
    if "memory" in st:
        assert st["memory"]["limit"] == 64 << 20 and st["memory"]["max_usage"] > 0
    if "pids" in st:
        assert st["pids"] == {"current": 0, "limit": 100, "failcnt": 0}
    assert {"read_bytes", "write_bytes", "read_ops", "write_ops"} <= set(st.get("blkio", {
        "read_bytes": 0, "write_bytes": 0, "read_ops": 0, "write_ops": 0}))
    assert [b["resource"] for b in st["beancounters"]][:1] in (["memory"], ["pids"], [])


def test_v2_side_freezes_and_counts_cpu_on_the_real_cgroup2_mount(cg):
    """cgroup.freeze and cpu.stat are core cgroup2 files, so the V2Manager's freezer and CPU
    accounting run on the real kernel even where cgroup2 holds no controller (hybrid)."""
    from ctrun.cgroups import Layout
    from ctrun.cgroups.v2 import V2Manager
    from ctrun.errors import HostUnsupported
    host = _host_layout()
    if host.v2 is None:
        pytest.skip("no cgroup2 mount")
    m = cg.make("v2ice", V2Manager, Layout("v2", {}, host.v2, set(host.v2_controllers)))
    m.create()
    if not (m.dirs()["cgroup2"] / "cgroup.freeze").exists():
        pytest.skip("cgroup2 freezing needs Linux 5.2")
    p = cg.spawn(m, ["sh", "-c", "while :; do :; done"])
    wait_for(lambda: m.stats()["cpu"]["usage_ns"] > 0, "cpu usage to show in cpu.stat")
    m.freeze()
    assert m.frozen()
    ticks = _cpu_ticks(p.pid)
    time.sleep(0.3)
    assert _cpu_ticks(p.pid) == ticks
    m.thaw()
    assert not m.frozen()
    wait_for(lambda: _cpu_ticks(p.pid) > ticks, "the loop to run again")
    if "memory" not in host.v2_controllers:
        with pytest.raises(HostUnsupported, match="this host has no memory controller"):
            m.apply(Limits(memory=64 << 20))
        assert "memory" not in m.read_limits()
