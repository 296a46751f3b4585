"""Which init system a container's command starts as PID 1, found in the image's layers
(never on the host): each needs its own stop request and runtime support (ctrun.runtime.
systemd, ctrun.runtime.sysvinit).  Other commands, busybox init among them, keep the
image's defaults."""

import os
import stat

SYSTEMD, SYSVINIT = "systemd", "sysvinit"

# sysvinit's init names its version in its binary: "INIT_VERSION=sysvinit-3.06"
_SYSVINIT_MARK = b"INIT_VERSION=sysvinit-"
_MAX_READ = 4 << 20


def kind(view, argv, path_env):
    """SYSTEMD, SYSVINIT or None for argv in the image's layers (a layers.View): systemd is
    a command named `systemd`, or an `init` whose symlinks, resolved inside the image, end
    at a file named systemd; sysvinit an `init` that is a regular file carrying sysvinit's
    version mark (busybox's init is a link to busybox)."""
    from . import paths
    from ..errors import CtrunError
    if not argv:
        return None
    base = os.path.basename(argv[0])
    if base == "systemd":
        return SYSTEMD
    if base != "init":
        return None
    try:
        found = paths.lookup_command(view, argv[0], path_env)
        _, real = view.resolve(found)   # symlinks expanded in the merged view, never the host's
        if os.path.basename(real) == "systemd":
            return SYSTEMD
        if os.path.basename(real) == "init" and _has_mark(view, real):
            return SYSVINIT
    except (OSError, CtrunError):
        pass
    return None


def _has_mark(view, path):
    """Whether the image's file holds sysvinit's mark: checked to be a regular file through
    an O_PATH descriptor before it is opened for reading (a planted FIFO or device node is
    never opened), and read in bounds."""
    pfd = view.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            return False
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pfd)
    with os.fdopen(fd, "rb") as f:
        return _SYSVINIT_MARK in f.read(_MAX_READ)
