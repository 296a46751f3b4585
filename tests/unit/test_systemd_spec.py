"""Detecting systemd as PID 1 in an image's layers, and what the spec then gives it: the
stop signal (unless --stop-signal says otherwise), container=ctrun, tmpfs mounts and a
machine-id of the container's own."""

import os

import pytest

from ctrun import config, spec
from ctrun.images.layers import View
from ctrun.runtime import systemd


def _exe(path, text="#!/bin/sh\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def image(tmp_path):
    """Two layers: the lower has Debian's usrmerge layout with /sbin/init -> systemd, the
    upper a busybox-style init and an init whose link points out of the image."""
    low, up = tmp_path / "low", tmp_path / "up"
    _exe(low / "usr/lib/systemd/systemd")
    (low / "usr/sbin").mkdir(parents=True)
    os.symlink("usr/lib", low / "lib")
    os.symlink("usr/sbin", low / "sbin")
    os.symlink("/lib/systemd/systemd", low / "usr/sbin/init")
    _exe(up / "bin/busybox")
    (up / "opt/bb").mkdir(parents=True)
    os.symlink("/bin/busybox", up / "opt/bb/init")
    (up / "opt/out").mkdir(parents=True)
    # on the host this would reach a systemd; in the image it climbs no higher than /
    _exe(tmp_path / "host/systemd")
    os.symlink("../../../host/systemd", up / "opt/out/init")
    return View([up, low])


@pytest.mark.parametrize("argv,want", [
    (["/sbin/init"], True), (["init"], True), (["/lib/systemd/systemd"], True),
    (["/usr/lib/systemd/systemd", "--unit=rescue.target"], True),
    (["/opt/bb/init"], False), (["/opt/out/init"], False), (["/bin/busybox"], False),
    (["/missing/init"], False), ([], False),
])
def test_detects_systemd_through_the_image_links(image, argv, want):
    assert systemd.is_systemd(image, argv, "/usr/sbin:/usr/bin") is want


def _build(tmp_path, image, **fields):
    cfg = config.Config(name="srv", **fields)
    return spec.build(cfg, {"cmd": ["/sbin/init"], "stop_signal": "SIGTERM"}, tmp_path,
                      image, [])


def test_spec_of_a_systemd_container(tmp_path, image):
    s = _build(tmp_path, image)
    ann = s["annotations"]
    assert ann["run.ctrun.stop_signal"] == "SIGRTMIN+3"   # not the image's SIGTERM
    assert ann["run.ctrun.systemd"] is True
    assert "container=ctrun" in s["process"]["env"]
    tmpfs = {m["destination"]: m["options"] for m in s["mounts"] if m["type"] == "tmpfs"}
    assert sorted(tmpfs) == ["/run", "/run/lock", "/tmp"]
    assert all({"nosuid", "nodev"} <= set(o) for o in tmpfs.values())
    assert "mode=755" in tmpfs["/run"]
    # the machine-id is made once and kept: a restart builds the same one
    mid = ann["run.ctrun.machine_id"]
    assert len(mid) == 32 and int(mid, 16) >= 0
    assert _build(tmp_path, image)["annotations"]["run.ctrun.machine_id"] == mid
    # not privileged for all that
    assert "CAP_SYS_ADMIN" not in s["process"]["capabilities"]["bounding"]
    assert s["process"]["noNewPrivileges"] and ann["run.ctrun.seccomp"] == "default"


def test_stop_signal_option_wins(tmp_path, image):
    s = _build(tmp_path, image, stop_signal="SIGPWR")
    assert s["annotations"]["run.ctrun.stop_signal"] == "SIGPWR"


def test_not_systemd_keeps_the_image_defaults(tmp_path, image):
    cfg = config.Config(name="bb", cmd=["/opt/bb/init"])
    s = spec.build(cfg, {"stop_signal": "SIGUSR1"}, tmp_path, image, [])
    assert s["annotations"]["run.ctrun.stop_signal"] == "SIGUSR1"
    assert "run.ctrun.systemd" not in s["annotations"]
    assert not [m for m in s["mounts"] if m["type"] == "tmpfs"]
    assert not any(e.startswith("container=") for e in s["process"]["env"])
    # under --init, tini is PID 1: systemd cannot boot there, nothing is set up for it
    s = spec.build(config.Config(name="t", init=True), {"cmd": ["/sbin/init"]}, tmp_path,
                   image, [])
    assert "run.ctrun.systemd" not in s["annotations"]


@pytest.fixture
def sysv(tmp_path):
    """An image whose /sbin/init is sysvinit's (its version mark inside); others named init
    that are not: a script, a FIFO planted in its place, a link leaving the image."""
    root = tmp_path / "sysv"
    _exe(root / "usr/sbin/init", "\x7fELF...INIT_VERSION=sysvinit-3.06\0...")
    os.symlink("usr/sbin", root / "sbin")
    _exe(root / "opt/plain/init")
    (root / "opt/fifo").mkdir(parents=True)
    os.mkfifo(root / "opt/fifo/init")
    _exe(tmp_path / "host/init", "INIT_VERSION=sysvinit-3.06")
    (root / "opt/out").mkdir(parents=True)
    os.symlink("../../../host/init", root / "opt/out/init")
    return View([root])


@pytest.mark.parametrize("argv,want", [
    (["/sbin/init"], "sysvinit"), (["init"], "sysvinit"), (["/opt/plain/init"], None),
    (["/opt/fifo/init"], None), (["/opt/out/init"], None),
])
def test_detects_sysvinit(sysv, argv, want):
    from ctrun.runtime import pid1
    assert pid1.kind(sysv, argv, "/usr/sbin:/usr/bin") == want


def test_spec_of_a_sysvinit_container(tmp_path, sysv):
    s = _build(tmp_path, sysv)
    ann = s["annotations"]
    assert (ann["run.ctrun.init"], ann["run.ctrun.halt"]) == ("sysvinit", "initctl")
    assert ann["run.ctrun.stop_signal"] == "SIGPWR" and "run.ctrun.systemd" not in ann
    assert sorted(m["destination"] for m in s["mounts"] if m["type"] == "tmpfs") == \
        ["/run", "/run/lock", "/tmp"]
    # CAP_SYS_BOOT: its halt's reboot(2) ends the container's PID namespace, nothing more
    caps = s["process"]["capabilities"]
    assert all("CAP_SYS_BOOT" in caps[k] for k in ("bounding", "effective", "permitted"))
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    for drop in (["CAP_SYS_BOOT"], ["ALL"]):
        s = _build(tmp_path, sysv, cap_drop=drop)
        assert "CAP_SYS_BOOT" not in s["process"]["capabilities"]["bounding"]
    # the user's stop signal replaces the runlevel request
    s = _build(tmp_path, sysv, stop_signal="SIGRTMIN+4")
    assert s["annotations"]["run.ctrun.stop_signal"] == "SIGRTMIN+4"
    assert not s["annotations"]["run.ctrun.halt"]



def test_enter_takes_roots_login_shell_from_the_container(tmp_path):
    from ctrun.backends.container import _root_login
    (tmp_path / "etc").mkdir()
    (tmp_path / "root").mkdir()
    _exe(tmp_path / "bin/bash")
    passwd = tmp_path / "etc/passwd"
    passwd.write_text("daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
                      "root:x:0:0:root:/root:/bin/bash\n")
    assert _root_login(str(tmp_path)) == ("/root", "/bin/bash")
    # what the container lacks or planted is not used: a missing shell or home, a FIFO
    passwd.write_text("root:x:0:0:root:/nohome:/bin/zsh\n")
    assert _root_login(str(tmp_path)) == ("/", "/bin/sh")
    passwd.unlink()
    os.mkfifo(passwd)
    assert _root_login(str(tmp_path)) == ("/", "/bin/sh")
