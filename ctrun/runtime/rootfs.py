"""The container's file system: overlay, /proc /sys /dev, binds, pivot_root, masked paths.

Runs inside the container init after it unshared its mount namespace.  Everything is
mounted below a private / so the kernel removes every mount with the namespace: no
host-visible mount exists, so a crash cannot leak one.  Paths inside the root are resolved
through file descriptors (ctrun.runtime.paths) and mounted via /proc/self/fd/N, so a
symlink planted in the image cannot redirect a mount onto the host.
"""

import errno
import os
import stat

from .. import mountinfo
from ..errors import InvalidInput
from ..kernel import linux
from ..libc import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY,
                    MS_REC, MS_REMOUNT, MS_SLAVE, MS_STRICTATIME)
from . import devices, lxcfs, mounts, paths, sysctl, systemd

DEVICES = devices.DEFAULT


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


# callables prepare() runs after the mounts, just before pivot_root (ctrun-oci's hooks)
_BEFORE_PIVOT = []


def before_pivot(fn):
    _BEFORE_PIVOT.append(fn)


def use_root_tree(fd):
    _ROOT_TREE.append(fd)


def open_sources(spec, extra=()):
    """Clone every bind source while still host root (before unshare(CLONE_NEWUSER)); an
    OCI spec's root directory too, which the namespace's root may not be able to walk to."""
    console = spec["annotations"].get("run.ctrun.console")
    oci = _is_oci(spec)
    # (source, recursive): an OCI bind without rbind takes the source mount alone
    for src, rec in [(m["source"], not oci or "rbind" in (m.get("options") or ()))
                     for m in spec["mounts"] if mounts.is_bind(m)] + \
            [(s, True) for s in list(extra) + ([console] if console else []) +
             (["/sys"] if oci and any(m.get("type") == "sysfs" for m in spec["mounts"])
              else [])]:
        if src not in _SOURCES:
            _SOURCES[src] = [linux.open_tree_clone(src, rec), os.path.isdir(src)]
    if oci:
        use_root_tree(linux.open_tree_clone(spec["root"]["path"]))


def _is_oci(spec):
    """A spec from the OCI front end: only its own mounts, its root directory as is."""
    return bool(spec["annotations"].get("run.ctrun.oci"))


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


def _bind(root_fd, src, target, readonly, recursive=True, extra=0):
    """Bind a trusted host path onto a target resolved inside the root; `extra` mount flags
    (nosuid, noexec...) come from a remount, which a bind needs for them."""
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
                linux.mount(_fdp(sfd), _fdp(tfd), None, MS_BIND | (MS_REC if recursive else 0))
            finally:
                os.close(tfd)
        finally:
            os.close(sfd)
    if extra:
        tfd = paths.open_in_root(root_fd, target)
        try:
            _remount_bind(_fdp(tfd), extra | (MS_RDONLY if readonly else 0))
        finally:
            os.close(tfd)
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


def _kept_flags(path):
    """The flags of the mount at path that a bind remount must repeat."""
    has = os.statvfs(path).f_flag
    return sum(ms for st, ms in _KEEP_FLAGS.items() if has & st)


def _remount_bind(path, flags):
    """Remount the bind mount at path with flags; in a user namespace the mount's locked
    flags (those of a mount made outside it) must be repeated: retried with them."""
    try:
        linux.mount(None, path, None, MS_BIND | MS_REMOUNT | flags)
    except PermissionError:
        linux.mount(None, path, None, MS_BIND | MS_REMOUNT | flags | _kept_flags(path))


def _readonly_walk(target):
    """Remount read-only the mount at target and every mount below it."""
    top = os.path.normpath(os.path.join("/", target))
    with open("/proc/self/mountinfo") as f:
        points = [m.point for m in mountinfo.parse(f)]
    for p in points:
        if p == top or p.startswith(top.rstrip("/") + "/"):
            linux.mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _kept_flags(p))


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
        _devices_in(dev, use_mknod)
        for d in ("pts", "shm", "mqueue"):
            os.mkdir(d, 0o755, dir_fd=dev)
    finally:
        os.close(dev)
    _mount_in(root_fd, "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5")
    _mount_in(root_fd, "/dev/shm", "shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=1777,size=65536k")
    _mount_in(root_fd, "/dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _devices_in(dev, use_mknod):
    """The default devices in a fresh /dev (an O_RDONLY descriptor)."""
    devices.make_defaults(dev, use_mknod)
    # held for mask(): taken now, before any volume can cover /dev or /dev/null
    _NULL.append(null_device(dev, "null"))


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


def _mount_cgroups(root_fd, layout, userns_dirs=None, top="/sys/fs/cgroup", extra=0):
    """Mount the container's view of the cgroup hierarchies (its cgroup namespace root) at
    top; `extra` flags (an OCI mount's ro) apply to each hierarchy.

    In a user namespace cgroup v1 cannot be mounted, and without a cgroup namespace a mount
    would show the host's whole tree: the container's own directories (`dirs`, hierarchy
    base name -> host directory) are bound instead, as runc does."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if layout["kind"] == "v2":
        if userns_dirs:
            _bind(root_fd, next(iter(userns_dirs.values())), top, bool(extra & MS_RDONLY))
        else:
            _mount_in(root_fd, top, "cgroup2", "cgroup2", flags | extra)
        return
    _mount_in(root_fd, top, "tmpfs", "tmpfs", flags, "mode=755,size=64k")
    if userns_dirs is not None:
        for base, host_dir in sorted(userns_dirs.items()):
            _bind(root_fd, host_dir, f"{top}/{base}", extra & MS_RDONLY)
    else:
        for key, host_path in sorted(layout["v1"].items()):
            _mount_in(root_fd, f"{top}/{os.path.basename(host_path)}", "cgroup",
                      "cgroup", flags | extra, "none," + key if key.startswith("name=") else key)
    if layout.get("v2") and userns_dirs is None:
        _mount_in(root_fd, f"{top}/{os.path.basename(layout['v2'])}", "cgroup2",
                  "cgroup2", flags | extra)
    fd = paths.open_in_root(root_fd, top)
    try:  # the tmpfs holding the mount points is read-only, like Docker's
        linux.mount(None, _fdp(fd), None, MS_REMOUNT | MS_RDONLY | flags, "mode=755,size=64k")
    finally:
        os.close(fd)


def _bind_lxcfs(root_fd, binds):
    """LXCFS's files over the container's /proc and /sys ones (ctrun.runtime.lxcfs).  One
    LXCFS cannot serve (its daemon died since the start checked it) keeps the kernel's."""
    for src, target in binds or ():
        tree = lxcfs.take_tree(src)   # cloned ahead by a warm server's spare
        if tree is not None:
            try:
                _attach(tree, paths.ensure_mount_target(root_fd, target, False))
                continue
            except OSError:
                pass   # bound by its path instead
        try:
            _bind(root_fd, src, target, False)
        except OSError:
            pass


def prepare(spec):
    """Build the container's root file system; returns with the process pivoted into it."""
    ann = spec["annotations"]
    root = spec["root"]["path"]
    oci = _is_oci(spec)
    prop = spec["linux"].get("rootfsPropagation") if oci else None
    # runc's default for an OCI spec is rslave: the host's later mounts still reach it;
    # an unbindable root could not be bound onto itself: made so once pivoted
    if oci and "unbindable" not in (prop or ""):
        linux.mount(None, "/", None, mounts.PROPAGATION.get(prop, MS_SLAVE | MS_REC))
    else:
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
    elif oci:
        root_fd = _bind_root(root, prop)
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
        if oci:
            _mount_listed(root_fd, spec)
        else:
            _mount_ctrun(root_fd, spec)
        linux.fchdir(root_fd)
    finally:
        os.close(root_fd)
    if oci:  # through the host's /proc, whose sysctl files show the caller's namespaces
        sysctl.write_all(spec)
    while _BEFORE_PIVOT:  # the OCI hooks' moment: mounts done, the host's paths still seen
        _BEFORE_PIVOT.pop(0)()
    linux.pivot_root(".", ".")  # the old root ends up stacked on "/": detach it
    linux.umount2(".", MNT_DETACH)
    linux.chdir("/")
    while _READONLY_LATER:
        _readonly_walk(_READONLY_LATER.pop())
    systemd.setup_inside(spec)
    if spec["root"].get("readonly"):
        _remount_bind("/", MS_RDONLY)


def _mount_ctrun(root_fd, spec):
    """A ctrun container's file systems: the kernel's, /dev, its console, its volumes."""
    ann = spec["annotations"]
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


def _bind_root(root, prop):
    """An OCI spec's root directory bound onto itself (pivot_root takes a mount point);
    returns its descriptor.  pivot_root refuses a shared new root, a shared mount under it
    or a shared "/": those two are made slaves (private for a shared or private
    rootfsPropagation, which mask() applies at its end) before the bind, which
    takes its propagation from them."""
    hold = MS_SLAVE if prop in (None, "slave", "rslave") else MS_PRIVATE
    for point in dict.fromkeys((_mount_point_of(root), "/")):
        linux.mount(None, point, None, hold)
    linux.mount(root, root, None, MS_BIND | MS_REC)
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _mount_point_of(path):
    """The mount point of the mount holding path (a trusted host path)."""
    p = os.path.normpath(path)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def _host_null(spec):
    """/dev/null for mask() when the spec gives the container no /dev of the runtime's."""
    if not _NULL and spec["linux"].get("maskedPaths"):
        dev = os.open("/dev", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _NULL.append(null_device(dev, "null"))
        finally:
            os.close(dev)


def _mount_listed(root_fd, spec):
    """An OCI spec's mounts, in its order, and nothing else; its devices once they are.

    A tmpfs on /dev gets the default devices at once, so a later mount (a bind of a host
    device onto /dev/null, as podman does) covers the node rather than colliding with it."""
    ann = spec["annotations"]
    userns = any(ns["type"] == "user" for ns in spec["linux"]["namespaces"])
    for m in spec["mounts"]:
        dest = m["destination"]
        flags, props, data = mounts.parse(m.get("options"))
        if mounts.is_bind(m):
            _bind(root_fd, m["source"], dest, bool(flags & MS_RDONLY), bool(flags & MS_REC),
                  flags & mounts.REMOUNT_FLAGS & ~MS_RDONLY)
        elif m.get("type") == "cgroup":
            own_ns = any(ns["type"] == "cgroup" and not ns.get("path")
                         for ns in spec["linux"]["namespaces"])
            _mount_cgroups(root_fd, ann.get("run.ctrun.cgroup_layout") or _host_layout(),
                           ann.get("run.ctrun.cgroup_dirs") if userns or not own_ns
                           else None, dest, flags & mounts.REMOUNT_FLAGS)
        else:
            fstype = m.get("type")
            try:
                _mount_in(root_fd, dest, m.get("source") or fstype, fstype, flags, data)
            except PermissionError:
                if not (userns and fstype == "sysfs"):
                    raise
                # a user namespace may mount sysfs only with a network namespace of its
                # own: with a joined one (the host's, a pod's) the host's /sys is bound
                _bind(root_fd, "/sys", dest, bool(flags & MS_RDONLY), True,
                      flags & mounts.REMOUNT_FLAGS & ~MS_RDONLY)
            if fstype == "tmpfs" and os.path.normpath(dest) == "/dev":
                dev = paths.open_in_root(root_fd, "/dev", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    _devices_in(dev, not userns)
                finally:
                    os.close(dev)
        for flag in props:
            fd = paths.open_in_root(root_fd, dest)
            try:
                linux.mount(None, _fdp(fd), None, flag)
            finally:
                os.close(fd)
    devices.make_listed(root_fd, spec["linux"].get("devices") or (), not userns)
    _host_null(spec)


def _host_layout():
    """The host's cgroup hierarchies, as the run.ctrun.cgroup_layout annotation gives them."""
    from ..cgroups import detect
    lay = detect()
    return {"kind": lay.kind, "v1": {k: str(p) for k, p in lay.v1.items()},
            "v2": str(lay.v2) if lay.v2 else None}


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
    prop = spec["linux"].get("rootfsPropagation") if _is_oci(spec) else None
    if prop:  # last: an unbindable root would refuse the binds above
        linux.mount(None, "/", None, mounts.PROPAGATION[prop])


# fields of a spec that ctrun cannot honour when set (a value that means "nothing" passes)
_UNSUPPORTED = (
    ("linux", "intelRdt"), ("linux", "timeOffsets"), ("linux", "memoryPolicy"),
    ("linux", "netDevices"), ("linux", "mountLabel"), ("process", "selinuxLabel"),
    ("process", "apparmorProfile"), ("process", "ioPriority"), ("process", "scheduler"),
    ("process", "execCPUAffinity"), (None, "solaris"), (None, "windows"), (None, "vm"),
    (None, "zos"),
)


def check_supported(spec):
    """Refuse, before anything is created, what ctrun cannot honour in an OCI spec: one
    line naming the field.  The front end calls it first, so a refusal leaves nothing."""
    def refuse(field, why="is not supported by ctrun"):
        raise InvalidInput(f"{field} {why}; remove it from config.json")
    for section, key in _UNSUPPORTED:
        value = (spec.get(section) or {}) if section else spec
        if value.get(key):
            refuse(f"{section + '.' if section else ''}{key}")
    lin = spec.get("linux") or {}
    pers = lin.get("personality")
    if pers and (pers.get("domain", "LINUX") != "LINUX" or pers.get("flags")):
        refuse("linux.personality", "other than domain LINUX without flags is not supported "
               "by ctrun")
    prop = lin.get("rootfsPropagation")
    if prop and prop not in mounts.PROPAGATION:
        refuse(f"linux.rootfsPropagation {prop!r}", f"is not one of "
               f"{', '.join(mounts.PROPAGATION)}")
    root = (spec.get("root") or {}).get("path", "")
    if not root.startswith("/") or not os.path.isdir(root):
        raise InvalidInput(f"root.path {root!r} is not an existing directory given by an "
                           "absolute path; fix config.json")
    for m in spec.get("mounts") or ():
        where = f"mounts entry {m.get('destination')!r}"
        if not str(m.get("destination", "")).startswith("/"):
            raise InvalidInput(f"{where}: destination must be an absolute path; fix config.json")
        if m.get("uidMappings") or m.get("gidMappings"):
            refuse(f"{where}: uidMappings/gidMappings (idmapped mounts)")
        if not mounts.is_bind(m) and not m.get("type"):
            raise InvalidInput(f"{where}: type is missing; give the file system type "
                               "(tmpfs, proc...) or a bind option")
    from .. import namespaces
    namespaces.check(lin.get("namespaces") or ())
    if spec.get("hostname") and not namespaces.new(lin.get("namespaces") or (), "uts"):
        raise InvalidInput("hostname needs a new uts namespace (it would name the host's "
                           "or a joined one); add {\"type\": \"uts\"} to linux.namespaces "
                           "or remove hostname")
    for d in lin.get("devices") or ():
        devices.check(d)
    sysctl.check(spec)
    from . import security
    security.check_capabilities((spec.get("process") or {}).get("capabilities") or {})
