"""Layers as overlayfs lower directories: per-layer extraction (whiteout markers, opaque
xattrs), the merged view resolved in Python against the one the kernel mounts, hostile
layer stacks, and the store's sharing and reference counting."""

import hashlib
import os
import stat

import pytest

from ctrun.errors import InvalidInput
from ctrun.images import layers
from ctrun.images.extract import extract_layer
from ctrun.images.layers import View
from ctrun.runtime import paths

from test_extract import D, F, L, S, box, layer  # noqa: F401 - box is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts need mknod and trusted "
                                                          "xattrs: root")


class Stack:
    """Layers extracted one directory each under box.dest (so the box's check that nothing
    outside dest changed still holds)."""

    def __init__(self, box):
        self.box, self.dirs = box, []     # bottom first

    def add(self, entries, **kw):
        d = self.box.dest / f"l{len(os.listdir(self.box.dest))}"   # refused ones stay
        d.mkdir()
        st = extract_layer(self.box.path(layer(entries)), d, overlay=True, **kw)
        self.dirs.append(d)
        return st

    def top_first(self):
        return list(reversed(self.dirs))

    def view(self):
        return View(self.top_first())

    def kernel(self):
        """{path: (kind, content or link)} of the merged view the kernel mounts."""
        out = {}

        def walk(root):
            for d, dirs, files in os.walk(root):
                for n in dirs + files:
                    p = os.path.join(d, n)
                    rel = os.path.relpath(p, root)
                    st = os.lstat(p)
                    out[rel] = (os.readlink(p) if stat.S_ISLNK(st.st_mode) else
                                open(p, "rb").read() if stat.S_ISREG(st.st_mode) else "dir")
            # the child's result travels back through a file
            with open(self.box.top.parent / "kernel-view", "w") as f:
                f.write(repr(out))
        layers.merged(self.top_first(), walk, self.box.top.parent / "scratch")
        result = eval((self.box.top.parent / "kernel-view").read_text())
        os.unlink(self.box.top.parent / "kernel-view")
        return result

    def python(self):
        """The same map, built through View lookups of every path the kernel shows."""
        v = self.view()
        out = {}
        for rel in self.kernel():
            fd = v.open(rel, os.O_PATH | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = os.readlink("", dir_fd=fd)
                elif stat.S_ISREG(st.st_mode):
                    out[rel] = open(paths.fd_path(fd), "rb").read()
                else:
                    out[rel] = "dir"
            finally:
                os.close(fd)
        return out


@pytest.fixture
def stack(box):
    s = Stack(box)
    yield s
    (box.top.parent / "scratch").rmdir()  if (box.top.parent / "scratch").exists() else None


def test_whiteouts_and_opaque_dirs_become_markers(stack):
    stack.add([D("a"), F("a/x", b"x"), F("a/y", b"y"), D("b"), F("b/z"),
               D("c"), F("c/k"), D("c/sub"), F("c/sub/deep"), D("e"), F("e/old")])
    st = stack.add([F("a/.wh.x"), F(".wh.b"), D("c"), F("c/.wh..wh..opq"), F("c/new", b"n"),
                    F("e/kept", b"k"), F("e/.wh..wh..opq")])
    top = stack.dirs[1]
    wh = os.lstat(top / "a/x")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(top / "c", layers.OPAQUE_XATTR) == b"y"
    assert st["whiteouts"] == 4
    merged = stack.kernel()
    assert sorted(k for k in merged if "/" not in k) == ["a", "c", "e"]
    assert merged["a/y"] == b"y" and "a/x" not in merged and "b/z" not in merged
    assert sorted(k for k in merged if k.startswith("c/")) == ["c/new"]
    assert sorted(k for k in merged if k.startswith("e/")) == ["e/kept"]
    assert stack.python() == merged


def test_same_layer_whiteout_and_entry(stack):
    stack.add([F("x", b"lower"), D("d"), F("d/old"), D("e"), F("e/old")])
    stack.add([F("x", b"upper"), F(".wh.x"),       # the entry of this layer stays
               F(".wh.d"), D("d"), F("d/new"),     # deleted, then made anew: opaque
               D("e"), F("e/new"), F(".wh.e")])    # made, then the lower one deleted
    merged = stack.kernel()
    assert merged["x"] == b"upper"
    assert sorted(k for k in merged if k[:2] in ("d/", "e/")) == ["d/new", "e/new"]
    assert stack.python() == merged


def test_layered_symlink_trick_writes_nothing_outside(stack, box):
    stack.add([S("etc", str(box.outside)), S("rel", "../../outside"), F("f")])
    stack.add([F("etc/passwd", b"image's own"), F("rel/sub/x", b"in")])
    # each layer has its own directory: the later files are inside it, and in the merged
    # view etc is that directory, which hides the symlink below it rather than following it
    merged = stack.kernel()
    assert merged["etc"] == "dir" and merged["etc/passwd"] == b"image's own"
    assert merged["rel/sub/x"] == b"in"
    assert stack.python() == merged
    assert (box.outside / "passwd").read_bytes().startswith(b"root:x:0:0")


def test_view_keeps_symlinks_inside_the_image(stack, box):
    stack.add([D("usr/bin"), S("bin", "usr/bin"), S("up", "../../../.."),
               S("abs", str(box.outside)), S("loop", "loop")])
    stack.add([F("usr/bin/sh", b"#!", mode=0o755), F("usr/lib/x")])
    v = stack.view()
    fd = v.open("/bin/sh", os.O_RDONLY)
    assert os.read(fd, 2) == b"#!"
    os.close(fd)
    assert paths.lookup_command(v, "sh", "/bin") == "/bin/sh"
    fd = v.open("up/usr/lib/x")               # ".." stops at the image's root
    os.close(fd)
    for p in ("abs/passwd", "up/outside/passwd", "../outside/passwd"):
        with pytest.raises(FileNotFoundError):
            v.open(p)
    with pytest.raises(InvalidInput, match="symbolic links"):
        v.open("loop")
    with pytest.raises(InvalidInput, match="not a directory"):
        v.open("usr/lib/x/y")


def test_diff_id_is_computed_and_checked(box):
    data = layer([F("a", b"x")])
    st = extract_layer(box.path(data), box.dest, overlay=True)
    assert st["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(InvalidInput, match="does not match its diff_id"):
        extract_layer(box.path(data), box.dest, overlay=True, diff_id="sha256:" + "0" * 64)


def test_hostile_members_still_refused_per_layer(stack, box):
    stack.add([S("l", str(box.outside))])
    for entries in ([S("l2", str(box.outside)), F("l2/x")], [L("h", "../outside/passwd")],
                    [F("l2/../../outside/x")]):
        with pytest.raises(InvalidInput):
            stack.add(entries)


# -- the store: sharing and reference counting -------------------------------------------------

def _image(st, name, tars):
    from ctrun.images import store as images

    def fill(stage):
        for data in tars:
            diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
            if layers.exists(st, diff_id):
                stage.add(diff_id)
                continue
            temp = stage.temp()
            extract_layer(__import__("io").BytesIO(data), str(temp / "diff"), overlay=True)
            stage.add(diff_id, temp)
        return {"cmd": ["/bin/sh"]}
    return images.install_layers(st, name, fill)


def test_layers_are_shared_and_removed_with_their_last_image(tmp_path):
    from ctrun.images import store as images
    from ctrun.state import Store
    st = Store(tmp_path / "store")
    base, one, two = (layer([F("base", b"b" * 5000)]), layer([F("one")]), layer([F("two")]))
    a = _image(st, "a", [base, one])
    b = _image(st, "b", [base, two])
    assert a["layers"][0] == b["layers"][0]
    assert len(layers.all_layers(st)) == 3
    assert images.lowerdirs(st, "b") == [layers.diff_dir(st, d) for d in reversed(b["layers"])]
    images.remove(st, "a")
    assert set(layers.all_layers(st)) == set(b["layers"])
    (layers.root(st) / ".tmp-crashed-1234").mkdir()          # a killed import's leftovers
    os.rename(layers.path(st, b["layers"][1]), layers.root(st) / "sha256" / ("f" * 64))
    images.remove(st, "b")
    assert images.gc(st) == ["removed leftover image directory .tmp-crashed-1234"]
    assert os.listdir(layers.root(st) / "sha256") == []
    assert not [n for n in os.listdir(layers.root(st)) if n != "sha256"]


def test_a_layer_listed_twice_is_mounted_once(tmp_path):
    from ctrun.images import store as images
    from ctrun.state import Store
    st = Store(tmp_path / "store")
    empty, x = layer([]), layer([F("x")])
    cfg = _image(st, "twice", [empty, x, empty])
    assert len(cfg["layers"]) == 3
    assert images.lowerdirs(st, "twice") == [layers.diff_dir(st, cfg["layers"][2]),
                                             layers.diff_dir(st, cfg["layers"][1])]
