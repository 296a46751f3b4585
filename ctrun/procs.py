"""A process named by its pid and its start time, so a recycled pid is never taken for it;
what a process hands on across exec of its signal state (reset_signals); and the resource
limits one process takes from another, as if it were its fork (limits_of, take_limits).

Kept apart from ctrun.state (which loads pathlib and re) because ctrun-oci's light verbs,
run several times per container by its clients, need only this."""

import os
# signal's own functions without the enums `import signal` builds (milliseconds of each
# ctrun-oci kill): the module the interpreter has loaded at start-up
import _signal
from _signal import pidfd_send_signal


def _stat(pid):
    """The fields of /proc/PID/stat after its comm (the state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the comm field may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(b")") + 2:].split()


def proc_start_time(pid):
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if gone or a zombie."""
    fields = _stat(pid)
    if fields is None or fields[0] == b"Z":
        return None
    return int(fields[19])


def parent_pid(pid):
    """The pid of PID's parent (a zombie's too), or None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def alive(pid, start_time):
    return bool(pid) and proc_start_time(pid) == start_time


def signal_pid(live, sig):
    """Signal the process {"pid", "pid_start"} by pidfd, checked against its start time
    (never a recycled pid); returns the pidfd (the caller closes it) or None when it is gone."""
    try:
        fd = os.pidfd_open(live["pid"])
    except ProcessLookupError:
        return None
    if proc_start_time(live["pid"]) != live["pid_start"]:
        os.close(fd)
        return None
    try:
        pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    return fd


def reaped():
    """(pid, status) of each child that has exited, reaping it, without waiting for more."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def reset_signals():
    """Every signal at its default action and unblocked, before an exec: ignored signals
    survive exec (Python ignores SIGPIPE and SIGXFSZ, a monitor or a background job more),
    and so does the mask."""
    for sig in range(1, _signal.NSIG):
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass   # SIGKILL, SIGSTOP, and the numbers no signal has
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def limits_of(pid=0):
    """[[resource, soft, hard], ...]: every resource limit of process `pid` (0: this one)."""
    import resource
    return [[r, *resource.prlimit(pid, r)]
            for r in (getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))]


def take_limits(limits):
    """Set limits_of() another process as this one's, as its fork would have had them;
    those above this process's hard limit cannot be had without CAP_SYS_RESOURCE and stay
    as they are."""
    import resource
    for r, soft, hard in limits:
        try:
            resource.setrlimit(r, (soft, hard))
        except (OSError, ValueError):
            pass
