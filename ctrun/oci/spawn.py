"""Starting the warm server of an OCI state root (ctrun.oci.serving) from a cold call of
ctrun-oci: kept apart from the server's own code, which imports ctrun.oci.cli to warm it,
while the CLI imports this."""

import os

from ..serversock import LOCK, OCI_SERVERS, oci_run_dir


def run_dir(root):
    """The server's run directory for ctrun-oci's --root value `root` (None: the default)."""
    from .store import DEFAULT_ROOT
    return oci_run_dir(os.path.abspath(root or DEFAULT_ROOT))


def spawn(root):
    """Start the server of `root` in the background unless one holds its lock (it serves,
    or is starting).  Never fails the call: the verb runs cold all the same, and a server
    that cannot start says why in its server.log."""
    if os.environ.get("CTRUN_SERVER") == "off" or os.geteuid() != 0:
        return
    import fcntl
    run = run_dir(root)
    try:
        for d in (OCI_SERVERS, run):   # (the server makes them private: see run_dir())
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
        fd = os.open(os.path.join(run, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return   # a server holds it
    finally:
        os.close(fd)
    from ..client import server_env
    from ..serversock import exec_daemon
    from .store import DEFAULT_ROOT
    try:
        log = os.open(os.path.join(run, "server.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        env = server_env()
        # closed by the server's exec: once it reads EOF the server runs as itself (its
        # argv names it to a `ps` right after this call)
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except OSError:
        return
    if pid == 0:   # a double fork: the server is no child of this call's process
        try:
            os.setsid()
            if os.fork() == 0:
                exec_daemon("ctrun.server",
                            [os.path.abspath(root or DEFAULT_ROOT), "-", "--oci"], log, env,
                            exec_fd=w)
        finally:
            os._exit(0)
    os.close(log)
    os.close(w)
    os.waitpid(pid, 0)
    os.read(r, 1)
    os.close(r)
