"""The last steps before exec: rlimits, user, capabilities, no_new_privs, fds, seccomp."""

import errno
import os
import resource

# imported here, not lazily: these steps run after pivot_root or setns(mnt), where the
# host's Python path no longer exists
import prctl

from .. import errors, libc
from ..kernel import linux


def set_rlimits(proc):
    for r in proc.get("rlimits", []):
        linux.setrlimit(getattr(resource, r["type"]), (r["soft"], r["hard"]))


def _cap_numbers(names):
    return [getattr(prctl, n) for n in names if hasattr(prctl, n)]


def drop_privileges(proc):
    """Bounding set, user and group, then the capability sets, then no_new_privs.

    Root in the container keeps the configured capabilities (they survive exec because
    the bounding set and the permitted set both hold them); any other uid loses them at
    setuid, as on a normal Linux system.
    """
    keep = set(proc["capabilities"]["bounding"])
    keep_nums = _cap_numbers(sorted(keep))
    # by number up to the kernel's last capability: newer kernels know capabilities
    # (CAP_CHECKPOINT_RESTORE...) that python-prctl has no name for
    for cap in range(libc.cap_last_cap() + 1):
        if cap not in keep_nums:
            linux.capbset_drop(cap)
    linux.cap_limit("inheritable", keep_nums)
    # ambient capabilities would pass to a non-root workload across exec; whatever the
    # caller of ctrun had raised, the container starts with none
    linux.clear_ambient_caps()
    user = proc["user"]
    linux.setgroups(user.get("additionalGids", []))
    linux.setgid(user["gid"])
    linux.setuid(user["uid"])
    if user["uid"] == 0:
        linux.cap_limit("effective", keep_nums)  # first: it must stay within permitted
        linux.cap_limit("permitted", keep_nums)
    if proc.get("noNewPrivileges"):
        linux.set_no_new_privs()


def reset_signals():
    """Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: undo that."""
    import signal
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def close_fds(keep):
    """Close every inherited fd except stdio and `keep`, up to the largest possible fd."""
    lo = 3
    for fd in sorted(keep):
        if fd > lo:
            _close_range(lo, fd - 1)
        lo = max(lo, fd + 1)
    _close_range(lo, 0xFFFFFFFF)


def _close_range(first, last):
    try:
        linux.close_range(first, last)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        # before linux 5.9 (or under a seccomp profile that predates it): one close per
        # possible fd, up to the process's fd limit
        os.closerange(first, min(last + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def check_cwd():
    """The working directory must be inside the root once every fd is closed: a directory
    fd leaked from the host and entered by the path /proc/self/fd/N (CVE-2024-21626) would
    show here as an unreachable path."""
    try:
        cwd = linux.getcwd()
    except OSError:
        cwd = ""
    if not cwd.startswith("/"):
        raise errors.InvalidInput("the working directory is outside the container's root; "
                                  "give a working directory inside the container")


def install_seccomp(bpf):
    """bpf: a program's bytes, or (bytes, SECCOMP_FILTER_FLAG_* bits) from a bundle's
    profile (ctrun.runtime.seccomp_oci)."""
    if isinstance(bpf, tuple):
        linux.seccomp(*bpf)
    elif bpf:
        linux.seccomp(bpf)
