"""Builds the busybox image: Debian's static /bin/busybox, a symlink for each of its applets,
and the skeleton and files the recipe lists.

Everything is created below an empty directory through directory fds opened one component at
a time with O_NOFOLLOW, so no path in a recipe can lead outside the new root.
"""

import copy
import os
import re
import struct
import subprocess
from pathlib import Path

from ..errors import HostUnsupported, InvalidInput

BUSYBOX = "/bin/busybox"
_NOT_INSTALLED = "busybox-static is not installed; run: apt-get install busybox-static"
_PT_INTERP = 3
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_VERSION_RE = re.compile(rb"BusyBox v([0-9][0-9A-Za-z.+~_-]*) \(")


def is_static_elf(data: bytes) -> bool:
    """True for an ELF executable without a PT_INTERP header (needs no dynamic loader)."""
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return False
    end = "<" if data[5] == 1 else ">"
    try:
        if data[4] == 2:   # ELFCLASS64
            (phoff,) = struct.unpack_from(end + "Q", data, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
        else:
            (phoff,) = struct.unpack_from(end + "I", data, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
        if phnum == 0:
            return False
        return all(struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] != _PT_INTERP
                   for i in range(phnum))
    except struct.error:   # truncated file
        return False


def host_busybox(path: str | None = None) -> tuple[bytes, str, list[str]]:
    """The host's static busybox: (binary, version, applet paths relative to /)."""
    path = path or BUSYBOX
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise HostUnsupported(_NOT_INSTALLED) from None
    if not is_static_elf(data):
        raise HostUnsupported(_NOT_INSTALLED)
    m = _VERSION_RE.search(data)
    version = m.group(1).decode() if m else "unknown"
    try:
        out = subprocess.run([path, "--list-full"], capture_output=True, check=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise HostUnsupported(f"{path} cannot list its applets ({e}); "
                              "run: apt-get install --reinstall busybox-static") from None
    return data, version, sorted(set(out.split()))


def _parts(path: str, what: str) -> tuple[str, ...]:
    parts = tuple(path.strip("/").split("/"))
    if not path.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"bad path {path!r} in image recipe {what}; "
                           "use a plain path like etc/passwd")
    return parts


def _mode(text, what: str) -> int:
    try:
        mode = int(text, 8)
    except (TypeError, ValueError):
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise InvalidInput(f"bad mode {text!r} in image recipe {what}; use octal like \"0755\"")
    return mode


class _Tree:
    """Directory fds below the root, opened once each without following symlinks."""

    def __init__(self, root_fd: int):
        self.fds = {(): root_fd}

    def dir(self, parts: tuple, create: bool = False) -> int:
        if parts in self.fds:
            return self.fds[parts]
        parent = self.dir(parts[:-1], create)
        if create:
            try:
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            except FileExistsError:
                pass
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            raise InvalidInput(f"image path /{'/'.join(parts)} is not a directory ({e.strerror}); "
                               "list it under \"dirs\" in the recipe") from None
        self.fds[parts] = fd
        return fd

    def close(self):
        for fd in self.fds.values():
            os.close(fd)


def _write(tree: _Tree, parts: tuple, data: bytes, mode: int):
    fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=tree.dir(parts[:-1]))
    try:
        os.fchmod(fd, mode)   # exact mode, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def file_text(spec, what):
    """The text of a recipe file entry: {"lines": [...]} or {"content": "..."}."""
    if isinstance(spec.get("lines"), list):
        return "".join(line + "\n" for line in spec["lines"])
    if isinstance(spec.get("content"), str):
        return spec["content"]
    raise InvalidInput(f"image recipe {what} needs \"lines\" (a list) or \"content\"")


def build(recipe: dict, rootfs: Path) -> dict:
    """Populate the empty directory rootfs from recipe; return the image's config."""
    binary, version, applets = host_busybox()
    try:
        root_fd = os.open(rootfs, _DIR_FLAGS)
    except OSError as e:
        raise InvalidInput(f"image root {rootfs} is not a directory ({e.strerror}); "
                           "create it empty first") from None
    tree = _Tree(root_fd)
    try:
        if os.listdir(root_fd):
            raise InvalidInput(f"image root {rootfs} is not empty; build into a new directory")

        # Parents sort before their children, so one pass creates the whole skeleton.
        dirs = {_parts(p, "dirs"): _mode(m, f"dirs {p!r}")
                for p, m in recipe.get("dirs", {}).items()}
        for parts in sorted(dirs):
            parent = tree.dir(parts[:-1])
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            os.fchmod(tree.dir(parts), dirs[parts])

        # Files before any symlink exists, and before the applets so a recipe may override one.
        for p, spec in recipe.get("files", {}).items():
            what = f"files {p!r}"
            spec = spec if isinstance(spec, dict) else {}
            text = file_text(spec, what)
            try:
                _write(tree, _parts(p, what), text.encode(), _mode(spec.get("mode", "0644"), what))
            except FileExistsError:
                raise InvalidInput(f"image recipe file {p!r} clashes with another entry; "
                                   "keep one of them") from None

        tree.dir(("bin",), create=True)
        try:
            _write(tree, ("bin", "busybox"), binary, 0o755)
        except FileExistsError:
            raise InvalidInput("image recipe must not write bin/busybox; "
                               "the builder copies it from the host") from None
        for applet in applets:
            parts = _parts(applet, "applets")
            if parts == ("bin", "busybox"):
                continue
            try:
                os.symlink(BUSYBOX, parts[-1], dir_fd=tree.dir(parts[:-1], create=True))
            except FileExistsError:
                pass   # the recipe wrote its own file here

        for p, target in recipe.get("links", {}).items():
            parts = _parts(p, "links")
            try:
                os.symlink(target, parts[-1], dir_fd=tree.dir(parts[:-1]))
            except FileExistsError:
                raise InvalidInput(f"image recipe link {p!r} clashes with another entry; "
                                   "keep one of them") from None
    finally:
        tree.close()

    config = copy.deepcopy(recipe["config"])
    config.update(built_by="busybox", busybox_version=version)
    return config
