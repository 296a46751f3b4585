"""Device nodes in a container's /dev: the runtime-spec's default set and linux.devices.

Made with mknod where the kernel lets the container's root do it; in a user namespace
(where mknod is refused) the host's node is bound onto an empty file instead.
"""

import os
import stat

from ..errors import InvalidInput
from ..kernel import linux
from ..libc import MS_BIND
from . import paths

DEFAULT = (  # name, major, minor: character devices every container gets, mode 0666
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
    ("tty", 5, 0),
)
LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))

KINDS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def make(dir_fd, name, kind, major, minor, mode, use_mknod, host_path):
    """The node `name` in the directory dir_fd: made, or host_path bound onto it."""
    if use_mknod or kind == stat.S_IFIFO:  # a FIFO needs no privilege: made in a userns too
        os.mknod(name, mode | kind, os.makedev(major, minor), dir_fd=dir_fd)
        os.chmod(name, mode, dir_fd=dir_fd)  # not cut by the umask
    else:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=dir_fd))
        linux.mount(host_path, f"{paths.fd_path(dir_fd)}/{name}", None, MS_BIND)


def make_defaults(dev_fd, use_mknod):
    """The default devices and /dev's symlinks (fd, stdio, ptmx) in a fresh /dev (dev_fd)."""
    for name, major, minor in DEFAULT:
        make(dev_fd, name, stat.S_IFCHR, major, minor, 0o666, use_mknod, f"/dev/{name}")
    for name, target in LINKS:
        os.symlink(target, name, dir_fd=dev_fd)


def check(entry):
    """One linux.devices entry is well-formed (before anything is created)."""
    where = f"linux.devices entry {entry.get('path')!r}"
    p = entry.get("path")
    if not isinstance(p, str) or not p.startswith("/") or ".." in p.split("/"):
        raise InvalidInput(f"{where}: path must be absolute without '..'; fix config.json")
    if entry.get("type") not in KINDS:
        raise InvalidInput(f"{where}: type {entry.get('type')!r} is not one of c, b, u, p; "
                           "fix config.json")
    if entry["type"] != "p" and not all(isinstance(entry.get(k), int)
                                        for k in ("major", "minor")):
        raise InvalidInput(f"{where}: major and minor numbers are required; fix config.json")


def make_listed(root_fd, entries, use_mknod):
    """Every linux.devices entry, at its path resolved inside the root; an existing node
    is left as it is (as runc does: the default set may list /dev/null again)."""
    for e in entries:
        check(e)
        parent, name = os.path.split(os.path.normpath(e["path"]))
        pfd = paths.mkdirs_in_root(root_fd, parent)
        try:
            pdir = os.open(paths.fd_path(pfd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            os.close(pfd)
        try:
            try:
                os.stat(name, dir_fd=pdir, follow_symlinks=False)
                continue
            except FileNotFoundError:
                pass
            mode = e.get("fileMode", 0o666) & 0o7777
            make(pdir, name, KINDS[e["type"]], e.get("major", 0), e.get("minor", 0), mode,
                 use_mknod, e["path"])
            if use_mknod or e["type"] == "p":
                os.chown(name, e.get("uid", 0), e.get("gid", 0), dir_fd=pdir,
                         follow_symlinks=False)
        finally:
            os.close(pdir)
