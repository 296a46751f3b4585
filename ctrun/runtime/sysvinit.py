"""sysvinit (Debian's sysvinit-core) as a container's PID 1: how it is stopped.

Its init ignores SIGTERM, and Debian's inittab maps SIGPWR to /etc/init.d/powerfail,
which Debian does not ship, and SIGINT to a reboot.  `telinit 0` is what halts it: a
runlevel request on init's control FIFO /run/initctl.  ctrun writes that request itself
(no command of the container's is run), and the halt script's final reboot(2) then ends
the container: inside a PID namespace the kernel kills only that namespace's init, with
SIGINT for a halt (hence exit code 130).  For that last step the init keeps CAP_SYS_BOOT,
as LXC gives it; without it the container would sit in runlevel 0 until SIGKILL.
"""

import os
import stat
import struct

CAPS = ("CAP_SYS_BOOT",)
# the signal sent when the request cannot be written (an inittab prepared for LXC maps
# SIGPWR to a shutdown)
STOP_SIGNAL = "SIGPWR"

_INIT_MAGIC = 0x03091969
_INIT_CMD_RUNLVL = 1
_REQUEST_SIZE = 384   # sizeof(struct init_request) of sysvinit's initreq.h
_SLEEP = 3            # seconds between the TERM and KILL of processes leaving the runlevel


def adjust(spec, cdir, cap_drop=()):
    """The spec of a container whose PID 1 is sysvinit: what systemd.adjust gives an init,
    CAP_SYS_BOOT unless --cap-drop names it, and its halt request as the stop."""
    from . import systemd
    systemd.adjust(spec, cdir, "sysvinit")
    caps = spec["process"]["capabilities"]
    add = set() if "ALL" in cap_drop else set(CAPS) - set(cap_drop)
    for k in ("bounding", "effective", "permitted"):
        caps[k] = sorted(set(caps[k]) | add)
    spec["annotations"]["run.ctrun.halt"] = "initctl"


def request_halt(pid, pid_start):
    """Ask the sysvinit that is PID 1 of a container (host pid `pid`, started at
    `pid_start`) for runlevel 0, as telinit does.  The process is pinned by a /proc
    descriptor checked against its start time, so a recycled pid never leads into
    another root; the FIFO is looked up inside the container's root (its symlinks resolved
    there) and must be a FIFO that someone reads.  False when the request was not written."""
    from . import paths
    from ..errors import CtrunError
    from ..state import proc_start_time
    req = struct.pack("iiii", _INIT_MAGIC, _INIT_CMD_RUNLVL, ord("0"), _SLEEP)
    req += bytes(_REQUEST_SIZE - len(req))
    try:
        proc = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if proc_start_time(pid) != pid_start:
                return False
            root = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc)
        finally:
            os.close(proc)
        try:
            pfd = paths.open_in_root(root, "/run/initctl",
                                     os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        finally:
            os.close(root)
        try:
            if not stat.S_ISFIFO(os.fstat(pfd).st_mode):
                return False
            # nonblocking: ENXIO rather than a wait when nobody reads the FIFO
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(pfd)
        try:
            return os.write(fd, req) == len(req)
        finally:
            os.close(fd)
    except (OSError, CtrunError):
        return False
