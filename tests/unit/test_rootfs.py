"""rootfs.null_device: masking binds only the real null device."""

import os
import stat

import pytest

from ctrun.errors import ContainerFailed
from ctrun.runtime.rootfs import null_device


def _check(d, name):
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = null_device(dfd, name)
    finally:
        os.close(dfd)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def test_the_null_device_is_taken():
    st = _check("/dev", "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_a_regular_file_standing_in_is_refused(tmp_path):
    (tmp_path / "null").write_text("not a device\n")
    with pytest.raises(ContainerFailed, match="not the null device"):
        _check(tmp_path, "null")


def test_a_symlink_to_the_null_device_is_refused(tmp_path):
    """The check is on what the name itself is: a link is not followed to a device."""
    os.symlink("/dev/null", tmp_path / "null")
    with pytest.raises(ContainerFailed, match="not the null device"):
        _check(tmp_path, "null")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod)")
def test_another_character_device_is_refused(tmp_path):
    os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    with pytest.raises(ContainerFailed, match="not the null device"):
        _check(tmp_path, "null")
