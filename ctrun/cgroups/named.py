"""The `name=systemd` v1 hierarchy, for systemd in containers on a cgroup v1 or hybrid host
that has none (a host whose init is not systemd: OpenRC, sysvinit).

On such a host systemd, as a container's PID 1, tracks its units in `name=systemd` and
does not boot without it; it cannot mount a new hierarchy itself (that needs CAP_SYS_ADMIN
on the host).  So ctrun mounts it once on the host, where a systemd host has it, before
the container's cgroups are made: from then on it is one more v1 hierarchy of the host's
layout, in which every container gets its own cgroup like in the others.
"""

import errno
import os

from ..errors import HostUnsupported

KEY = "name=systemd"
MOUNT_POINT = "/sys/fs/cgroup/systemd"


def needed(layout):
    """Whether a systemd container needs the hierarchy mounted: v1 or hybrid without it
    (on pure cgroup2 systemd uses the unified hierarchy)."""
    return layout.kind in ("v1", "hybrid") and KEY not in layout.v1


def ensure(layout, mount=None, mount_point=MOUNT_POINT):
    """Mount `name=systemd` at mount_point when `needed`; returns whether it mounted.
    A concurrent start that mounted it first (EBUSY) counts as done."""
    if not needed(layout):
        return False
    if mount is None:
        from ..libc import mount
    from ..libc import MS_NODEV, MS_NOEXEC, MS_NOSUID
    try:
        os.makedirs(mount_point, 0o755, exist_ok=True)
        mount("cgroup", mount_point, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "none," + KEY)
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False
        raise HostUnsupported(f"systemd in a container needs a '{KEY}' cgroup hierarchy, "
                              f"which this cgroup v1 host lacks, and mounting one on "
                              f"{mount_point} failed ({os.strerror(e.errno)}); mount it "
                              f"with: mkdir -p {mount_point} && mount -t cgroup -o "
                              f"none,{KEY} cgroup {mount_point}") from None
    return True
