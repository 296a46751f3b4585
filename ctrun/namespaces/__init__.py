"""Namespace kinds and creating them (unshare); joining a running container's is in
join.py, user namespaces' id ranges and maps in userns.py."""

from .. import libc
from ..kernel import linux

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


def private_mounts():
    """A mount namespace of this process's own whose mounts never propagate to the host."""
    linux.unshare(libc.CLONE_NEWNS)
    linux.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
