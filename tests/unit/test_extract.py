"""Layer extraction against hand-made hostile tarballs.

Every hostile case runs in a sandbox: tmp_path/box holds dest and a sentinel directory
"outside" that escapes aim at; the whole box (minus dest) is snapshotted before and after, so a
single byte written outside dest fails the test.  No real host path is ever a target.
"""

import bz2
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

from ctrun.errors import HostUnsupported, InvalidInput
from ctrun.images import extract
from ctrun.images.extract import extract_layer, verify_tree

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# -- building layers -------------------------------------------------------------------------

def F(name, data=b"", mode=0o644, **kw):
    return dict(kind=tarfile.REGTYPE, name=name, data=data, mode=mode, **kw)


def D(name, mode=0o755, **kw):
    return dict(kind=tarfile.DIRTYPE, name=name, mode=mode, **kw)


def S(name, target, **kw):
    return dict(kind=tarfile.SYMTYPE, name=name, linkname=target, mode=0o777, **kw)


def L(name, target, **kw):
    return dict(kind=tarfile.LNKTYPE, name=name, linkname=target, mode=0o644, **kw)


def layer(entries, fmt=tarfile.PAX_FORMAT):
    """Tar bytes with names written exactly as given (tarfile does not normalize on write)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            e = dict(e)
            data = e.pop("data", b"")
            ti = tarfile.TarInfo(e.pop("name"))
            ti.type = e.pop("kind")
            ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
            ti.mtime = e.pop("mtime", 1_600_000_000)
            for k, v in e.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def tree(root, skip=None):
    """Everything under root (not following symlinks): type, mode, size, mtime, content."""
    out = {}
    for d, dirs, files in os.walk(root):
        if skip and d == skip:
            dirs[:] = []
            continue
        for n in dirs + files:
            p = os.path.join(d, n)
            if p == skip:
                out[p] = "dest"
                continue
            st = os.lstat(p)
            rec = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                   st.st_nlink, st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    rec += (hashlib.sha256(f.read()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(p),)
            out[p] = rec
    return out


class Box:
    def __init__(self, tmp_path):
        self.top = tmp_path / "box"
        self.dest = self.top / "dest"
        self.outside = self.top / "outside"
        self.dest.mkdir(parents=True)
        self.outside.mkdir()
        (self.outside / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
        (self.outside / "sub").mkdir()
        self.n = 0
        self.before = self.snapshot()

    def snapshot(self):
        return tree(str(self.top), skip=str(self.dest)), sorted(os.listdir(self.top.parent))

    def path(self, data, suffix=".tar"):
        self.n += 1
        p = self.top.parent / f"layer{self.n}{suffix}"
        p.write_bytes(data)
        self.before = (self.before[0], sorted(os.listdir(self.top.parent)))
        return p

    def apply(self, entries, **kw):
        return extract_layer(self.path(layer(entries)), self.dest, **kw)

    def untouched(self):
        assert self.snapshot() == self.before, "something outside dest changed"


@pytest.fixture
def box(tmp_path):
    b = Box(tmp_path)
    yield b
    b.untouched()


def refused(box, entries, match, **kw):
    with pytest.raises(InvalidInput, match=match) as e:
        box.apply(entries, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# -- hostile names ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../outside/passwd", "a/.."])
def test_dotdot_components_refused(box, name):
    msg = refused(box, [D("a"), F(name, b"pwned")], r"'\.\.' component")
    assert name in msg
    assert not (box.top / "evil").exists()


def test_absolute_names_are_made_relative(box):
    abs_in_box = str(box.outside / "passwd")
    st = box.apply([F("/abs/file", b"1"), F(abs_in_box, b"pwned"), D("/")])
    assert (box.dest / "abs/file").read_bytes() == b"1"
    assert (box.dest / abs_in_box.lstrip("/")).read_bytes() == b"pwned"
    assert st["files"] == 2


def test_long_path_refused(box):
    refused(box, [F("a/" * 2100 + "f")], "longer than")


def test_removing_a_very_deep_tree_refused(box):
    try:
        box.apply([F("a/" * 1500 + "f", b"deep")])
        refused(box, [F(".wh.a")], "nested too deeply")
    finally:   # too deep for shutil.rmtree, and so for pytest's own clean-up
        subprocess.run(["rm", "-rf", str(box.dest / "a")], check=True)


# -- symlinks --------------------------------------------------------------------------------

def test_escaping_symlinks_are_created_but_not_followed(box):
    st = box.apply([S("abs", str(box.outside)), S("rel", "../outside"),
                    S("deep", "../../../../..")])
    assert os.readlink(box.dest / "abs") == str(box.outside)
    assert os.readlink(box.dest / "rel") == "../outside"
    assert st["symlinks"] == 3
    assert verify_tree(box.dest) == 3


@pytest.mark.parametrize("target", ["ABS", "../outside", "../../box/outside", "../../../../.."])
@pytest.mark.parametrize("two_layers", [False, True])
def test_file_through_symlink_refused(box, target, two_layers):
    target = str(box.outside) if target == "ABS" else target
    link, through = S("etc", target), F("etc/passwd", b"pwned")
    if two_layers:
        box.apply([link])
        msg = refused(box, [through], "beneath the symlink 'etc'")
    else:
        msg = refused(box, [link, through], "beneath the symlink 'etc'")
    assert "etc/passwd" in msg


@pytest.mark.parametrize("member", [D("etc/sub"), S("etc/s", "x"), F("etc/sub/deeper/f"),
                                    L("etc/h", "f")])
def test_nothing_is_created_through_symlinks(box, member):
    box.apply([S("etc", str(box.outside)), F("f")])
    refused(box, [member], "beneath the symlink 'etc'")


def test_symlink_to_a_dir_inside_is_still_refused(box):
    # even a harmless in-image symlink is not followed: the layer must name real paths
    box.apply([D("usr/bin"), S("bin", "usr/bin")])
    refused(box, [F("bin/sh", b"x")], "beneath the symlink 'bin'")


def test_member_at_a_symlink_replaces_it(box):
    box.apply([S("f", str(box.outside / "passwd")), S("d", str(box.outside))])
    box.apply([F("f", b"new"), D("d"), F("d/x", b"in")])
    assert not (box.dest / "f").is_symlink() and (box.dest / "f").read_bytes() == b"new"
    assert not (box.dest / "d").is_symlink() and (box.dest / "d/x").read_bytes() == b"in"


def test_file_under_a_file_refused(box):
    refused(box, [F("a", b"x"), F("a/b", b"y")], "beneath the non-directory 'a'")


# -- hardlinks -------------------------------------------------------------------------------

@pytest.mark.parametrize("target,match", [
    ("/etc/passwd", "not in the image"),
    ("OUTSIDE", "not in the image"),
    ("../outside/passwd", r"'\.\.' component in its hardlink target"),
    ("a/../../outside/passwd", r"'\.\.' component"),
    ("missing", "not in the image"),
    ("dir", "not a regular file"),
    ("sym", "not a regular file"),
    ("h", "the member itself"),
    ("", "the member itself"),
])
def test_bad_hardlinks_refused(box, target, match):
    target = str(box.outside / "passwd") if target == "OUTSIDE" else target
    before = os.stat("/etc/passwd").st_nlink
    refused(box, [D("dir"), S("sym", "/etc/passwd"), L("h", target)], match)
    assert os.stat("/etc/passwd").st_nlink == before


def test_hardlink_beneath_symlink_refused(box):
    refused(box, [S("s", str(box.outside)), L("h", "s/passwd")],
            "is a hardlink to 's/passwd', beneath the symlink 's'")


def test_hardlinks_inside(box):
    st = box.apply([F("a/t", b"data", mode=0o600), L("h", "a/t"), L("h2", "/a/t")])
    assert os.stat(box.dest / "h").st_ino == os.stat(box.dest / "a/t").st_ino
    assert os.stat(box.dest / "a/t").st_nlink == 3
    assert st["hardlinks"] == 2
    # a later layer overwriting one name must not write through the shared inode
    box.apply([F("h", b"new")])
    assert (box.dest / "a/t").read_bytes() == b"data"
    assert (box.dest / "h2").read_bytes() == b"data"
    # and lower layers' files can be linked to
    box.apply([L("h3", "a/t")])
    assert os.stat(box.dest / "h3").st_ino == os.stat(box.dest / "a/t").st_ino


# -- special files, modes, owners ------------------------------------------------------------

def dev(name, kind, major=0, minor=0):
    return dict(kind=kind, name=name, mode=0o666, devmajor=major, devminor=minor)


def test_devices_skipped_unless_trusted(box):
    st = box.apply([dev("dev/null", tarfile.CHRTYPE, 1, 3), dev("dev/sda", tarfile.BLKTYPE, 8, 0),
                    dev("run/fifo", tarfile.FIFOTYPE)])
    assert not (box.dest / "dev/null").exists() and not (box.dest / "dev/sda").exists()
    assert not (box.dest / "run").exists()
    assert len(st["skipped"]) == 3 and "dev/null" in st["skipped"][0]
    assert st["devices"] == 0


@needs_root
def test_devices_created_when_trusted(box):
    st = box.apply([dev("dev/null", tarfile.CHRTYPE, 1, 3), dev("run/fifo", tarfile.FIFOTYPE),
                    dev("dev/loop9", tarfile.BLKTYPE, 7, 9)], trusted=True)
    s = os.lstat(box.dest / "dev/null")
    assert stat.S_ISCHR(s.st_mode) and s.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(s.st_mode) == 0o666
    assert stat.S_ISFIFO(os.lstat(box.dest / "run/fifo").st_mode)
    assert stat.S_ISBLK(os.lstat(box.dest / "dev/loop9").st_mode)
    assert st["devices"] == 3 and st["skipped"] == []


@needs_root
def test_setuid_kept_or_stripped(box):
    entries = [F("su", b"x", mode=0o4755), F("sg", b"x", mode=0o2711), D("shared", mode=0o2775)]
    box.apply(entries)
    assert stat.S_IMODE(os.stat(box.dest / "su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(box.dest / "sg").st_mode) == 0o2711
    box.apply(entries, strip_setuid=True)
    assert stat.S_IMODE(os.stat(box.dest / "su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(box.dest / "sg").st_mode) == 0o711
    assert stat.S_IMODE(os.stat(box.dest / "shared").st_mode) == 0o2775   # dirs keep setgid


@needs_root
def test_owner_mode_mtime_preserved(box):
    box.apply([D("./", mode=0o755, mtime=1_000_000_000),
               D("d", mode=0o750, uid=1234, gid=5678, mtime=1_100_000_000),
               F("d/f", b"abc", mode=0o640, uid=1001, gid=1002, mtime=1_200_000_000),
               S("d/s", "f", uid=7, gid=8, mtime=1_300_000_000)])
    d, f, s = (os.lstat(box.dest / p) for p in ("d", "d/f", "d/s"))
    assert (d.st_uid, d.st_gid, stat.S_IMODE(d.st_mode)) == (1234, 5678, 0o750)
    assert d.st_mtime == 1_100_000_000    # set after d/f and d/s were written into it
    assert (f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode), f.st_mtime) == (1001, 1002, 0o640,
                                                                         1_200_000_000)
    assert (s.st_uid, s.st_gid, s.st_mtime) == (7, 8, 1_300_000_000)
    root = os.stat(box.dest)
    assert stat.S_IMODE(root.st_mode) == 0o755 and root.st_mtime == 1_000_000_000


def test_directory_over_directory_merges(box):
    box.apply([D("d"), F("d/old", b"1")])
    box.apply([D("d", mode=0o700), F("d/new", b"2")])
    assert sorted(os.listdir(box.dest / "d")) == ["new", "old"]
    assert stat.S_IMODE(os.stat(box.dest / "d").st_mode) == 0o700


def test_non_directory_replaces_directory(box):
    box.apply([D("d/e"), F("d/e/f")])
    box.apply([S("d", "elsewhere")])
    assert os.readlink(box.dest / "d") == "elsewhere"


def test_implicit_parents_created(box):
    st = box.apply([F("a/b/c/f", b"x")])
    assert stat.S_IMODE(os.stat(box.dest / "a/b").st_mode) == 0o755
    assert st["dirs"] == 3 and st["files"] == 1 and st["bytes"] == 1


# -- whiteouts -------------------------------------------------------------------------------

def test_whiteouts_and_opaque_dirs(box):
    box.apply([D("a"), F("a/x", b"x"), F("a/y", b"y"), D("b"), F("b/z"),
               D("c"), F("c/k"), D("c/sub"), F("c/sub/deep"), D("e"), F("e/old")])
    st = box.apply([F("a/.wh.x"), F(".wh.b"), D("c"), F("c/.wh..wh..opq"), F("c/new", b"n"),
                    F("e/kept", b"k"), F("e/.wh..wh..opq"),   # marker after this layer's entry
                    F("f/.wh.nothing")])                      # whiteout in a missing dir
    assert sorted(os.listdir(box.dest)) == ["a", "c", "e"]
    assert os.listdir(box.dest / "a") == ["y"]
    assert os.listdir(box.dest / "c") == ["new"]
    assert os.listdir(box.dest / "e") == ["kept"]
    assert st["whiteouts"] == 5 and st["files"] == 2


def test_opaque_keeps_this_layers_subtrees(box):
    box.apply([D("c/sub"), F("c/sub/lower"), F("c/gone")])
    box.apply([F("c/sub/upper"), F("c/.wh..wh..opq")])
    assert os.listdir(box.dest / "c") == ["sub"]
    assert os.listdir(box.dest / "c/sub") == ["upper"]


def test_opaque_keeps_lower_parents_of_this_layers_files(box):
    box.apply([D("c/sub"), F("c/sub/lower"), F("c/gone")])
    box.apply([F("c/sub/new/f", b"x"), F("c/.wh..wh..opq")])
    assert os.listdir(box.dest / "c") == ["sub"]
    assert os.listdir(box.dest / "c/sub") == ["new"]
    assert (box.dest / "c/sub/new/f").read_bytes() == b"x"


def test_whiteout_spares_same_layer_entries(box):
    box.apply([F("x", b"lower")])
    box.apply([F("x", b"upper"), F(".wh.x")])
    assert (box.dest / "x").read_bytes() == b"upper"


def test_opaque_root(box):
    box.apply([F("old"), D("dir"), F("dir/f")])
    box.apply([F("new"), F(".wh..wh..opq")])
    assert os.listdir(box.dest) == ["new"]


@pytest.mark.parametrize("name", ["l/.wh.passwd", "l/.wh..wh..opq", "l/sub/.wh.x"])
def test_whiteouts_through_symlinks_refused(box, name):
    box.apply([S("l", str(box.outside))])
    refused(box, [F(name)], "beneath the symlink 'l'")


@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh."])
def test_bad_whiteout_names_refused(box, name):
    refused(box, [F(name)], "invalid name")


def test_whiteout_of_symlink_removes_only_the_link(box):
    box.apply([S("l", str(box.outside)), S("p", str(box.outside / "passwd"))])
    box.apply([F(".wh.l"), F(".wh.p")])
    assert os.listdir(box.dest) == []


# -- compression, sources, corruption --------------------------------------------------------

SAMPLE = [D("etc"), F("etc/hostname", b"box\n"), F("bin/big", os.urandom(300_000))]


def zstd_bytes(data):
    if not shutil.which("zstd"):
        pytest.skip("needs the zstd tool to make test data")
    return subprocess.run(["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE,
                          check=True).stdout


def check_sample(box, st):
    assert (box.dest / "etc/hostname").read_bytes() == b"box\n"
    assert st["files"] == 2 and st["bytes"] == 300_004


@pytest.mark.parametrize("kind", ["none", "gzip", "xz", "bzip2"])
def test_compressions(box, kind):
    raw = layer(SAMPLE)
    data = {"none": raw, "gzip": gzip.compress(raw), "xz": lzma.compress(raw),
            "bzip2": bz2.compress(raw)}[kind]
    check_sample(box, extract_layer(box.path(data), box.dest))
    shutil.rmtree(box.dest / "etc")
    check_sample(box, extract_layer(io.BytesIO(data), box.dest, compression=kind))


def test_zstd_through_the_tool(box, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)     # import fails
    data = zstd_bytes(layer(SAMPLE))
    check_sample(box, extract_layer(io.BytesIO(data), box.dest, compression="zstd"))
    bad = data[:len(data) // 2]
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        extract_layer(box.path(bad), box.dest)


def test_zstd_through_the_module(box):
    pytest.importorskip("zstandard")
    data = zstd_bytes(layer(SAMPLE))
    check_sample(box, extract_layer(box.path(data), box.dest))
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        extract_layer(box.path(data[:len(data) // 2]), box.dest)


def test_zstd_unsupported(box, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setattr(extract.shutil, "which", lambda name: None)
    with pytest.raises(HostUnsupported, match="apt-get install zstd"):
        extract_layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 20), box.dest)


def test_declared_compression_must_match(box):
    with pytest.raises(InvalidInput, match="declared gzip-compressed but its content is not"):
        extract_layer(io.BytesIO(layer(SAMPLE)), box.dest, compression="gzip")
    with pytest.raises(InvalidInput, match="unknown compression"):
        extract_layer(io.BytesIO(layer(SAMPLE)), box.dest, compression="lz4")


def cut_at_member_boundary(raw):
    # the offset just after etc/hostname's data: a valid prefix with no end-of-archive block
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        m = tf.getmember("bin/big")
    return raw[:m.offset]


@pytest.mark.parametrize("how", ["mid-data", "mid-header", "no-eof-marker", "gzip-cut",
                                 "gzip-crc", "xz-cut", "garbage", "garbage-after-member",
                                 "empty", "huge-pax"])
def test_truncated_or_corrupt(box, how):
    raw = layer(SAMPLE)
    gz = gzip.compress(raw)
    data = {
        "mid-data": raw[:len(raw) // 2],
        "mid-header": cut_at_member_boundary(raw) + raw[:100],
        "no-eof-marker": cut_at_member_boundary(raw),
        "gzip-cut": gz[:len(gz) - 20],
        "gzip-crc": gz[:-8] + bytes(b ^ 0xff for b in gz[-8:-4]) + gz[-4:],
        "xz-cut": lzma.compress(raw)[:-30],
        "garbage": os.urandom(5000),
        "garbage-after-member": cut_at_member_boundary(raw) + b"x" * 2048,
        "empty": b"",
        "huge-pax": layer([F("f", b"1", pax_headers={"comment": "x" * (2 << 20)})]),
    }[how]
    src = box.path(data)
    with pytest.raises(InvalidInput, match=f"layer {src} is truncated or corrupt: ") as e:
        extract_layer(src, box.dest)
    assert "\n" not in str(e.value)


def test_empty_layer_is_fine(box):
    assert extract_layer(io.BytesIO(b"\0" * 1024), box.dest)["files"] == 0


def test_unsupported_member_types_skipped(box):
    st = box.apply([dict(kind=b"Z", name="odd", data=b""), F("ok")])
    assert st["files"] == 1 and "unsupported member type" in st["skipped"][0]


def test_gnu_long_names_and_pax(box):
    long = "d/" + "n" * 200 + "/" + "f" * 150
    extract_layer(io.BytesIO(layer([F(long, b"gnu")], fmt=tarfile.GNU_FORMAT)), box.dest)
    assert (box.dest / long).read_bytes() == b"gnu"
    box.apply([S("s", "t" * 300), F("ü/ñ", b"utf8")])
    assert os.readlink(box.dest / "s") == "t" * 300
    assert (box.dest / "ü/ñ").read_bytes() == b"utf8"


def test_many_members_and_fd_cache(box):
    entries = [F(f"d{i % 150}/sub/f{i}", b"%d" % i) for i in range(1500)]
    st = box.apply(entries)
    assert st["files"] == 1500 and st["dirs"] == 300
    assert (box.dest / "d7/sub/f1057").read_bytes() == b"1057"
    before = len(os.listdir("/proc/self/fd"))
    box.apply(entries[:10])
    assert len(os.listdir("/proc/self/fd")) == before   # no descriptor leaked


def test_no_fd_leak_on_refusal(box):
    box.apply([D("a/b/c"), S("a/b/c/l", "/")])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        refused(box, [F("a/b/c/l/x")], "beneath the symlink")
    assert len(os.listdir("/proc/self/fd")) == before


def test_missing_dest(tmp_path):
    from ctrun.errors import NotFound
    with pytest.raises(NotFound):
        extract_layer(io.BytesIO(layer(SAMPLE)), tmp_path / "nope")


def test_verify_tree(box):
    box.apply([D("a/b"), F("a/b/f"), S("out", str(box.outside)), S("up", "../..")])
    assert verify_tree(box.dest) == 5      # a, a/b, a/b/f, out, up: links are not walked


@pytest.mark.parametrize("entry", [
    F("x", pax_headers={"path": "a\0b"}),
    S("s", "x", pax_headers={"linkpath": "/etc\0passwd"}),
    F("u", pax_headers={"uid": str(1 << 40)}),
    F("g", pax_headers={"gid": "-7"}),
])
def test_invalid_header_fields_refused(box, entry):
    refused(box, [entry], "invalid header field", trusted=True)
