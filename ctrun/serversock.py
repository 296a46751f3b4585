"""Where a store's warm server listens (run/server.sock, guarded by run/server.lock), and the
clean-up of a socket a killed server left.  Apart from ctrun.server so that the client
(which must stay light) and gc (below the front ends) can name it."""

import os

SOCK = "server.sock"
LOCK = "server.lock"


def remove_stale(run_dir):
    """Remove the socket a killed server left in the store's `run_dir` (nothing holds the
    server lock); True if there was one.  (A client copes with it too: it starts a new
    server.)"""
    import fcntl
    path = os.path.join(run_dir, SOCK)
    if not os.path.exists(path):
        return False
    try:
        fd = os.open(os.path.join(run_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True
    except BlockingIOError:
        return False  # a live server's
    finally:
        os.close(fd)


def passed_fds(ancdata):
    """The fds an SCM_RIGHTS message carried (recvmsg's ancillary data)."""
    import _socket
    import sys
    fds = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder)
                    for i in range(0, len(data) - len(data) % 4, 4)]
    return fds


def exec_daemon(module, args, log, env=None, fd3=None):
    """In a freshly forked child: `python -P -m module args` with stdin and stdout on
    /dev/null, stderr on `log`, fd 3 on `fd3` if given, nothing else open.  -P: never a
    "ctrun" that happens to sit in the working directory."""
    import sys
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log, 2)
    if fd3 is not None:
        os.dup2(fd3, 3)
    os.closerange(3 if fd3 is None else 4, 1 << 16)
    argv = [sys.executable, "-P", "-m", module, *args]
    if env is None:
        os.execv(sys.executable, argv)
    os.execve(sys.executable, argv, env)
