"""The busybox image builder and recipe loading, against the host's real busybox-static."""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from ctrun.errors import HostUnsupported, InvalidInput, NotFound
from ctrun.images import busybox, recipe


def have_static_busybox():
    try:
        busybox.host_busybox()
    except HostUnsupported:
        return False
    return True


pytestmark = pytest.mark.skipif(not have_static_busybox(), reason="needs busybox-static")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


@pytest.fixture
def built(rootfs):
    return rootfs, recipe.build(recipe.load_recipe("busybox"), rootfs)


def tree_digest(root):
    """Names, kinds, modes, link targets and contents of every entry, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(open(p, "rb").read()).hexdigest()
            else:
                extra = ""
            out.append((os.path.relpath(p, root), oct(st.st_mode), extra))
    return out


def test_layout(built):
    root, _ = built
    bb = root / "bin/busybox"
    assert stat.S_ISREG(bb.lstat().st_mode) and stat.S_IMODE(bb.lstat().st_mode) == 0o755
    assert busybox.is_static_elf(bb.read_bytes())
    for applet in ("bin/sh", "sbin/init", "sbin/poweroff", "usr/bin/env"):
        assert os.readlink(root / applet) == "/bin/busybox"
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((root / "root").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "etc/init.d/rcS").stat().st_mode) == 0o755
    assert "root:x:0:0:" in (root / "etc/passwd").read_text()
    assert ":65534:" in (root / "etc/passwd").read_text()
    assert (root / "etc/hostname").read_text() == "busybox\n"
    assert "::sysinit:" in (root / "etc/inittab").read_text()
    assert os.readlink(root / "etc/mtab") == "/proc/self/mounts"


def test_every_applet_linked(built):
    root, _ = built
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(applets) > 100
    for a in applets:
        assert os.path.lexists(root / a), a


def test_config(built):
    _, config = built
    assert config["cmd"] == ["/sbin/init"]
    assert config["stop_signal"] == "SIGUSR2"
    assert config["user"] == "0:0" and config["workdir"] == "/"
    assert any(e.startswith("PATH=") for e in config["env"])
    assert config["built_by"] == "busybox"
    assert config["busybox_version"][0].isdigit()
    json.dumps(config)


def test_copied_binary_runs_on_host(built):
    root, _ = built
    r = subprocess.run([str(root / "bin/busybox"), "sh", "-c", "echo hi"],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "hi\n")


@needs_root
def test_shell_runs_inside_root(built):
    root, _ = built
    r = subprocess.run(["chroot", str(root), "/bin/sh", "-c",
                        ". /etc/profile; echo $PATH; cat /etc/hostname; id -u; ls /usr/bin/env"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                "busybox", "0", "/usr/bin/env"]


def test_deterministic(tmp_path):
    digests = []
    for n in ("a", "b"):
        (tmp_path / n).mkdir()
        recipe.build(recipe.load_recipe("busybox"), tmp_path / n)
        digests.append(tree_digest(tmp_path / n))
    assert digests[0] == digests[1]


def test_refuses_missing_root(tmp_path):
    with pytest.raises(InvalidInput, match="not a directory"):
        busybox.build(recipe.load_recipe("busybox"), tmp_path / "missing")


def test_refuses_non_empty(rootfs):
    (rootfs / "x").write_text("")
    with pytest.raises(InvalidInput, match="not empty"):
        busybox.build(recipe.load_recipe("busybox"), rootfs)


def test_host_without_static_busybox(rootfs, monkeypatch):
    with pytest.raises(HostUnsupported) as e:
        busybox.host_busybox("/nonexistent/busybox")
    assert str(e.value) == ("busybox-static is not installed; "
                            "run: apt-get install busybox-static")
    with pytest.raises(HostUnsupported, match="busybox-static is not installed"):
        busybox.host_busybox(os.path.realpath(sys.executable))   # dynamically linked
    monkeypatch.setattr(busybox, "BUSYBOX", "/nonexistent/busybox")
    with pytest.raises(HostUnsupported):
        busybox.build(recipe.load_recipe("busybox"), rootfs)
    assert list(rootfs.iterdir()) == []


def minimal(**extra):
    r = {"name": "t", "builder": "busybox", "config": {"cmd": ["/bin/sh"]},
         "dirs": {"bin": "0755", "sbin": "0755", "usr": "0755"}}
    r.update(extra)
    return r


def test_recipe_file_overrides_applet(rootfs):
    busybox.build(minimal(files={"sbin/init": {"mode": "0755", "lines": ["#!/bin/sh"]}}), rootfs)
    assert (rootfs / "sbin/init").read_text() == "#!/bin/sh\n"
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert (rootfs / "usr/bin").is_dir()   # applet directories the recipe forgot


@pytest.mark.parametrize("bad", [
    {"dirs": {"../escape": "0755"}},
    {"dirs": {"bin": "0999"}},
    {"files": {"etc/../../x": {"lines": []}}},
    {"files": {"nodir/x": {"lines": []}}},
    {"files": {"x": {"mode": "0644"}}},
    {"links": {"lnk": "/etc", "lnk/evil": "x"}},   # would land in the host's /etc
    {"links": {"bin/busybox": "x"}},
    {"files": {"bin/busybox": {"lines": []}}},
    {"files": {"etc": {"lines": []}}, "dirs": {"etc": "0755"}},
    {"files": {"x": "not an object"}},
])
def test_bad_recipes(rootfs, bad):
    with pytest.raises(InvalidInput):
        busybox.build(minimal(**bad), rootfs)
    assert not (rootfs.parent / "escape").exists() and not os.path.lexists("/etc/evil")


def test_load_recipe():
    r = recipe.load_recipe("busybox")
    assert r["name"] == "busybox" and r["builder"] == "busybox"
    assert "busybox" in recipe.list_recipes()


@pytest.mark.parametrize("name", ["nosuch", "../images/busybox", "", "busybox/"])
def test_unknown_recipe(name):
    with pytest.raises(NotFound) as e:
        recipe.load_recipe(name)
    assert str(e.value).startswith(f"no image recipe '{name}'; known recipes: ")
    assert "busybox" in str(e.value)


def test_recipe_dir_errors(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/recipe.json").write_text("{")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/recipe.json").write_text(json.dumps(minimal(name="wrong")))
    (tmp_path / "good").mkdir()
    (tmp_path / "good/recipe.json").write_text(json.dumps(minimal(name="good")))
    assert recipe.list_recipes(tmp_path) == ["broken", "good", "other"]
    assert recipe.load_recipe("good", tmp_path)["name"] == "good"
    with pytest.raises(InvalidInput, match="unreadable"):
        recipe.load_recipe("broken", tmp_path)
    with pytest.raises(InvalidInput, match="names itself"):
        recipe.load_recipe("other", tmp_path)
    with pytest.raises(NotFound, match="known recipes: broken, good, other$"):
        recipe.load_recipe("busybox", tmp_path)
    with pytest.raises(NotFound, match="known recipes: none$"):
        recipe.load_recipe("x", tmp_path / "empty")


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_stop_signal_stops_init(built):
    """busybox init as PID 1 of a new PID namespace exits on the recipe's stop signal."""
    root, config = built
    # --kill-child: init dies with unshare, so nothing leaks if the test fails midway
    p = subprocess.Popen(["unshare", "--fork", "--pid", "--kill-child", f"--root={root}",
                          "/sbin/init"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env={"PATH": "/bin:/sbin"})
    sig = getattr(signal, config["stop_signal"])
    try:
        # A PID namespace's init drops signals it has not yet blocked or caught, so send
        # until init takes one; repeats after that are dropped too, harmlessly.
        deadline = time.monotonic() + 20
        while p.poll() is None and time.monotonic() < deadline:
            try:
                for pid in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split():
                    os.kill(int(pid), sig)
            except OSError:   # exited meanwhile
                pass
            try:
                p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        out, _ = p.communicate(timeout=1)
        assert "Requesting system poweroff" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
