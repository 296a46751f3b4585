"""systemd as a container's PID 1: what it needs from the runtime to boot unprivileged.

systemd recognises a container by `container=` in its environment and then skips the
mounts and devices only a machine has.  It still needs the runtime to provide, before it
starts (it lacks CAP_SYS_ADMIN to do any of it itself): tmpfs on /run, /run/lock and /tmp;
a /dev/console (a pty whose master the monitor logs); a machine-id; a cgroup subtree of its
own, writable (the container's cgroup namespace, already mounted rw by rootfs); and
SIGRTMIN+3 as the stop signal, since it ignores SIGTERM as PID 1.
"""

import os
import stat

MANAGER = "ctrun"
STOP_SIGNAL = "SIGRTMIN+3"

# destination, tmpfs options (nosuid and nodev always): what systemd mounts on a machine
TMPFS = (
    ("/run", "mode=755,size=20%"),
    ("/run/lock", "mode=1777,size=5m,noexec"),
    ("/tmp", "mode=1777,size=50%"),
)


def is_systemd(view, argv, path_env):
    """Whether argv[0] is systemd in the image's layers (a layers.View): see pid1.kind."""
    from . import pid1
    return pid1.kind(view, argv, path_env) == pid1.SYSTEMD


def adjust(spec, cdir, init="systemd"):
    """Give a spec whose PID 1 is systemd what systemd needs (see the module's comment).
    sysvinit (init="sysvinit") boots from the same: a fresh /run, a console for its boot
    messages, container= for scripts that ask."""
    proc = spec["process"]
    proc["env"] = [e for e in proc["env"] if not e.startswith("container=")] + \
        [f"container={MANAGER}"]
    spec["mounts"][:0] = [{"destination": d, "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev"] + opts.split(",")}
                          for d, opts in TMPFS]
    ann = spec["annotations"]
    ann["run.ctrun.init"] = init
    if init == "systemd":
        ann["run.ctrun.systemd"] = True
    ann["run.ctrun.machine_id"] = machine_id(cdir)


def machine_id(cdir):
    """The container's own machine-id: 32 random hex digits made once, kept in its directory."""
    path = os.path.join(str(cdir), "machine-id")
    try:
        with open(path) as f:
            mid = f.read().strip()
        if len(mid) == 32 and all(c in "0123456789abcdef" for c in mid):
            return mid
    except FileNotFoundError:
        pass
    mid = os.urandom(16).hex()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(mid + "\n")
    return mid


def tmpfs_args(options):
    """(mount flags, data) of a tmpfs mount's OCI options."""
    from .. import libc
    named = {"nosuid": libc.MS_NOSUID, "nodev": libc.MS_NODEV, "noexec": libc.MS_NOEXEC,
             "ro": libc.MS_RDONLY}
    flags, data = 0, []
    for o in options:
        if o in named:
            flags |= named[o]
        elif o not in ("rw", ""):
            data.append(o)
    return flags, ",".join(data)


def setup_inside(spec):
    """In the container init, after pivot_root: the files systemd reads at boot.  /run is
    the runtime's fresh tmpfs; /etc is the container's own (opened without following a
    final symlink, so a planted one cannot aim the write elsewhere)."""
    ann = spec["annotations"]
    if not ann.get("run.ctrun.init"):
        return
    os.makedirs("/run/host", mode=0o755, exist_ok=True)
    _write("/run/host/container-manager", MANAGER + "\n", 0o444)
    mid = ann.get("run.ctrun.machine_id")
    if mid and not _has_machine_id():
        try:
            _write("/etc/machine-id", mid + "\n", 0o444)
        except OSError:
            pass  # a read-only root: systemd then makes a transient one itself


def _has_machine_id():
    """Whether the image's /etc/machine-id holds one (a FIFO or device is not read: nothing
    the image planted may block or feed the init)."""
    try:
        fd = os.open("/etc/machine-id", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                     os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode) and len(f.read(64).strip()) == 32


def _write(path, text, mode):
    try:
        os.unlink(path)   # a symlink or anything else left in its place
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
