"""Joining the namespaces of a running container (setns)."""

import errno
import os

from ..errors import Conflict, InvalidInput
from ..kernel import linux
from . import KINDS

# setns order: user first (it grants the rights to join the rest), mount last (it changes
# the paths every later step would resolve).
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "mount")


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
        raise Conflict("the container's init exited while ctrun was joining it; "
                       "start it again") from None
    return fds


def open_paths(spec_namespaces):
    """[(kind, fd)] of the namespaces a spec gives by path (OCI), in JOIN_ORDER: all opened
    before any is joined, since joining one (mount) changes what a path names."""
    by_kind = {ns["type"]: ns["path"] for ns in spec_namespaces if ns.get("path")}
    fds = []
    try:
        for kind in JOIN_ORDER:
            if kind in by_kind:
                fds.append((kind, os.open(by_kind[kind], os.O_RDONLY | os.O_CLOEXEC)))
    except OSError as e:
        for _, fd in fds:
            os.close(fd)
        raise InvalidInput(f"cannot open the {kind} namespace {by_kind[kind]!r}: "
                           f"{e.strerror}; give an existing namespace path") from None
    return fds


def join(fds):
    """Enter each (kind, fd) of open_all, in its order, closing the fds."""
    for kind, fd in fds:
        enter(fd, kind)
        os.close(fd)


def enter(fd, kind):
    """Join the one namespace of `kind` (an OCI type: "network", "uts"...) behind fd."""
    try:
        linux.setns(fd, KINDS[kind][1])
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        raise InvalidInput(f"cannot join the {kind} namespace: the path given is not a "
                           f"{kind} namespace; fix linux.namespaces") from None
