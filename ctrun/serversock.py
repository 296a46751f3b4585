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
