"""Namespace flags, and joining the namespaces of a running container (setns)."""

import os

from .. import libc
from ..errors import Conflict

# OCI namespace type -> (/proc/PID/ns name, clone flag)
KINDS = {
    "user": ("user", libc.CLONE_NEWUSER),
    "ipc": ("ipc", libc.CLONE_NEWIPC),
    "uts": ("uts", libc.CLONE_NEWUTS),
    "network": ("net", libc.CLONE_NEWNET),
    "pid": ("pid", libc.CLONE_NEWPID),
    "cgroup": ("cgroup", libc.CLONE_NEWCGROUP),
    "mount": ("mnt", libc.CLONE_NEWNS),
}
# setns order: user first (it grants the rights to join the rest), mount last (it changes
# the paths every later step would resolve).
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "mount")


def unshare_flags(spec_namespaces, skip=("pid", "user")):
    """CLONE_* flags for the namespaces a container init unshares itself.

    pid is created by its parent (unshare(CLONE_NEWPID) affects children only) and user is
    handled first, with the id maps written from outside.
    """
    flags = 0
    for ns in spec_namespaces:
        if ns["type"] not in skip:
            flags |= KINDS[ns["type"]][1]
    return flags


def open_all(pid, kinds):
    """Open /proc/PID/ns/* for a running container; only namespaces that differ from ours."""
    fds = []
    try:
        for kind in JOIN_ORDER:
            if kind not in kinds:
                continue
            name = KINDS[kind][0]
            if os.stat(f"/proc/{pid}/ns/{name}").st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue
            fds.append((kind, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)))
    except FileNotFoundError:
        for _, fd in fds:
            os.close(fd)
        raise Conflict("the container's init exited while ctrun was joining it; start it again") from None
    return fds


def join(fds):
    for kind, fd in fds:
        libc.setns(fd, KINDS[kind][1])
        os.close(fd)
