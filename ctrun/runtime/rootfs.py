"""The container's file system: overlay, /proc /sys /dev, binds, pivot_root, masked paths.

Runs inside the container init after it unshared its mount namespace.  Everything is
mounted below a private / so the kernel removes every mount with the namespace: no
host-visible mount exists, so a crash cannot leak one.  Paths inside the root are resolved
through file descriptors (ctrun.runtime.paths) and mounted via /proc/self/fd/N, so a
symlink planted in the image cannot redirect a mount onto the host.
"""

import errno
import os
import re
import stat

from ..kernel import linux
from ..libc import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY,
                    MS_REC, MS_REMOUNT, MS_STRICTATIME)
from . import paths, systemd

DEVICES = (  # name, major, minor
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
    ("tty", 5, 0),
)


def _fdp(fd):
    return f"/proc/self/fd/{fd}"


def lowerdir(fds):
    """overlayfs's lowerdir value for open directory descriptors (or detached mounts), top
    first.  Naming each layer through /proc/self/fd keeps the option short: the kernel
    takes one page of options, which ~200 of these fit in but only ~40 full store paths."""
    return ":".join(_fdp(fd) for fd in fds)


def _mount_in(root_fd, target, source, fstype, flags=0, data=None):
    fd = paths.mkdirs_in_root(root_fd, target)
    try:
        linux.mount(source, _fdp(fd), fstype, flags, data)
    finally:
        os.close(fd)


# bind sources cloned as detached mounts before the process entered a user namespace,
# where it may no longer traverse to them: source path -> [tree fd, is_dir]
_SOURCES = {}


# the root file system made by the parent as a detached mount (--userns: see
# overlay_tree below), attached instead of mounting the overlay here
_ROOT_TREE = []


def use_root_tree(fd):
    _ROOT_TREE.append(fd)


def open_sources(spec, extra=()):
    """Clone every bind source while still host root (before unshare(CLONE_NEWUSER))."""
    console = spec["annotations"].get("run.ctrun.console")
    for src in [m["source"] for m in spec["mounts"] if m["type"] == "bind"] + list(extra) + \
            ([console] if console else []):
        if src not in _SOURCES:
            _SOURCES[src] = [linux.open_tree_clone(src), os.path.isdir(src)]


def overlay_tree(pid, overlay, idmap):
    """The container's root file system as a detached overlay mount (an fd), made by the
    caller as host root once pid's user namespace has its maps.

    Made here rather than inside the namespace: a mount there could not read overlayfs's
    trusted.* xattrs, which mark the image layers' opaque directories.  With idmap, each
    layer is an idmapped clone through pid's namespace; the upper directory is owned by the
    mapped root already.  The container attaches the tree with move_mount."""
    from ..errors import HostUnsupported
    ufd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    trees = []
    try:
        for d in overlay["lower"]:
            trees.append(linux.open_tree_clone(d))
            if idmap:
                try:
                    linux.idmap_tree(trees[-1], ufd)
                except OSError as e:  # EINVAL/EPERM: the kernel or the file system cannot
                    raise HostUnsupported(
                        f"--userns needs idmapped mounts of the image layers ({e.strerror}): "
                        f"Linux 5.19+ with the store on ext4, xfs, btrfs or (6.3+) tmpfs; "
                        f"move the store (--root) or run without --userns") from None
        return linux.fsmount("overlay", {
            "lowerdir": lowerdir(trees),
            "upperdir": overlay["upper"], "workdir": overlay["work"]})
    finally:
        for fd in trees + [ufd]:
            os.close(fd)


def _attach(tree, target_fd):
    """Attach a detached mount onto target_fd; both fds are closed."""
    try:
        linux.move_mount_fd(tree, target_fd)
    finally:
        os.close(target_fd)
        os.close(tree)


def _bind(root_fd, src, target, readonly):
    """Bind a trusted host path onto a target resolved inside the root."""
    pre = _SOURCES.pop(src, None)
    if pre is not None:
        tree, is_dir = pre
        _attach(tree, paths.ensure_mount_target(root_fd, target, is_dir))
    else:
        sfd = os.open(src, os.O_PATH | os.O_CLOEXEC)
        try:
            is_dir = stat.S_ISDIR(os.fstat(sfd).st_mode)
            tfd = paths.ensure_mount_target(root_fd, target, is_dir)
            try:
                linux.mount(_fdp(sfd), _fdp(tfd), None, MS_BIND | MS_REC)
            finally:
                os.close(tfd)
        finally:
            os.close(sfd)
    if readonly:
        # the new mount sits on top of the old target: resolve the path again to reach it;
        # read-only down to every mount below the source (a tmpfs mounted in the host dir)
        tfd = paths.open_in_root(root_fd, target)
        try:
            linux.set_readonly_tree(tfd)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            _READONLY_LATER.append(target)  # Linux < 5.12: remounted one by one, see prepare
        finally:
            os.close(tfd)


# read-only volumes whose mounts are remounted one at a time after pivot_root, where
# /proc/self/mountinfo names them by their paths in the container
_READONLY_LATER = []

# flags of a mount (statvfs's ST_* -> MS_*) that a bind remount must repeat or it clears
# them: in a user namespace, clearing a locked one is refused
_KEEP_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
               os.ST_NOATIME: 1 << 10, os.ST_NODIRATIME: 1 << 11, os.ST_RELATIME: 1 << 21}


def _readonly_walk(target):
    """Remount read-only the mount at target and every mount below it."""
    top = os.path.normpath(os.path.join("/", target))
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                  for line in f]
    for p in points:
        if p == top or p.startswith(top.rstrip("/") + "/"):
            has = os.statvfs(p).f_flag
            keep = sum(ms for st, ms in _KEEP_FLAGS.items() if has & st)
            linux.mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)


# the container's null device (an O_PATH descriptor), bound over the masked files
_NULL = []


def null_device(dir_fd, name):
    """An O_PATH descriptor of dir_fd/name, checked on the descriptor itself to be the null
    device (char 1:3): masking binds it over host files, so anything else (the host's
    /dev/null turned into a regular file, which --userns binds) would show there instead."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    st = os.fstat(fd)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
        return fd
    os.close(fd)
    from ..errors import ContainerFailed
    raise ContainerFailed(f"cannot mask /proc and /sys files: the container's /dev/{name} is "
                          "not the null device (char 1:3); if the host's is not either, "
                          "restore it: rm /dev/null && mknod -m 666 /dev/null c 1 3")


def _mount_dev(root_fd, use_mknod):
    _mount_in(root_fd, "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME,
              "mode=755,size=65536k")
    dev = paths.open_in_root(root_fd, "/dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, major, minor in DEVICES:
            if use_mknod:
                os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev)
                os.chmod(name, 0o666, dir_fd=dev)
            else:  # in a user namespace mknod is refused: bind the host's node instead
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dev))
                linux.mount(f"/dev/{name}", f"{_fdp(dev)}/{name}", None, MS_BIND)
        # held for mask(): taken now, before any volume can cover /dev or /dev/null
        _NULL.append(null_device(dev, "null"))
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                             ("ptmx", "pts/ptmx")):
            os.symlink(target, name, dir_fd=dev)
        for d in ("pts", "shm", "mqueue"):
            os.mkdir(d, 0o755, dir_fd=dev)
    finally:
        os.close(dev)
    _mount_in(root_fd, "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5")
    _mount_in(root_fd, "/dev/shm", "shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=1777,size=65536k")
    _mount_in(root_fd, "/dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def console_on_terminal(fd):
    """/dev/console onto the terminal `fd` (an attached -t run's pty, from the container's
    own devpts): an init (systemd, sysvinit) writes its boot there, so the user sees it.
    In the container after pivot_root, while /dev is still only the runtime's tmpfs."""
    dev = os.open("/dev", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.close(os.open("console", os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o600, dir_fd=dev))
        linux.mount(_fdp(fd), f"{_fdp(dev)}/console", None, MS_BIND)
    finally:
        os.close(dev)


def _mount_cgroups(root_fd, layout, userns_dirs=None):
    """Mount the container's view of the cgroup hierarchies (its cgroup namespace root).

    In a user namespace cgroup v1 cannot be mounted: its directories are bound instead."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if layout["kind"] == "v2":
        _mount_in(root_fd, "/sys/fs/cgroup", "cgroup2", "cgroup2", flags)
        return
    _mount_in(root_fd, "/sys/fs/cgroup", "tmpfs", "tmpfs", flags, "mode=755,size=64k")
    if userns_dirs is not None:
        for base, host_dir in sorted(userns_dirs.items()):
            _bind(root_fd, host_dir, "/sys/fs/cgroup/" + base, False)
    else:
        for key, host_path in sorted(layout["v1"].items()):
            _mount_in(root_fd, "/sys/fs/cgroup/" + os.path.basename(host_path), "cgroup",
                      "cgroup", flags, "none," + key if key.startswith("name=") else key)
    if layout.get("v2") and userns_dirs is None:
        _mount_in(root_fd, "/sys/fs/cgroup/" + os.path.basename(layout["v2"]), "cgroup2",
                  "cgroup2", flags)
    fd = paths.open_in_root(root_fd, "/sys/fs/cgroup")
    try:  # the tmpfs holding the mount points is read-only, like Docker's
        linux.mount(None, _fdp(fd), None, MS_REMOUNT | MS_RDONLY | flags, "mode=755,size=64k")
    finally:
        os.close(fd)


def _bind_lxcfs(root_fd, binds):
    """LXCFS's files over the container's /proc and /sys ones (ctrun.runtime.lxcfs).  One
    LXCFS cannot serve (its daemon died since the start checked it) keeps the kernel's."""
    for src, target in binds or ():
        try:
            _bind(root_fd, src, target, False)
        except OSError:
            pass


def prepare(spec):
    """Build the container's root file system; returns with the process pivoted into it."""
    ann = spec["annotations"]
    root = spec["root"]["path"]
    linux.mount(None, "/", None, MS_REC | MS_PRIVATE)
    if _ROOT_TREE:
        # --userns: the mapped root may not walk into the store (it is private), so the tree
        # the parent made is stacked on this namespace's "/" and reached through its own
        # descriptor; absolute paths still resolve on the host's root below it until
        # pivot_root, which takes it as the new root like a tree mounted anywhere else
        root_fd = _ROOT_TREE.pop()
        top = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            linux.move_mount_fd(root_fd, top)
        finally:
            os.close(top)
    else:
        ov = ann["run.ctrun.overlay"]
        lower = [os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for d in ov["lower"]]
        try:
            linux.mount("overlay", root, "overlay", 0,
                  f"lowerdir={lowerdir(lower)},upperdir={ov['upper']},workdir={ov['work']}")
        finally:
            for fd in lower:
                os.close(fd)
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _mount_in(root_fd, "/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount_in(root_fd, "/sys", "sysfs", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _bind_lxcfs(root_fd, ann.get("run.ctrun.lxcfs"))
        if ann.get("run.ctrun.cgroup_layout"):
            _mount_cgroups(root_fd, ann["run.ctrun.cgroup_layout"],
                           ann.get("run.ctrun.cgroup_dirs") if ann.get("run.ctrun.userns_base")
                           is not None else None)
        _mount_dev(root_fd, ann.get("run.ctrun.mknod", True))
        if ann.get("run.ctrun.console"):  # a pty slave of the monitor's, which logs the master
            _bind(root_fd, ann["run.ctrun.console"], "/dev/console", False)
        for m in spec["mounts"]:
            if m["type"] == "bind":
                _bind(root_fd, m["source"], m["destination"], "ro" in m["options"])
            elif m["type"] == "tmpfs":
                _mount_in(root_fd, m["destination"], "tmpfs", "tmpfs",
                          *systemd.tmpfs_args(m["options"]))
        linux.fchdir(root_fd)
    finally:
        os.close(root_fd)
    linux.pivot_root(".", ".")  # the old root ends up stacked on "/": detach it
    linux.umount2(".", MNT_DETACH)
    linux.chdir("/")
    while _READONLY_LATER:
        _readonly_walk(_READONLY_LATER.pop())
    systemd.setup_inside(spec)
    if spec["root"].get("readonly"):
        linux.mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def mask(spec):
    """Hide /proc and /sys files that leak host state, make kernel knobs read-only."""
    null = _NULL.pop() if _NULL else None
    try:
        for p in spec["linux"].get("maskedPaths", []):
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                linux.mount("tmpfs", p, "tmpfs", MS_RDONLY, "size=0")
            else:  # the node checked by _mount_dev, not whatever /dev/null names now
                linux.mount(_fdp(null), p, None, MS_BIND)
    finally:
        if null is not None:
            os.close(null)
    for p in spec["linux"].get("readonlyPaths", []):
        if not os.path.exists(p):
            continue
        linux.mount(p, p, None, MS_BIND | MS_REC)
        linux.mount(None, p, None,
                    MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
