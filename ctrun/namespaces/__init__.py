"""Namespace kinds and creating them (unshare); joining a running container's is in
join.py, user namespaces' id ranges and maps in userns.py."""

import fcntl
import socket
import struct

from .. import libc
from ..errors import InvalidInput
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
    handled first, with the id maps written from outside; one given by path is joined by
    the parent (join.open_paths) instead.
    """
    flags = 0
    for ns in spec_namespaces:
        if ns["type"] not in skip and not ns.get("path"):
            flags |= KINDS[ns["type"]][1]
    return flags


def new(spec_namespaces, kind):
    """Whether the spec asks for a new namespace of kind (listed, without a path)."""
    return any(ns["type"] == kind and not ns.get("path") for ns in spec_namespaces)


def check(spec_namespaces):
    """Each entry a known type, listed once, its path (if any) absolute."""
    seen = set()
    for ns in spec_namespaces:
        kind = ns.get("type")
        if kind not in KINDS:
            raise InvalidInput(f"linux.namespaces type {kind!r} is not supported by ctrun "
                               f"(it knows {', '.join(KINDS)}); remove it from config.json")
        if kind in seen:
            raise InvalidInput(f"linux.namespaces lists {kind!r} twice; keep one entry")
        seen.add(kind)
        if ns.get("path") is not None and not str(ns["path"]).startswith("/"):
            raise InvalidInput(f"linux.namespaces {kind} path {ns['path']!r} is not absolute; "
                               "give the full path (/proc/PID/ns/... or /run/netns/...)")


def private_mounts():
    """A mount namespace of this process's own whose mounts never propagate to the host."""
    linux.unshare(libc.CLONE_NEWNS)
    linux.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def loopback_up():
    """lo up in the caller's network namespace, unless it is already: one joined by path (a
    pod's) has it up, and a user namespace that does not own that one may not set it.
    Called in an init after pivot_root: its modules are imported above, not here."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        if struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, req))[1] & 0x1:  # SIOCGIFFLAGS
            return
        flags = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags))  # SIOCSIFFLAGS
    finally:
        s.close()
