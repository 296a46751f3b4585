"""Where a store's warm server listens (run/server.sock, guarded by run/server.lock), and the
clean-up of a socket a killed server left.  Apart from ctrun.server so that the client
(which must stay light) and gc (below the front ends) can name it.

The warm server of an OCI state root (ctrun-oci --root, ctrun.oci.serving) keeps the same
files in a directory of its own below OCI_SERVERS, never inside the root: every name there
may be a container ID.  It is named by a hash of the root's absolute path (oci_run_dir),
which client.c computes the same way."""

import os

SOCK = "server.sock"
LOCK = "server.lock"
OCI_SERVERS = "/run/ctrun-oci-servers"


def lock_if_free(path, create=True):
    """The lock file at `path` held exclusively (an fd, the caller's to close), or None
    when another process holds it (or, create false, when there is no such file): whether
    this one may serve, or, once it gave it up, clean up after itself."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


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


def oci_run_dir(root):
    """The run directory of the warm server of OCI state root `root` (an absolute path):
    OCI_SERVERS/<its FNV-1a 64-bit hash>.  Two roots sharing a hash would share a server,
    which is harmless: each call carries its own --root."""
    h = 0xcbf29ce484222325
    for b in os.fsencode(root):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{OCI_SERVERS}/{h:016x}"


def fd_rights(fds):
    """sendmsg's ancillary data passing `fds` (SCM_RIGHTS); none when there are none."""
    import _socket
    import sys
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
             b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))] if fds else []


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


# `python -S` (bare=True below) then this: the caller's sys.path and prefix, then
# module.main() with sys.argv as `-m module` would set it
_BARE = ("import sys; path = sys.argv.pop(1).split(':'); "
         "sys.prefix = sys.exec_prefix = sys.argv.pop(1); "
         "sys.path += [p for p in path if p and p not in sys.path]; del sys.argv[0]; "
         "__import__(sys.argv[0]); sys.exit(sys.modules[sys.argv[0]].main())")


def exec_daemon(module, args, log, env=None, fd3=None, exec_fd=None, bare=False):
    """In a freshly forked child: `python -P -m module args` with stdin and stdout on
    /dev/null, stderr on `log`, fd 3 on `fd3` if given, nothing else open, every signal at
    its default and unblocked (what the caller ignored would stay ignored across exec).
    exec_fd (a pipe's write end) stays open until the exec closes it: its reader knows the
    new program runs.  -P: never a "ctrun" that happens to sit in the working directory.
    bare: without site's start-up (-S), whose .pth hooks' imports would stay in a
    long-lived daemon's memory (~0.5 MB of the monitor's); the site-packages directories
    this process has and its prefix are handed over instead, as setup.sh's ctrun-py does
    (none of its other entries: a script's directory must not be searched by a root
    daemon; PYTHONPATH goes with the environment); the module has a main()."""
    import sys
    from .procs import reset_signals
    reset_signals()
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log, 2)
    keep = 3
    if fd3 is not None:
        os.dup2(fd3, 3)
        keep = 4
    if exec_fd is not None:
        os.dup2(exec_fd, keep, inheritable=False)
        keep += 1
    os.closerange(keep, 1 << 16)
    argv = [sys.executable, "-P", "-m", module, *args]
    if bare:
        path = ":".join(p for p in sys.path if os.path.isabs(p) and ":" not in p and
                        os.path.basename(p) in ("site-packages", "dist-packages"))
        argv[2:3] = ["-S", "-c", _BARE, path, sys.prefix]
    if env is None:
        os.execv(sys.executable, argv)
    os.execve(sys.executable, argv, env)
