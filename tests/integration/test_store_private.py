"""Nothing below the store is reachable by other users (the class of Docker's CVE-2021-41091):
layer ids are public, so a setuid-root file of an image must not be a root shell for every
local user."""

import io
import os
import shutil
import stat
import subprocess
import tarfile

import pytest
from conftest import cleanup_store


# trees that are a container's own files, kept with the image's modes (their root directory
# is the container's "/", or an overlay work dir, a mount point, the bound /etc files):
# each may be open to others only because the directory holding it is private
CONTENT = {("layers", "sha256", "*", "diff"), ("layers", "*", "diff"),
           ("containers", "*", "upper"), ("containers", "*", "work"),
           ("containers", "*", "rootfs"), ("containers", "*", "etc"),
           ("containers", "*", "lower"), ("images", "*", "rootfs")}


def _content(rel):
    return any(len(rel) == len(pat) and all(p in ("*", r) for p, r in zip(pat, rel))
               for pat in CONTENT)


def assert_private(root):
    """Every directory of the store is private (0700 or tighter), but the CONTENT trees,
    which sit below a private directory and are not walked into."""
    open_ = []
    for dirpath, dirs, _ in os.walk(root):
        rel = tuple(os.path.relpath(dirpath, root).split(os.sep)) if dirpath != str(root) else ()
        if _content(rel):
            dirs[:] = []
            parent = os.stat(os.path.dirname(dirpath)).st_mode
            assert not parent & 0o077, f"{dirpath}: parent {oct(parent)} is not private"
            continue
        mode = stat.S_IMODE(os.stat(dirpath).st_mode)
        if mode & 0o077:
            open_.append(f"{'/'.join(rel) or '.'} {oct(mode)}")
    assert not open_, f"directories open to other users: {open_}"


def as_nobody(*argv):
    """argv as uid/gid 65534 without supplementary groups (not setpriv: it execs the
    program with root's access to its path)."""
    return subprocess.run(["sh", "-c", '"$@"', "sh", *argv], capture_output=True, text=True, user=65534, group=65534,
                          extra_groups=[])


def assert_unreachable(path, execute=False):
    """stat, list and (execute=True) run path as an unprivileged user: all refused."""
    probes = [["stat", str(path)], ["ls", str(path)]] + ([[str(path), "-u"]] if execute else [])
    for argv in probes:
        r = as_nobody(*argv)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (argv, r.stdout, r.stderr)


def _suid_tarball(path):
    """A rootfs tarball: a static busybox, and a root-owned setuid copy of id(1)."""
    with tarfile.open(path, "w") as tf:
        for d in ("bin", "root", "tmp"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
        for name, src, mode in (("bin/busybox", "/usr/bin/busybox", 0o755),
                                ("bin/suid-id", "/usr/bin/id", 0o4755)):
            data = open(src, "rb").read()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.uid, ti.gid = len(data), mode, 0, 0
            tf.addfile(ti, io.BytesIO(data))
        for applet in ("sh", "cp", "chmod"):
            ti = tarfile.TarInfo("bin/" + applet)
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            tf.addfile(ti)


@pytest.fixture
def fresh_root(store):
    """A store root that ctrun itself creates, in a directory other users may traverse
    (as /var/lib is): the fixture's own store directory is private from the start."""
    os.chmod(store, 0o755)
    root = store / "ctrun"
    yield root
    cleanup_store(root)


def _populate(root, tmp_path):
    """Import the setuid image and run a plain and a --userns container (which must still
    work) that write a setuid-root file into their own upper directories; returns
    (Ctrun, the layer's setuid file, the containers' setuid files)."""
    from ctrun.api import Ctrun
    from ctrun.images import store as images
    from ctrun.images import transfer
    ct = Ctrun(root)
    tarball = tmp_path / "suid.tar"
    _suid_tarball(tarball)
    transfer.import_image(ct.store, str(tarball), "suid")
    (layer,) = images.lowerdirs(ct.store, "suid")
    suid = layer / "bin/suid-id"
    assert os.stat(suid).st_mode & stat.S_ISUID and os.stat(suid).st_uid == 0
    uppers = []
    for name, userns in (("plain", False), ("mapped", True)):
        ct.create(name, image="suid", userns=userns,
                  cmd=["sh", "-c", "cp /bin/busybox /root/sbb && chmod 4755 /root/sbb"])
        assert ct._run_attached(name, False, False) == 0
        uppers.append(root / "containers" / name / "upper/root/sbb")
        assert os.stat(uppers[-1]).st_mode & stat.S_ISUID
    return ct, suid, uppers


def test_no_user_reaches_a_setuid_file_of_an_image_or_a_container(fresh_root, tmp_path):
    ct, suid, uppers = _populate(fresh_root, tmp_path)
    # the attack: diff_ids are public, so the full path is known to everyone
    assert_unreachable(suid, execute=True)
    assert_unreachable(suid.parent)
    for f in uppers:
        assert_unreachable(f, execute=True)
        assert_unreachable(f.parent.parent)
    assert_private(fresh_root)


def test_a_store_of_an_older_ctrun_is_made_private_on_first_use(fresh_root, tmp_path):
    """The modes an older ctrun gave its store (0711 and 0755 directories) are taken back
    by the next command that changes the store."""
    ct, suid, uppers = _populate(fresh_root, tmp_path)
    old = {"": 0o711, "containers": 0o711, "containers/plain": 0o711,
           "containers/mapped": 0o711, "layers": 0o711, "layers/sha256": 0o711,
           f"layers/sha256/{suid.parent.parent.parent.name}": 0o755, "tmp": 0o755,
           "cache": 0o755}
    (fresh_root / "tmp/blobs").mkdir(parents=True, exist_ok=True)
    (fresh_root / "cache").mkdir(exist_ok=True)
    old["tmp/blobs"] = 0o755
    for rel, mode in old.items():
        os.chmod(fresh_root / rel, mode)
    r = as_nobody(str(suid), "-u")
    assert r.stdout.strip() == "0", r.stderr  # the hole, as an older store has it
    ct.create("after", image="suid", cmd=["sh"])
    assert_private(fresh_root)
    assert_unreachable(suid, execute=True)
    for f in uppers:
        assert_unreachable(f, execute=True)


def test_vm_disks_are_private(fresh_root, tmp_path):
    """The shared ext4 disk of an image and a VM's own overlay hold the image's files (and
    the VM's writes): 0600, in private directories."""
    if not (shutil.which("mkfs.ext4") and shutil.which("qemu-img")):
        pytest.skip("needs e2fsprogs and qemu-utils")
    from ctrun.images import store as images
    from ctrun.state import Store
    from ctrun.vm import disk
    st = Store(fresh_root)
    images.get(st, "busybox")
    base = disk.base(st, "busybox")
    vmdir = tmp_path / "vm"   # a VM's own directory (the store's is tested above)
    vmdir.mkdir(mode=0o755)
    over = disk.overlay(base, vmdir / "disk.qcow2")
    for f in (base, over):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert_unreachable(base)
    assert_private(fresh_root)
