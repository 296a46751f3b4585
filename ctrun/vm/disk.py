"""The VM's root disk: an ext4 image of the image's files, shared read-only by every VM of
that image, and a per-VM qcow2 overlay on top, so the image stays as it is (the VM-mode
twin of a container's overlayfs upper directory).

The ext4 image is made without mounting anything on the host: `mkfs.ext4 -d` copies a
directory tree (owners, modes, xattrs, device nodes) into a new file system.  An image of
several layers is first merged by a read-only overlay mounted in a private mount namespace
that dies with the copy (images.layers.merged), so no mount is ever left on the host.
"""

import os
import shutil
import subprocess

from ..errors import CtrunError, HostUnsupported
from .. import config

HEADROOM = 1 << 30  # free space in the guest's root (sparse: costs nothing until written)


def _tool(name, package):
    if not shutil.which(name):
        raise HostUnsupported(f"VM disks need {name}; run: apt-get install {package}")


def _private_file(path):
    """Create the disk file 0600 before its tool writes it (mkfs.ext4 and qemu-img keep the
    mode of a file that exists; made by them it would be 0644): a disk holds an image's
    files, and the VM's writes, which no other user may read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover of a killed build may have had another mode
    finally:
        os.close(fd)


def base_path(store, image):
    """Where the shared disk of an image lives: keyed by the image's config, so a rebuilt
    image gets a new disk and VMs made from the old one keep theirs."""
    from . import cache
    return store.root / "cache" / "vm" / \
        f"disk-{image}-{cache.key(store.image_dir(image) / 'image.json')}.ext4"


def base(store, image):
    """The read-only ext4 disk of an image, made on first use."""
    from ..images import layers, store as images
    out = base_path(store, image)
    if out.exists():
        return out
    _tool("mkfs.ext4", "e2fsprogs")
    lowers = images.lowerdirs(store, image)
    store.private_dir("cache", "vm")
    with store.lock("vmdisk." + image):
        if out.exists():
            return out
        size = int(sum(layers.du(d) for d in lowers) * 1.3) + HEADROOM
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        try:
            # several layers are merged by overlayfs (whiteouts, opaque dirs applied) in a
            # private mount namespace that dies with the copy
            layers.merged(lowers, lambda src: mkfs(src, tmp, size, f"image '{image}'"),
                          store.root / "tmp")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def mkfs(src, dest, size, what):
    """An ext4 file system of `size` bytes (sparse) at dest holding a copy of the tree src;
    dest is made private first."""
    _tool("mkfs.ext4", "e2fsprogs")
    _private_file(dest)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "ctrun-root", "-E", "nodiscard",
                        "-d", str(src), str(dest), f"{size // (1 << 20)}M"],
                       capture_output=True, text=True)
    if r.returncode:
        raise CtrunError(f"cannot make the VM disk of {what}: "
                         f"{(r.stderr.strip() or 'mkfs.ext4 failed').splitlines()[-1]}")


def from_tree(src, dest):
    """A VM's own disk made from a root file system directory (an OCI bundle's rootfs)."""
    from ..images import layers
    mkfs(src, dest, int(layers.du(src) * 1.3) + HEADROOM, f"root file system {src}")
    return dest


def overlay(base_disk, dest):
    """A qcow2 file backed by the shared disk: this VM's writes, and only those."""
    _tool("qemu-img", "qemu-utils")
    _private_file(dest)
    r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(base_disk), str(dest)], capture_output=True, text=True)
    if r.returncode:
        raise CtrunError(f"cannot make the VM disk overlay {dest}: {r.stderr.strip()}")
    return dest


def gc(store):
    """Remove shared disks that no VM uses and whose image changed or is gone."""
    done = []
    d = store.root / "cache" / "vm"
    if not d.is_dir():
        return done
    used = set()
    for n in store.container_names():
        cfg = config.load(store.container_dir(n))
        if cfg and cfg.vm:
            used.add(cfg.vm.get("base_disk"))
    for p in d.glob("disk-*.ext4"):
        image = p.name[len("disk-"):].rsplit("-", 1)[0]
        try:
            current = base_path(store, image)
        except OSError:
            current = None
        if str(p) not in used and p != current:
            p.unlink(missing_ok=True)
            done.append(f"removed unused VM disk {p.name}")
    return done
