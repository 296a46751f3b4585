"""rootfs.null_device: masking binds only the real null device; the read-only walk of a
volume's mounts (Linux < 5.12) finds them by mountinfo's escaped paths."""

import os
import stat
import subprocess
import sys

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


# in a mount namespace of its own: tmpfs mounts at "my vol", "my vol/in ner" and a sibling
# "my vol2", then the walk of "my vol"; prints which of the three are read-only
READONLY_WALK = """
import os, sys
from ctrun.kernel import linux
from ctrun.runtime import rootfs
top = sys.argv[1]
points = (top, os.path.join(top, "in ner"), top + "2")
for p in points:
    os.makedirs(p, exist_ok=True)
    linux.mount("t", p, "tmpfs", 0, None)
rootfs._readonly_walk(top)
print(*(bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in points))
"""


def test_the_readonly_walk_remounts_mounts_below_a_path_with_spaces(tmp_path):
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                        "-c", READONLY_WALK, str(tmp_path / "my vol")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "False"]
