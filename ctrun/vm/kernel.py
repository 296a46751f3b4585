"""The guest kernel: Debian's cloud kernel, with its modules, from the host's /boot.

QEMU's microvm machine boots an uncompressed ELF vmlinux through its PVH entry point, which
skips the bzImage decompressor (a second or more under TCG), so the vmlinux is extracted
once from the packaged vmlinuz with the matching decompressor and cached.
"""

import glob
import os
import subprocess
from pathlib import Path

from ..errors import HostUnsupported
from . import cache

PACKAGE = "linux-image-cloud-amd64"
# compression magic -> decompressor, as the kernel's own scripts/extract-vmlinux searches
MAGIC = ((b"\x02\x21\x4c\x18", ["lz4", "-dc"]), (b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
         (b"\xfd7zXZ\x00", ["xz", "-dcq"]), (b"\x1f\x8b\x08", ["gzip", "-dcq"]))


class Kernel:
    __slots__ = ("vmlinuz", "release", "modules")

    def __init__(self, vmlinuz):
        self.vmlinuz = Path(vmlinuz)
        self.release = self.vmlinuz.name.split("vmlinuz-", 1)[-1]
        self.modules = Path("/lib/modules") / self.release


def find():
    """$CTRUN_VM_KERNEL, else the newest Debian cloud kernel in /boot."""
    env = os.environ.get("CTRUN_VM_KERNEL")
    if env:
        if not os.path.isfile(env):
            raise HostUnsupported(f"CTRUN_VM_KERNEL={env} is not a file; point it at a "
                                  "vmlinuz or unset it")
        k = Kernel(env)
    else:
        found = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"), key=os.path.getmtime)
        if not found:
            raise HostUnsupported(f"no guest kernel for --vm; run: apt-get install {PACKAGE}")
        k = Kernel(found[-1])
    if not (k.modules / "modules.dep").exists():
        raise HostUnsupported(f"the modules of guest kernel {k.release} are missing "
                              f"({k.modules}); reinstall it: apt-get install --reinstall "
                              f"linux-image-{k.release}")
    return k


def vmlinux(k):
    """The uncompressed ELF kernel, extracted once per vmlinuz and cached."""
    out = cache.path(f"vmlinux-{k.release}-{cache.key(k.vmlinuz)}")
    if out.exists():
        return out
    data = k.vmlinuz.read_bytes()
    for magic, cmd in MAGIC:
        at = data.find(magic)
        if at < 0:
            continue
        try:
            # decompressors warn about the bytes after the stream; the ELF check decides
            elf = subprocess.run(cmd, input=data[at:], capture_output=True).stdout
        except FileNotFoundError:
            continue
        if elf[:4] == b"\x7fELF":
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            tmp.write_bytes(elf)
            return cache.publish(tmp, out)
    raise HostUnsupported(f"cannot extract an ELF kernel from {k.vmlinuz} (tried lz4, zstd, "
                          "xz, gzip); run: apt-get install lz4 zstd xz-utils")
