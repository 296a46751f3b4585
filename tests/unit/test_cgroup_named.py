"""The name=systemd hierarchy ctrun mounts for systemd containers on a cgroup v1 or hybrid
host that lacks one (a host not booted with systemd), from sample mountinfo; the mount
itself is a fake here."""

import errno

import pytest

from ctrun.cgroups import named
from ctrun.cgroups.detect import parse
from ctrun.errors import HostUnsupported
from test_cgroups import CENTOS7_V1, DEBIAN12_V2, THIS_HOST

# an OpenRC host: v1 controllers, no systemd
OPENRC_V1 = """\
25 18 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec - tmpfs cgroup_root rw,mode=755
26 25 0:22 / /sys/fs/cgroup/openrc rw,nosuid,nodev,noexec,relatime - cgroup openrc rw,release_agent=/lib/rc/sh/cgroup-release-agent.sh,name=openrc
27 25 0:23 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime - cgroup cpu rw,cpu
28 25 0:24 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup memory rw,memory
"""


def _drop_systemd(text):
    return "".join(x for x in text.splitlines(True) if "name=systemd" not in x)


@pytest.mark.parametrize("text,want", [
    (THIS_HOST, False), (CENTOS7_V1, False), (DEBIAN12_V2, False),
    (OPENRC_V1, True), (_drop_systemd(THIS_HOST), True),
])
def test_needed_only_on_v1_hosts_without_it(text, want):
    assert named.needed(parse(text)) is want


def test_ensure_mounts_it_once(tmp_path):
    calls = []
    point = tmp_path / "cg/systemd"
    mounted = named.ensure(parse(OPENRC_V1), lambda *a: calls.append(a), str(point))
    assert mounted and point.is_dir()
    assert calls == [("cgroup", str(point), "cgroup", 2 | 4 | 8, "none,name=systemd")]
    # what the host then shows is a layout with the hierarchy: nothing more to do
    after = OPENRC_V1 + ("29 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup "
                         "rw,name=systemd\n")
    assert not named.ensure(parse(after), lambda *a: calls.append(a), str(point))
    assert len(calls) == 1


def _failing(code):
    def mount(*a):
        raise OSError(code, "fake")
    return mount


def test_ensure_races_and_errors(tmp_path):
    point = str(tmp_path / "systemd")
    # a concurrent start mounted it first
    assert named.ensure(parse(OPENRC_V1), _failing(errno.EBUSY), point) is False
    with pytest.raises(HostUnsupported, match="name=systemd.*mount -t cgroup"):
        named.ensure(parse(OPENRC_V1), _failing(errno.EPERM), point)


def test_a_start_mounts_it_for_systemd_only(tmp_path, monkeypatch):
    """The container backend's start step: the hierarchy is mounted for a systemd image, not for others, and
    the cached layout is dropped so the container's cgroups include it."""
    import os
    from ctrun import config
    from ctrun.backends import container
    import importlib
    from ctrun.images.layers import View
    detect = importlib.import_module("ctrun.cgroups.detect")
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/systemd").write_text("")
    (tmp_path / "usr/lib/systemd/systemd").chmod(0o755)
    (tmp_path / "sbin").mkdir()
    os.symlink("/usr/lib/systemd/systemd", tmp_path / "sbin/init")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/sh").write_text("")
    (tmp_path / "bin/sh").chmod(0o755)
    calls, forgot = [], []
    monkeypatch.setattr(detect, "detect", lambda: parse(OPENRC_V1))
    monkeypatch.setattr(detect, "forget", lambda: forgot.append(1))
    monkeypatch.setattr(named, "ensure", lambda layout: calls.append(layout.kind) or True)
    icfg = {"cmd": ["/sbin/init"], "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
    container._systemd_hierarchy(config.Config(name="a", cmd=["/bin/sh"]), icfg, View([tmp_path]))
    assert calls == [] and forgot == []
    container._systemd_hierarchy(config.Config(name="a"), icfg, View([tmp_path]))
    assert calls == ["v1"] and forgot == [1]
