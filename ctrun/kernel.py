"""The kernel seam: the syscalls of container set-up (mounts, namespaces, ids, capabilities,
seccomp, exec) all go through one object, `linux`.

Its methods are the real calls themselves (ctrun.libc's ctypes wrappers, os, resource),
held as class attributes, so a call costs one attribute lookup and nothing more.  Unit
tests shadow them on the instance with a recording double (tests/unit/recording_kernel.py)
and check the order of mounts, pivot_root, capability drops and seccomp without root;
deleting the instance attributes restores the real calls.
"""

import os
import resource

from . import libc


def _cap_limit(kind, caps):
    """Limit one capability set (inheritable, effective or permitted) to caps (numbers):
    python-prctl's cap_<kind>.limit(*caps), whose list of the others parses `caps` again
    for each capability it knows (~0.1 ms a set, on every start's path), made once."""
    import prctl  # loaded by runtime.security, before the root changes
    keep = set(caps)
    prctl.set_caps(([c for c in prctl.ALL_CAPS if c not in keep],
                    getattr(prctl, "cap_" + kind).flag, False))


def _set_no_new_privs():
    import prctl
    prctl.set_no_new_privs(1)


def _cgroup_attach(procs_fd):
    """Move the calling process into the cgroup whose cgroup.procs procs_fd holds open."""
    os.write(procs_fd, b"0")


class Kernel:
    # mounts
    mount = staticmethod(libc.mount)
    umount2 = staticmethod(libc.umount2)
    pivot_root = staticmethod(libc.pivot_root)
    open_tree_clone = staticmethod(libc.open_tree_clone)
    move_mount_fd = staticmethod(libc.move_mount_fd)
    idmap_tree = staticmethod(libc.idmap_tree)
    set_readonly_tree = staticmethod(libc.set_readonly_tree)
    fsmount = staticmethod(libc.fsmount)
    # namespaces and the processes in them
    unshare = staticmethod(libc.unshare)
    setns = staticmethod(libc.setns)
    sethostname = staticmethod(libc.sethostname)
    fork = staticmethod(os.fork)
    setsid = staticmethod(os.setsid)
    cgroup_attach = staticmethod(_cgroup_attach)
    chdir = staticmethod(os.chdir)
    fchdir = staticmethod(os.fchdir)
    getcwd = staticmethod(os.getcwd)
    # privileges
    set_dumpable = staticmethod(libc.set_dumpable)
    setrlimit = staticmethod(resource.setrlimit)
    capbset_drop = staticmethod(libc.capbset_drop)
    cap_limit = staticmethod(_cap_limit)
    clear_ambient_caps = staticmethod(libc.clear_ambient_caps)
    capset = staticmethod(libc.capset)
    set_keepcaps = staticmethod(libc.set_keepcaps)
    ambient_raise = staticmethod(libc.ambient_raise)
    umask = staticmethod(os.umask)
    setgroups = staticmethod(os.setgroups)
    setresgid = staticmethod(os.setresgid)
    setresuid = staticmethod(os.setresuid)
    setgid = staticmethod(os.setgid)
    setuid = staticmethod(os.setuid)
    set_no_new_privs = staticmethod(_set_no_new_privs)
    close_range = staticmethod(libc.close_range)
    seccomp = staticmethod(libc.load_seccomp_bpf)
    execve = staticmethod(os.execve)
    exit = staticmethod(os._exit)


Kernel.CALLS = tuple(n for n, v in vars(Kernel).items() if isinstance(v, staticmethod))
linux = Kernel()
