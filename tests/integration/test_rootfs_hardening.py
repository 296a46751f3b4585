"""The container's file system keeps its promises below the surface: a read-only volume is
read-only in every mount it holds, and masking binds the real null device."""

import errno
import subprocess

import pytest


@pytest.fixture
def vol_with_submount(tmp_path):
    """A host directory with a tmpfs mounted below it (unmounted afterwards)."""
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "ctrun-test-sub", str(vol / "sub")],
                   check=True)
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol / "sub")], check=True)


@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
def test_a_readonly_volume_is_readonly_in_its_submounts(cli, vol_with_submount, userns):
    r = cli("run", "--rm", *(["--userns"] if userns else []), "-v",
            f"{vol_with_submount}:/v:ro", "busybox", "--", "sh", "-c",
            "touch /v/sub/x; grep ' /v/sub ' /proc/mounts")
    assert "touch: /v/sub/x: Read-only file system" in r.stderr, r.stderr
    assert " ro," in r.stdout, r.stdout
    assert not (vol_with_submount / "sub/x").exists()


def test_a_readonly_volume_without_mount_setattr_is_remounted_one_by_one(
        ct, vol_with_submount, tmp_path, monkeypatch):
    """Before Linux 5.12 (simulated: mount_setattr gives ENOSYS) every mount of the volume
    is remounted read-only after pivot_root, top and submount alike."""
    from ctrun.kernel import linux

    def enosys(fd):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setattr(linux, "set_readonly_tree", enosys)
    out = tmp_path / "out"
    out.mkdir()
    ct.create("old", volumes=[f"{vol_with_submount}:/v:ro", f"{out}:/out"],
              cmd=["sh", "-c", "touch /v/sub/x /v/y 2>/out/err; grep ' /v' /proc/mounts "
                               ">/out/mounts"])
    ct._run_attached("old", False, False)
    err = (out / "err").read_text()
    assert "touch: /v/sub/x: Read-only file system" in err, err
    assert "touch: /v/y: Read-only file system" in err, err
    assert not (vol_with_submount / "sub/x").exists() and not (vol_with_submount / "y").exists()


def test_masked_files_show_the_null_device_whatever_covers_dev_null(cli, tmp_path):
    """A volume over /dev/null (here a file the container could have written in an earlier
    run) used to be what masking bound over /proc's host-state files."""
    fake = tmp_path / "fake-null"
    fake.write_text("NOT THE NULL DEVICE\n")
    r = cli("run", "--rm", "-v", f"{fake}:/dev/null", "busybox", "--", "sh", "-c",
            "cat /proc/timer_list /proc/keys; stat -c '%F %t:%T' /proc/keys")
    assert r.returncode == 0, r.stderr
    assert "NOT THE NULL DEVICE" not in r.stdout
    assert r.stdout.strip() == "character special file 1:3", r.stdout
