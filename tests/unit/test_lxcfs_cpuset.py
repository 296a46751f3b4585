"""Which cpuset --cpus gives (so nproc says N), and mountinfo's escaped mount points."""

import os
import subprocess
import sys

import pytest

from ctrun.cgroups.limits import Limits
from ctrun.errors import HostUnsupported
from ctrun.runtime import lxcfs


class FakeManager:
    def __init__(self, fail=False):
        self.applied, self.fail = [], fail

    def apply(self, limits, skip=()):
        if self.fail:
            raise HostUnsupported("no cpuset controller")
        self.applied.append(limits.cpuset_cpus)


def spread(monkeypatch, cpus, allowed=(0, 1, 2, 3), name="web", **fields):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed))
    mgr = FakeManager()
    lxcfs.spread_cpus(mgr, Limits(cpus=cpus, **fields), name)
    return mgr.applied


@pytest.mark.parametrize("cpus, count", [(0.5, 1), (1.0, 1), (1.5, 2), (3.0, 3), (9.0, 4),
                                         (-1.0, 4)])
def test_a_quota_gets_ceil_cpus(monkeypatch, cpus, count):
    [cpuset] = spread(monkeypatch, cpus)
    assert len(cpuset.split(",")) == count
    assert set(map(int, cpuset.split(","))) <= {0, 1, 2, 3}


def test_containers_spread_and_wrap_around(monkeypatch):
    firsts = {spread(monkeypatch, 1.0, name=f"c{i}")[0] for i in range(40)}
    assert len(firsts) == 4                              # not every container on CPU 0
    picks = {spread(monkeypatch, 3.0, name=f"c{i}")[0] for i in range(40)}
    assert all(len(p.split(",")) == 3 for p in picks)    # a run past the last CPU wraps


def test_an_own_cpuset_or_no_quota_is_left_alone(monkeypatch):
    assert spread(monkeypatch, 1.0, cpuset_cpus="2-3") == []
    assert spread(monkeypatch, None) == []
    mgr = FakeManager()
    lxcfs.spread_cpus(mgr, Limits(cpus=1.0), "web", skip=["cpus"])
    assert mgr.applied == []


def test_no_cpuset_controller_keeps_the_quota_alone():
    lxcfs.spread_cpus(FakeManager(fail=True), Limits(cpus=1.0), "web")   # no error


# in a mount namespace of its own: a FUSE mount of type fuse.lxcfs (no daemon behind it;
# nothing reads through it) at a path with a space, then a bind of it elsewhere
ESCAPED_MOUNT = """
import os, sys
from ctrun.kernel import linux
from ctrun.libc import MS_BIND
from ctrun.runtime import lxcfs
mnt, bound = sys.argv[1:]
fd = os.open("/dev/fuse", os.O_RDWR)
linux.mount("lxcfs", mnt, "fuse.lxcfs", 0, f"fd={fd},rootmode=40000,user_id=0,group_id=0")
print(mnt in lxcfs._lxcfs_mounts(), lxcfs._in_use(mnt))
linux.mount(mnt, bound, None, MS_BIND)
print(lxcfs._in_use(mnt))
"""


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_mount_points_with_a_space_are_decoded(tmp_path):
    """mountinfo shows "my dir" as my\\040dir: an LXCFS there is found, and counts as in use
    only once another mount of it exists."""
    mnt, bound = tmp_path / "my dir" / "mnt", tmp_path / "my dir" / "bound"
    mnt.mkdir(parents=True)
    bound.mkdir()
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                        "-c", ESCAPED_MOUNT, str(mnt), str(bound)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "True"]
