"""Layout detection from sample mountinfo, and the managers' file protocol on fake trees.

The fake trees stand in for cgroupfs below tmp_path: FakeKernel's mkdir fills a new cgroup
with control files as the kernel does, and its rmdir refuses (EBUSY) while the cgroup has
children or processes.  Killing real processes is covered by the integration tests.
"""

import errno
import os
import signal
from pathlib import Path

import pytest

from ctrun.cgroups import CgroupManager, Layout, detect, manager
from ctrun.cgroups.detect import parse
from ctrun.cgroups.v1 import HybridManager, V1Manager
from ctrun.cgroups.v2 import KEY as V2_KEY, V2Manager
from ctrun.errors import Conflict, HostUnsupported, InvalidInput

# cgroup lines of this (hybrid) build machine's /proc/self/mountinfo, with a few neighbours
THIS_HOST = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# a Debian 12 host booted with systemd: pure cgroup v2
DEBIAN12_V2 = """\
21 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
27 21 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
29 21 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
30 21 0:26 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
"""

# CentOS 7 style v1: co-mounted controllers and systemd's named hierarchy with options
CENTOS7_V1 = """\
25 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 25 0:24 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,net_prio,net_cls
29 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,freezer
"""


def _write_mountinfo(tmp_path, text):
    f = tmp_path / "mountinfo"
    f.write_text(text)
    return f


# -- detection ---------------------------------------------------------------------------
def test_detects_this_hybrid_host(tmp_path):
    root = tmp_path / "root"
    (root / "sys/fs/cgroup/unified").mkdir(parents=True)
    (root / "sys/fs/cgroup/unified/cgroup.controllers").write_text("hugetlb\n")
    layout = detect(_write_mountinfo(tmp_path, THIS_HOST), root=root)
    assert layout.kind == "hybrid"
    assert set(layout.v1) == {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                              "blkio", "pids", "name=systemd"}
    assert layout.v1["cpu"] == root / "sys/fs/cgroup/cpu"
    assert layout.v2 == root / "sys/fs/cgroup/unified"
    assert layout.v2_controllers == {"hugetlb"}


def test_detects_pure_v2_debian12(tmp_path):
    root = tmp_path / "root"
    (root / "sys/fs/cgroup").mkdir(parents=True)
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    layout = detect(_write_mountinfo(tmp_path, DEBIAN12_V2), root=root)
    assert layout.kind == "v2"
    assert layout.v1 == {}
    assert layout.v2 == root / "sys/fs/cgroup"
    assert layout.v2_controllers == {"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"}


def test_detects_v1_keys_from_superblock_options():
    layout = parse(CENTOS7_V1)
    assert layout.kind == "v1" and layout.v2 is None
    assert layout.v1 == {
        "name=systemd": Path("/sys/fs/cgroup/systemd"),
        "net_prio,net_cls": Path("/sys/fs/cgroup/net_cls,net_prio"),
        "cpu,cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "freezer": Path("/sys/fs/cgroup/freezer"),
    }
    assert layout.has_v1("cpuacct") == "cpu,cpuacct"
    assert layout.has_v1("pids") is None


def test_named_v1_hierarchy_alone_does_not_make_a_v2_host_hybrid():
    text = DEBIAN12_V2 + ("40 29 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup "
                          "rw,xattr,name=systemd\n")
    assert parse(text).kind == "v2"


def test_unescapes_mount_points_and_prefers_a_mount_of_the_hierarchy_root():
    text = ("50 1 0:40 /sub /mnt/inner rw - cgroup cgroup rw,memory\n"
            "51 1 0:40 / /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\n")
    assert parse(text).v1 == {"memory": Path("/mnt/my cgroups")}


def test_no_cgroup_mount_is_host_unsupported():
    with pytest.raises(HostUnsupported, match="no cgroup hierarchy is mounted.*mount -t cgroup2"):
        parse("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")


def test_default_detection_is_cached():
    try:
        first = detect()
    except HostUnsupported:
        pytest.skip("no cgroup mounted here")
    assert detect() is first


def test_a_layout_inherited_over_a_fork_is_checked_against_mountinfo_once(tmp_path,
                                                                          monkeypatch):
    """The warm server's layout, in a worker: kept while mountinfo reads the same, parsed
    again when the host mounted or unmounted something since.  (A copy of this host's
    mountinfo stands for it: the real one may change meanwhile, an LXCFS stopped.)"""
    import sys
    mod = sys.modules["ctrun.cgroups.detect"]
    info = tmp_path / "mountinfo"
    info.write_text(open("/proc/self/mountinfo").read())
    monkeypatch.setattr(mod, "MOUNTINFO", str(info))
    monkeypatch.setattr(mod, "_cache", {})
    try:
        current = mod.detect(str(info))
    except HostUnsupported:
        pytest.skip("no cgroup mounted here")
    key = next(iter(mod._cache))
    text = mod._cache[key][0]
    sentinel = object()
    mod._cache[key] = (text, sentinel, -1)            # another process's, still true
    assert mod.detect(str(info)) is sentinel and mod._cache[key][2] == os.getpid()
    mod._cache[key] = (text + "x", sentinel, -1)      # the host's mounts changed since
    assert mod.detect(str(info)) == current and mod.detect(str(info)) is not sentinel


# -- a fake cgroupfs --------------------------------------------------------------------
V1_FILES = {
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "freezer": {"freezer.state": "THAWED\n"},
    "memory": {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm\n"},
}
MEMORY_EVENTS = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"


class FakeKernel:
    def __init__(self, layout):
        self.layout = layout

    def _v1_key(self, path):
        for key, mnt in self.layout.v1.items():
            if path.is_relative_to(mnt):
                return key
        return None

    def mkdir(self, path):
        path = Path(path)
        os.mkdir(path)
        files = {"cgroup.procs": ""}
        key = self._v1_key(path)
        if key is not None:
            for c in key.split(","):
                files.update(V1_FILES.get(c, {}))
        else:
            ctrls = [c.lstrip("+") for c in (path.parent / "cgroup.subtree_control").read_text().split()]
            files.update({"cgroup.controllers": " ".join(ctrls), "cgroup.subtree_control": "",
                          "cgroup.kill": "", "cgroup.freeze": "0\n",
                          "cgroup.events": "populated 0\nfrozen 0\n"})
            if "memory" in ctrls:
                files["memory.events"] = files["memory.events.local"] = MEMORY_EVENTS
        for name, content in files.items():
            (path / name).write_text(content)

    def rmdir(self, path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "gone", str(path))
        if any(p.is_dir() for p in path.iterdir()) or (path / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "busy", str(path))
        for p in path.iterdir():
            p.unlink()
        os.rmdir(path)


def fake_host(tmp_path, monkeypatch, text, v2_controllers="cpu io memory pids"):
    """A layout from sample mountinfo whose hierarchies are fake roots under tmp_path."""
    root = tmp_path / "root"
    plain = parse(text, root)
    for key, mnt in plain.v1.items():
        mnt.mkdir(parents=True)
        (mnt / "cgroup.procs").write_text("1\n")
        if "cpuset" in key.split(","):
            (mnt / "cpuset.cpus").write_text("0-1\n")
            (mnt / "cpuset.mems").write_text("0\n")
        if "memory" in key.split(","):
            (mnt / "memory.oom_control").write_text(V1_FILES["memory"]["memory.oom_control"])
    if plain.v2:
        plain.v2.mkdir(parents=True, exist_ok=True)
        (plain.v2 / "cgroup.procs").write_text("1\n")
        (plain.v2 / "cgroup.controllers").write_text(v2_controllers + "\n")
        (plain.v2 / "cgroup.subtree_control").write_text("")
    layout = parse(text, root)
    kernel = FakeKernel(layout)
    monkeypatch.setattr(CgroupManager, "_mkdir", lambda self, p: kernel.mkdir(p))
    monkeypatch.setattr(CgroupManager, "_rmdir", lambda self, p: kernel.rmdir(p))
    return layout


# -- v2 ----------------------------------------------------------------------------------
@pytest.fixture
def v2(tmp_path, monkeypatch):
    return fake_host(tmp_path, monkeypatch, DEBIAN12_V2)


def test_v2_create_delegates_controllers_down_to_the_container(v2):
    m = manager("web", layout=v2)
    assert isinstance(m, V2Manager)
    m.create()
    m.create()
    ct = v2.v2 / "ctrun/web/ct"
    assert ct.is_dir()
    assert (v2.v2 / "cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"
    assert (v2.v2 / "ctrun/web/cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"
    assert (ct / "cgroup.controllers").read_text() == "cpu io memory pids"
    assert (ct / "cgroup.subtree_control").read_text() == ""   # the container's to decide
    assert m.procs_files() == [ct / "cgroup.procs"]
    assert m.paths() == {V2_KEY: str(v2.v2 / "ctrun/web")}
    assert m.exists()


def test_v2_enables_only_what_a_level_offers(tmp_path, monkeypatch):
    layout = fake_host(tmp_path, monkeypatch, DEBIAN12_V2, v2_controllers="memory pids")
    (layout.v2 / "cgroup.subtree_control").write_text("pids")   # already delegated
    manager("db", layout=layout).create()
    assert (layout.v2 / "cgroup.subtree_control").read_text() == "+memory"


def test_v2_add_pids_and_remove(v2):
    m = manager("web", layout=v2, timeout=0.05)
    m.create()
    m.add(4242)
    assert (v2.v2 / "ctrun/web/ct/cgroup.procs").read_text() == "4242"
    assert m.pids() == [4242]
    with pytest.raises(Conflict, match="^cgroup ctrun/web still has processes 4242; kill them and retry$"):
        m.remove()
    (v2.v2 / "ctrun/web/ct/cgroup.procs").write_text("")
    other = manager("db", layout=v2)
    other.create()
    m.remove()
    m.remove()
    assert not m.exists()
    assert (v2.v2 / "ctrun").is_dir()                # the parent stays while it holds another
    other.remove()
    assert not (v2.v2 / "ctrun").exists()            # and goes with the last one


def test_a_parent_removed_between_two_mkdirs_is_made_again(v2):
    """create() races the remove() of the parent's last other container: the parent it
    made vanishes before its own cgroup is in it, and creation starts over."""
    m = manager("web", layout=v2)
    real, raced = m._mkdir, []

    def mkdir(path):
        if path.name == "web" and not raced:  # the other container's remove() wins here
            raced.append(FakeKernel(v2).rmdir(path.parent) or True)
        real(path)
    m._mkdir = mkdir
    m.create()
    assert raced and (v2.v2 / "ctrun/web/ct").is_dir()


def test_v2_remove_takes_container_made_subcgroups_leaves_first(v2):
    m = manager("web", parent="ctrun/tenant", layout=v2)
    m.create()
    FakeKernel(v2).mkdir(v2.v2 / "ctrun/tenant/web/ct/init.scope")
    FakeKernel(v2).mkdir(v2.v2 / "ctrun/tenant/web/ct/init.scope/deeper")
    m.remove()
    assert not (v2.v2 / "ctrun/tenant/web").exists()
    assert (v2.v2 / "ctrun").is_dir()      # remove() takes the parent's last level only
    m.remove_parent_if_empty()
    assert not (v2.v2 / "ctrun").exists()


def test_v2_kill_all_uses_cgroup_kill(v2):
    m = manager("web", layout=v2)
    m.create()
    assert m.kill_all() == []
    assert (v2.v2 / "ctrun/web/cgroup.kill").read_text() == "1"


def test_v2_other_signals_freeze_and_thaw(v2):
    m = manager("web", layout=v2)
    m.create()
    (v2.v2 / "ctrun/web/cgroup.events").write_text("populated 0\nfrozen 1\n")
    # an empty cgroup is left alone: nothing to freeze at teardown
    assert m.kill_all(signal.SIGTERM) == []
    assert (v2.v2 / "ctrun/web/cgroup.freeze").read_text() == "0\n"  # as the kernel made it
    # a pid that cannot exist (above pid_max): signalled once under a freeze, then thawed
    ghost = 1 << 23
    (v2.v2 / "ctrun/web/ct/cgroup.procs").write_text(f"{ghost}\n")
    assert m.kill_all(signal.SIGTERM, timeout=0.05) == [ghost]
    assert (v2.v2 / "ctrun/web/cgroup.kill").read_text() == ""
    assert (v2.v2 / "ctrun/web/cgroup.freeze").read_text() == "0"


def test_v2_oom_kills_add_up_the_subtree(v2):
    m = manager("web", layout=v2)
    assert m.oom_kills() == 0
    m.create()
    (v2.v2 / "ctrun/web/memory.events.local").write_text(MEMORY_EVENTS.replace("oom_kill 0", "oom_kill 1"))
    (v2.v2 / "ctrun/web/ct/memory.events.local").write_text(MEMORY_EVENTS.replace("oom_kill 0", "oom_kill 2"))
    assert m.oom_kills() == 3


def test_v2_has_no_device_rules(v2):
    m = manager("web", layout=v2)
    assert not m.supports_device_rules()
    with pytest.raises(HostUnsupported, match="drop CAP_MKNOD and mount nodev"):
        m.set_devices_allowlist(["c 1:3 rwm"])


# -- v1 ----------------------------------------------------------------------------------
@pytest.fixture
def v1(tmp_path, monkeypatch):
    # this host without its cgroup2 line is a plain v1 host
    return fake_host(tmp_path, monkeypatch, THIS_HOST.replace("cgroup2 cgroup2", "tmpfs tmpfs"))


def test_v1_create_makes_every_hierarchy_and_fills_cpuset(v1):
    m = manager("web", layout=v1)
    assert isinstance(m, V1Manager)
    m.create()
    m.create()
    for key, mnt in v1.v1.items():
        assert (mnt / "ctrun/web/ct").is_dir(), key
    for level in ("ctrun", "ctrun/web", "ctrun/web/ct"):
        d = v1.v1["cpuset"] / level
        assert (d / "cpuset.cpus").read_text() == "0-1"
        assert (d / "cpuset.mems").read_text() == "0"
    assert sorted(m.procs_files()) == sorted(mnt / "ctrun/web/ct/cgroup.procs" for mnt in v1.v1.values())
    assert set(m.paths()) == set(v1.v1)


def test_v1_pids_union_and_remove(v1):
    m = manager("web", layout=v1, timeout=0.05)
    m.create()
    (v1.v1["memory"] / "ctrun/web/ct/cgroup.procs").write_text("7\n9\n")
    (v1.v1["pids"] / "ctrun/web/ct/cgroup.procs").write_text("9\n8\n")
    assert m.pids() == [7, 8, 9]
    with pytest.raises(Conflict, match="still has processes 7, 8, 9"):
        m.remove()
    for key in ("memory", "pids"):
        (v1.v1[key] / "ctrun/web/ct/cgroup.procs").write_text("")
    m.remove()
    assert not m.exists()


def test_v1_kill_all_freezes_then_thaws(v1):
    m = manager("web", layout=v1)
    m.create()
    assert m.kill_all() == []
    state = v1.v1["freezer"] / "ctrun/web/freezer.state"
    assert state.read_text() == "THAWED\n"  # empty: never frozen
    ghost = 1 << 23  # above pid_max: cannot exist, so it "survives" every SIGKILL
    (v1.v1["pids"] / "ctrun/web/ct/cgroup.procs").write_text(f"{ghost}\n")
    assert m.kill_all(timeout=0.05) == [ghost]
    assert state.read_text() == "THAWED"  # frozen for the signal, thawed after


def test_v1_oom_kills_add_up_the_subtree(v1):
    m = manager("web", layout=v1)
    m.create()
    text = V1_FILES["memory"]["memory.oom_control"]
    (v1.v1["memory"] / "ctrun/web/ct/memory.oom_control").write_text(text.replace("oom_kill 0", "oom_kill 2"))
    assert m.oom_kills() == 2


def test_v1_device_allowlist(v1):
    m = manager("web", layout=v1)
    assert m.supports_device_rules()
    m.create()
    m.set_devices_allowlist(["c 1:3 rwm", "c  1:5   rw"])
    top = v1.v1["devices"] / "ctrun/web"
    assert (top / "devices.deny").read_text() == "a"
    assert (top / "devices.allow").read_text() == "c 1:5 rw"   # the file keeps the last write
    assert (top / "ct").is_dir()                               # made again, to inherit the list
    with pytest.raises(InvalidInput, match="invalid device rule 'x 1:3 rwm'"):
        m.set_devices_allowlist(["x 1:3 rwm"])
    (top / "ct/cgroup.procs").write_text("5\n")
    with pytest.raises(Conflict, match="before the container starts"):
        m.set_devices_allowlist([])


# -- hybrid --------------------------------------------------------------------------------
def test_hybrid_joins_v1_and_the_cgroup2_mount(tmp_path, monkeypatch):
    layout = fake_host(tmp_path, monkeypatch, THIS_HOST, v2_controllers="hugetlb")
    m = manager("web", layout=layout)
    assert isinstance(m, HybridManager)
    m.create()
    assert len(m.procs_files()) == 10
    assert layout.v2 / "ctrun/web/ct/cgroup.procs" in m.procs_files()
    assert (layout.v2 / "cgroup.subtree_control").read_text() == "+hugetlb"
    assert m.paths()[V2_KEY] == str(layout.v2 / "ctrun/web")
    assert m.kill_all() == []
    assert (layout.v2 / "ctrun/web/cgroup.kill").read_text() == "1"
    assert (layout.v1["freezer"] / "ctrun/web/freezer.state").read_text() == "THAWED\n"
    assert m.supports_device_rules()
    m.remove()
    assert not m.exists()


def test_manager_root_rebases_a_layout(tmp_path):
    layout = Layout("v2", {}, Path("/sys/fs/cgroup"), set())
    m = manager("web", layout=layout, root=tmp_path)
    assert m.paths() == {V2_KEY: str(tmp_path / "sys/fs/cgroup/ctrun/web")}


@pytest.mark.parametrize("name,parent", [("", "ctrun"), ("..", "ctrun"), ("a/b", "ctrun"),
                                         ("web", "ctrun/../etc"), ("we\nb", "ctrun")])
def test_rejects_names_that_escape_the_parent(name, parent):
    layout = Layout("v2", {}, Path("/nonexistent"), set())
    with pytest.raises(InvalidInput, match="invalid cgroup"):
        manager(name, parent, layout=layout)
