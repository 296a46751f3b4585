"""The last steps before exec: rlimits, user, capabilities, no_new_privs, fds, seccomp."""

import errno
import os
import resource

# imported here, not lazily: these steps run after pivot_root or setns(mnt), where the
# host's Python path no longer exists
import prctl

from .. import errors, libc
from ..kernel import linux
from ..procs import reset_signals  # noqa: F401 - the first of these steps (process.py)


def set_rlimits(proc):
    for r in proc.get("rlimits", []):
        linux.setrlimit(getattr(resource, r["type"]), (r["soft"], r["hard"]))


def _cap_numbers(names):
    return [getattr(prctl, n) for n in names if hasattr(prctl, n)]


# capability numbers of the names a spec lists (linux/capability.h); a kernel older than a
# capability does not have it, and it is left out (as runc does)
CAPS = {"CAP_" + n: i for i, n in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE"))}
CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def check_capabilities(caps):
    """Every name in the five sets is a capability (before anything is created)."""
    for kind in CAP_SETS:
        for name in caps.get(kind) or ():
            if name not in CAPS:
                raise errors.InvalidInput(f"process.capabilities.{kind}: {name!r} is not a "
                                          "capability; fix config.json")


def drop_privileges(proc):
    """Bounding set, user and group, then the capability sets, then no_new_privs.

    A spec that lists the inheritable or ambient set (the OCI front end gives all five) is
    applied as the runtime-spec says, for any uid.  ctrun's own (bounding, effective,
    permitted): root in the container keeps the configured capabilities (they survive exec
    because the bounding set and the permitted set both hold them); any other uid loses
    them at setuid, as on a normal Linux system.
    """
    caps = proc["capabilities"]
    user = proc["user"]
    if user.get("umask") is not None:
        linux.umask(user["umask"])
    if "inheritable" in caps or "ambient" in caps:
        _apply_all_sets(caps, user)
    else:
        _apply_root_only(caps, user)
    if proc.get("noNewPrivileges"):
        linux.set_no_new_privs()


def _drop_bounding(keep_nums, last):
    # by number up to the kernel's last capability: newer kernels know capabilities
    # (CAP_CHECKPOINT_RESTORE...) that python-prctl has no name for
    for cap in range(last + 1):
        if cap not in keep_nums:
            linux.capbset_drop(cap)


def _set_ids(user):
    linux.setgroups(user.get("additionalGids", []))
    linux.setgid(user["gid"])
    linux.setuid(user["uid"])


def _apply_root_only(caps, user):
    keep_nums = _cap_numbers(sorted(set(caps["bounding"])))
    _drop_bounding(keep_nums, libc.cap_last_cap())
    linux.cap_limit("inheritable", keep_nums)
    # ambient capabilities would pass to a non-root workload across exec; whatever the
    # caller of ctrun had raised, the container starts with none
    linux.clear_ambient_caps()
    _set_ids(user)
    if user["uid"] == 0:
        linux.cap_limit("effective", keep_nums)  # first: it must stay within permitted
        linux.cap_limit("permitted", keep_nums)


def _apply_all_sets(caps, user):
    last = libc.cap_last_cap()

    def nums(kind):
        return sorted({CAPS[n] for n in caps.get(kind) or () if CAPS.get(n, last + 1) <= last})
    _drop_bounding(nums("bounding"), last)
    linux.clear_ambient_caps()
    # the permitted set survives the switch to another uid only with keepcaps; then all
    # three sets are set at once, and the ambient ones raised (they need permitted and
    # inheritable both), so a non-root workload keeps them across its exec
    linux.set_keepcaps(True)
    _set_ids(user)
    linux.set_keepcaps(False)
    linux.capset(nums("effective"), nums("permitted"), nums("inheritable"))
    # one the spec lists as ambient but not as permitted and inheritable cannot be raised:
    # skipped, as runc does (its own `runc spec` lists ambient capabilities alone)
    usable = set(nums("permitted")) & set(nums("inheritable"))
    for cap in nums("ambient"):
        if cap in usable:
            linux.ambient_raise(cap)


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
