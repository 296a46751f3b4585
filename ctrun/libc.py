"""Thin ctypes wrappers for the syscalls Python 3.11's os module lacks.

Each wrapper raises OSError with errno set, like the os module does.
"""

import ctypes
import errno
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# unshare/clone flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# syscall numbers (x86_64; aarch64 uses the generic table)
_NR = {
    "x86_64": {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
               "fsmount": 432, "mount_setattr": 442, "pivot_root": 155, "setns": 308, "openat2": 437, "pidfd_open": 434,
               "pidfd_send_signal": 424, "seccomp": 317, "close_range": 436},
    "aarch64": {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
                "fsmount": 432, "mount_setattr": 442, "pivot_root": 41, "setns": 268, "openat2": 437, "pidfd_open": 434,
                "pidfd_send_signal": 424, "seccomp": 277, "close_range": 436},
}[os.uname().machine]


def _check(ret, what=""):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)}{': ' + what if what else ''}")
    return ret


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype=None, flags=0, data=None):
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {target}")


def umount2(target, flags=0):
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def unshare(flags):
    _check(_libc.unshare(flags), "unshare")


def setns(fd, nstype=0):
    _check(_libc.syscall(_NR["setns"], fd, nstype), "setns")


def pivot_root(new_root, put_old):
    _check(_libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root")


def sethostname(name):
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name):
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


def pidfd_send_signal(pidfd, sig):
    _check(_libc.syscall(_NR["pidfd_send_signal"], pidfd, sig, None, 0), "pidfd_send_signal")


OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40


def open_tree_clone(path, recursive=True):
    """A detached copy of the mount tree at path (fd), attachable in another mount ns;
    only the mount at path itself unless recursive (bind, as opposed to rbind)."""
    return _check(_libc.syscall(_NR["open_tree"], -100, _b(path),
                                OPEN_TREE_CLONE | os.O_CLOEXEC |
                                (AT_RECURSIVE if recursive else 0)), f"open_tree {path}")


def move_mount_fd(tree_fd, target_fd):
    """Attach a detached tree onto the object behind target_fd (a /proc/self/fd path as
    the target is refused with EINVAL: the fds themselves must be given)."""
    _check(_libc.syscall(_NR["move_mount"], tree_fd, b"", target_fd, b"",
                         MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH), "move_mount")


MOUNT_ATTR_IDMAP = 0x00100000


def idmap_tree(tree_fd, userns_fd):
    """Make a detached tree (open_tree_clone) show its files' owners through the id map of
    the user namespace behind userns_fd (an idmapped mount): the image stays owned by host
    root on disk, and host uid 0 reads as the namespace's root inside."""
    raw = struct.pack("=QQQQ", MOUNT_ATTR_IDMAP, 0, 0, userns_fd)  # struct mount_attr
    _check(_libc.syscall(_NR["mount_setattr"], tree_fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                         ctypes.create_string_buffer(raw, len(raw)), len(raw)),
           "mount_setattr (idmap)")


MOUNT_ATTR_RDONLY = 0x00000001


def set_readonly_tree(fd):
    """Make the mount behind fd and every mount below it read-only (Linux 5.12+; OSError
    ENOSYS before): a remount reaches one mount only, however MS_REC is given."""
    raw = struct.pack("=QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)  # struct mount_attr
    _check(_libc.syscall(_NR["mount_setattr"], fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                         ctypes.create_string_buffer(raw, len(raw)), len(raw)),
           "mount_setattr (read-only)")


FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 1, 6


def fsmount(fstype, options):
    """A new detached mount of fstype ({key: value} options) as an fd, attached nowhere:
    a crash leaves nothing mounted."""
    fs = _check(_libc.syscall(_NR["fsopen"], _b(fstype), 1), f"fsopen {fstype}")  # CLOEXEC
    try:
        for key, value in options.items():
            _check(_libc.syscall(_NR["fsconfig"], fs, FSCONFIG_SET_STRING, _b(key), _b(value),
                                 0), f"{fstype} option {key}")
        _check(_libc.syscall(_NR["fsconfig"], fs, FSCONFIG_CMD_CREATE, None, None, 0),
               f"create {fstype}")
        return _check(_libc.syscall(_NR["fsmount"], fs, 1, 0), f"fsmount {fstype}")  # CLOEXEC
    finally:
        os.close(fs)


PR_CAPBSET_DROP = 24


def capbset_drop(cap):
    _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")


PR_SET_DUMPABLE = 4
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


def set_dumpable(on):
    """Non-dumpable (on=False) makes /proc/PID/{exe,fd,mem,...} of this process reachable
    only with CAP_SYS_PTRACE over the namespace it was started in, and forbids ptrace
    attaching; fork keeps it and a plain execve resets it."""
    _check(_libc.prctl(PR_SET_DUMPABLE, int(bool(on)), 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def clear_ambient_caps():
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
           "clear ambient capabilities")


PR_SET_KEEPCAPS, PR_CAP_AMBIENT_RAISE = 8, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def set_keepcaps(on):
    """Keep the permitted set across a setuid away from 0 (the effective one is cleared)."""
    _check(_libc.prctl(PR_SET_KEEPCAPS, int(bool(on)), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def ambient_raise(cap):
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0),
           f"raise ambient capability {cap}")


def capset(effective, permitted, inheritable):
    """Set the three capability sets of this thread at once (capset(2)); each an iterable
    of capability numbers."""
    def words(caps):
        mask = sum(1 << c for c in set(caps))
        return mask & 0xFFFFFFFF, mask >> 32
    e, p, i = words(effective), words(permitted), words(inheritable)
    hdr = struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack("=6I", e[0], p[0], i[0], e[1], p[1], i[1])
    _check(_libc.capset(ctypes.create_string_buffer(hdr, len(hdr)),
                        ctypes.create_string_buffer(data, len(data))), "capset")


def close_range(first, last=0xFFFFFFFF, flags=0):
    """close_range(2): every fd in [first, last]; last defaults to ~0U (no ceiling)."""
    _check(_libc.syscall(_NR["close_range"], ctypes.c_uint(first), ctypes.c_uint(last),
                         ctypes.c_uint(flags)), "close_range")


def cap_last_cap():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


def openat2(dirfd, path, flags, resolve, mode=0):
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(_libc.syscall(_NR["openat2"], dirfd, _b(path), ctypes.byref(how),
                                ctypes.sizeof(how)), f"open {path}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1


def load_seccomp_bpf(bpf: bytes, flags=0):
    """Install a compiled classic-BPF seccomp program (8 bytes an instruction) on this thread.

    flags (SECCOMP_FILTER_FLAG_* bits) need seccomp(2); prctl cannot pass them.  Returns
    seccomp(2)'s result: the listener fd under SECCOMP_FILTER_FLAG_NEW_LISTENER."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if flags:
        return _check(_libc.syscall(_NR["seccomp"], SECCOMP_SET_MODE_FILTER,
                                    ctypes.c_uint(flags), ctypes.byref(prog)), "seccomp")
    else:
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
               "seccomp")


def seccomp_flag_supported(flag):
    """Whether this kernel knows the SECCOMP_FILTER_FLAG_* bit `flag`: with no program it
    answers EFAULT for a known flag and EINVAL for an unknown one, installing nothing."""
    if _libc.syscall(_NR["seccomp"], SECCOMP_SET_MODE_FILTER, ctypes.c_uint(flag), None) == 0:
        return True  # unreachable: a NULL program is never loaded
    return ctypes.get_errno() == errno.EFAULT
