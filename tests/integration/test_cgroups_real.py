"""The cgroup managers against the host's real hierarchies (needs root).

Every cgroup lives under a per-run parent `ctrun-test-<pid>`; the fixture kills, removes
and checks it even when a test fails.  Controllers the v2 side delegated at the cgroup2 mount
root are put back when no other cgroup is using that root.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctrun.cgroups import Layout, detect, manager
from ctrun.cgroups.v1 import V1Manager
from ctrun.cgroups.v2 import KEY as V2_KEY, V2Manager
from ctrun.errors import Conflict, HostUnsupported

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")

# the same per-run parent tests/conftest.py watches for leaks
PARENT = os.environ.get("CTRUN_CGROUP_PARENT", f"ctrun-test-{os.getpid()}")


def _host_layout():
    try:
        return detect()
    except HostUnsupported as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module", autouse=True)
def restore_v2_root():
    """create() delegates controllers at the cgroup2 mount root; undo what this run added."""
    layout = detect() if os.geteuid() == 0 else None
    f = layout.v2 / "cgroup.subtree_control" if layout and layout.v2 else None
    before = set(f.read_text().split()) if f else set()
    yield
    # only when no other cgroup exists there, so a concurrent user is never affected
    if f and not any(p.is_dir() for p in layout.v2.iterdir()):
        for c in set(f.read_text().split()) - before:
            try:
                f.write_text("-" + c)
            except OSError:
                pass


def _force_cleanup(mounts):
    """Last resort when a manager's own cleanup failed: kill and rmdir under PARENT."""
    for mnt in mounts:
        top = mnt / PARENT
        for d, _, _ in os.walk(top, topdown=False) if top.exists() else ():
            for pid in (Path(d) / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for _ in range(100):
            try:
                for d, _, _ in os.walk(top, topdown=False):
                    os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.05)


class Cgroups:
    def __init__(self):
        self.managers, self.procs = [], []

    def make(self, name, cls=None, layout=None):
        layout = layout or _host_layout()
        if cls is None:
            m = manager(name, PARENT, layout=layout, timeout=10)
        else:
            m = cls(name, PARENT, layout, timeout=10)
        self.managers.append(m)
        return m

    def spawn(self, m, argv, **kw):
        """Start argv with the child joining m before exec, as the runtime's child does."""
        files = [os.fspath(f) for f in m.procs_files()]

        def join():
            for f in files:
                fd = os.open(f, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)

        p = subprocess.Popen(argv, preexec_fn=join, **kw)
        self.procs.append(p)
        return p


@pytest.fixture
def cg():
    c = Cgroups()
    try:
        yield c
    finally:
        for p in c.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        failures = []
        for m in c.managers:
            try:
                m.kill_all()
                m.remove()
            except Exception as e:          # keep cleaning the rest
                failures.append(e)
        for m in c.managers:
            m.remove_parent_if_empty()
        mounts = {mnt for m in c.managers for mnt in m.mounts().values()}
        leaked = [str(mnt / PARENT) for mnt in mounts if (mnt / PARENT).exists()]
        if leaked:
            _force_cleanup(mounts)
        assert not failures, failures
        assert not leaked, f"cgroups left behind: {leaked}"


def cgroup_of(pid):
    """{hierarchy key: path} from /proc/<pid>/cgroup, keyed like Layout.v1 / "cgroup2"."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls or V2_KEY] = path
    return out


def wait_for(cond, what, timeout=10):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_child_joins_every_hierarchy_then_kill_and_remove(cg):
    m = cg.make("box")
    m.create()
    m.create()                                   # idempotent
    assert m.exists()
    assert len(m.procs_files()) == len(m.mounts())
    p = cg.spawn(m, ["sleep", "60"])
    where = cgroup_of(p.pid)
    for key in m.mounts():
        assert where[key] == f"/{PARENT}/box/ct", key
    assert m.pids() == [p.pid]
    assert m.kill_all() == []
    assert p.wait(timeout=10) == -signal.SIGKILL
    m.remove()
    m.remove()                                   # already gone is fine
    assert not m.exists()
    assert not any(Path(d).exists() for d in m.paths().values())
    m.remove_parent_if_empty()
    assert not any((mnt / PARENT).exists() for mnt in m.mounts().values())


def test_add_moves_a_running_process(cg):
    m = cg.make("added")
    m.create()
    p = subprocess.Popen(["sleep", "60"])
    cg.procs.append(p)
    m.add(p.pid)
    assert all(cgroup_of(p.pid)[k] == f"/{PARENT}/added/ct" for k in m.mounts())
    assert m.kill_all() == []
    assert p.wait(timeout=10) == -signal.SIGKILL


def test_remove_refuses_while_a_process_remains(cg):
    m = cg.make("busy")
    m.create()
    p = cg.spawn(m, ["sleep", "60"])
    with pytest.raises(Conflict, match=f"still has processes {p.pid}; kill them"):
        m.remove(timeout=0.2)
    assert p.poll() is None
    assert m.kill_all() == []
    m.remove()
    assert not m.exists()


def test_kill_all_reaches_forked_descendants(cg):
    m = cg.make("tree")
    m.create()
    p = cg.spawn(m, ["sh", "-c", "sleep 60 & sleep 60 & (sleep 60 & wait) & wait"])
    wait_for(lambda: len(m.pids()) >= 5, "the shell's children")
    assert m.kill_all() == []
    p.wait(timeout=10)
    assert m.pids() == []
    m.remove()


def test_sigterm_is_waited_for_and_stragglers_reported(cg):
    m = cg.make("term")
    m.create()
    p = cg.spawn(m, ["sleep", "60"])
    assert m.kill_all(signal.SIGTERM) == []
    assert p.wait(timeout=10) == -signal.SIGTERM
    code = "import signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    q = cg.spawn(m, [sys.executable, "-c", code], stdout=subprocess.PIPE)
    q.stdout.readline()                          # handler installed
    assert m.kill_all(signal.SIGTERM, timeout=0.3) == [q.pid]
    assert m.kill_all() == []
    assert q.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.cgroup_v1
def test_v1_manager_alone_kills_through_the_freezer(cg):
    host = _host_layout()
    if not host.has_v1("freezer"):
        pytest.skip("no v1 freezer hierarchy")
    m = cg.make("v1only", V1Manager, Layout("v1", dict(host.v1), None, set()))
    m.create()
    p = cg.spawn(m, ["sh", "-c", "sleep 60 & wait"])
    wait_for(lambda: len(m.pids()) == 2, "the shell's child")
    assert V2_KEY not in m.mounts()
    assert m.kill_all() == []
    assert p.wait(timeout=10) == -signal.SIGKILL
    state = Path(m.paths()[host.has_v1("freezer")]) / "freezer.state"
    assert state.read_text().strip() == "THAWED"
    m.remove()


def test_v2_manager_alone_kills_through_cgroup_kill(cg):
    host = _host_layout()
    if host.v2 is None:
        pytest.skip("no cgroup2 mount")
    m = cg.make("v2only", V2Manager, Layout("v2", {}, host.v2, set(host.v2_controllers)))
    m.create()
    ct = Path(m.paths()[V2_KEY]) / "ct"
    # every controller the mount root offers reaches the container's cgroup
    assert host.v2_controllers <= set((ct / "cgroup.controllers").read_text().split())
    p = cg.spawn(m, ["sleep", "60"])
    assert cgroup_of(p.pid)[V2_KEY] == f"/{PARENT}/v2only/ct"
    assert m.pids() == [p.pid]
    assert m.kill_all() == []
    assert p.wait(timeout=10) == -signal.SIGKILL
    m.remove()


@pytest.mark.cgroup_v1
def test_v1_cpuset_is_filled_in_so_tasks_can_join(cg):
    host = _host_layout()
    key = host.has_v1("cpuset")
    if key is None:
        pytest.skip("no v1 cpuset hierarchy")
    m = cg.make("cpus")
    m.create()
    ct = Path(m.paths()[key]) / "ct"
    root = host.v1[key]
    for f in ("cpuset.cpus", "cpuset.mems"):
        assert (ct / f).read_text() == (root / f).read_text()


def test_oom_kill_is_counted(cg):
    host = _host_layout()
    m = cg.make("oom")
    m.create()
    key = host.has_v1("memory")
    if key:
        (Path(m.paths()[key]) / "memory.limit_in_bytes").write_text(str(32 << 20))
    elif host.v2 and "memory" in host.v2_controllers:
        (Path(m.paths()[V2_KEY]) / "memory.max").write_text(str(32 << 20))
        (Path(m.paths()[V2_KEY]) / "memory.swap.max").write_text("0")
    else:
        pytest.skip("no memory controller")
    assert m.oom_kills() == 0
    p = cg.spawn(m, [sys.executable, "-c", "b = b'x' * (256 << 20)"])
    assert p.wait(timeout=30) == -signal.SIGKILL
    assert m.oom_kills() >= 1


@pytest.mark.cgroup_v1
def test_device_allowlist(cg):
    m = cg.make("devs")
    if not m.supports_device_rules():
        pytest.skip("no v1 devices controller")
    m.create()
    m.set_devices_allowlist(["c 1:3 rwm"])
    devices = Path(m.paths()[m.layout.has_v1("devices")])
    assert (devices / "devices.list").read_text().split("\n")[0] == "c 1:3 rwm"
    assert (devices / "ct" / "devices.list").read_text().strip() == "c 1:3 rwm"
    code = ("import os\nos.close(os.open('/dev/null', os.O_RDONLY))\n"
            "try:\n os.open('/dev/zero', os.O_RDONLY)\nexcept PermissionError:\n print('denied')\n")
    p = cg.spawn(m, [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.communicate(timeout=30)[0] == "denied\n"
    assert p.returncode == 0
    q = cg.spawn(m, ["sleep", "60"])
    with pytest.raises(Conflict, match="before the container starts"):
        m.set_devices_allowlist(["c 1:3 rwm"])
    assert m.kill_all() == []
    q.wait(timeout=10)
