"""Which cpuset --cpus gives (so nproc says N), and mountinfo's escaped mount points."""

import os

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


def test_mount_points_are_unescaped():
    assert lxcfs._unescape(r"/run/my\040dir/mnt") == "/run/my dir/mnt"
    assert lxcfs._unescape("/var/lib/lxcfs") == "/var/lib/lxcfs"
