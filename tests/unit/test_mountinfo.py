"""mountinfo lines parsed into mounts: fixed fields, optional fields up to "-", escapes."""

import os
import subprocess
import sys

from ctrun import mountinfo
from ctrun.mountinfo import parse, unescape


def one(line):
    mounts = list(parse([line]))
    assert len(mounts) == 1, mounts
    return mounts[0]


def test_fields_of_a_line_without_optional_fields():
    m = one("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,errors=remount-ro\n")
    assert (m.mount_id, m.parent_id, m.dev, m.root, m.point, m.options) == \
        ("27", "1", "254:0", "/", "/", "rw,relatime")
    assert m.optional == ()
    assert (m.fstype, m.source, m.superopts) == ("ext4", "/dev/vda", "rw,errors=remount-ro")


def test_optional_fields_end_at_the_separator():
    m = one("61 25 0:52 / /mnt/x rw,nosuid shared:9 master:2 propagate_from:1 unbindable "
            "- tmpfs scratch rw,size=64k")
    assert m.optional == ("shared:9", "master:2", "propagate_from:1", "unbindable")
    assert (m.fstype, m.source, m.superopts) == ("tmpfs", "scratch", "rw,size=64k")


def test_escaped_paths_are_decoded_and_options_kept_raw():
    m = one(r"70 1 0:40 /sub\134dir /mnt/my\040dir\011tab\012nl rw shared:1 - "
            r"fuse.my\040fs my\040src rw,opt=a\054b")
    assert m.root == "/sub\\dir"
    assert m.point == "/mnt/my dir\ttab\nnl"
    assert (m.fstype, m.source) == ("fuse.my fs", "my src")
    assert m.superopts == r"rw,opt=a\054b"     # a decoded \054 would read as a separator


def test_a_mount_point_or_root_named_like_the_separator_is_no_separator():
    m = one("80 1 0:41 - /- rw - tmpfs - rw")
    assert (m.root, m.point, m.fstype, m.source, m.superopts) == ("-", "/-", "tmpfs", "-", "rw")
    m = one("81 1 0:41 / - rw master:3 - tmpfs none rw")
    assert (m.point, m.optional, m.fstype) == ("-", ("master:3",), "tmpfs")


def test_an_empty_source_keeps_the_fields_after_it_in_place():
    m = one("82 1 0:42 / /mnt rw - tmpfs  rw,size=4k\n")
    assert (m.fstype, m.source, m.superopts) == ("tmpfs", "", "rw,size=4k")


def test_lines_that_are_no_mount_record_are_skipped():
    lines = ["", "garbage", "1 2 3 4 5 6 7 8 9",          # no separator
             "27 1 254:0 / / rw - ext4 /dev/vda",          # a field missing after it
             "27 1 254:0 / - ext4 /dev/vda rw",            # fixed fields missing before it
             "27 1 254:0 / / rw - ext4 /dev/vda rw"]
    assert [m.point for m in parse(lines)] == ["/"]


def test_unescape_keeps_what_is_no_octal_escape():
    assert unescape("/plain") == "/plain"
    assert unescape(r"/a\040b\134\040c") == "/a b\\ c"
    assert unescape("/x\\9yz\\04") == "/x\\9yz\\04"
    assert unescape("\\\\040") == "\\ "


def test_this_process_mountinfo_parses_every_line():
    with open("/proc/self/mountinfo") as f:
        text = f.read()
    mounts = list(parse(text.splitlines()))
    assert len(mounts) == len(text.splitlines())
    assert any(m.point == "/" for m in mounts)
    assert all(m.dev.count(":") == 1 for m in mounts)


def test_a_mount_point_with_a_space_and_a_tab_reads_back_decoded(tmp_path):
    """The kernel's own escapes, from a mount made in a mount namespace of the test's own
    (gone with its shell: nothing to clean up on the host)."""
    point = tmp_path / "my dir\tx"
    point.mkdir()
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          'mount -t tmpfs "ctrun test" "$1" && cat /proc/self/mountinfo',
                          "sh", str(point)], capture_output=True, text=True, check=True).stdout
    assert "my\\040dir\\011x" in out
    mine = [m for m in parse(out.splitlines()) if m.point == str(point)]
    assert [(m.fstype, m.source) for m in mine] == [("tmpfs", "ctrun test")]


def test_importing_it_imports_nothing_else():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ctrun.mountinfo"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(
                             os.path.dirname(os.path.abspath(mountinfo.__file__)))}).stderr
    names = [ln.split("|")[-1].strip() for ln in out.splitlines() if "|" in ln]
    after = names[names.index("site") + 1:] if "site" in names else names
    assert set(after) <= {"ctrun", "ctrun.mountinfo"}, after
