"""The `ctrun` command: a thin client of its store's warm server (ctrun.server).

/usr/local/bin/ctrun is this module's protocol compiled (client.c), which serves a call to a
running server by itself and execs this one (setup.sh's ctrun-py) for everything else; a
change to the protocol or to store_root's decisions is made in both
(tests/integration/test_compiled_client.py holds them together).

It imports almost nothing (os, sys, _socket, _signal: no json, argparse or other ctrun
module), so a call costs little more than the interpreter's start.  It finds the store as
the CLI does (--root, $CTRUN_ROOT, the default), sends its argv, environment, umask,
stdin/stdout/stderr and working directory to <store>/run/server.sock, relays the signals
a CLI gets (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, a window resize) and exits as the worker
that ran the command did (its code, or killed by its signal).

With no server it starts one (same environment and store) and retries; a stale socket of a
crashed server is met the same way.  The command runs in this process instead (ctrun.cli,
a cold start) where the server cannot or should not take it: --help, --debug, no verb,
`lab`, a store not made yet (a server would have to create it), not root (the CLI's own
refusal), CTRUN_SERVER=off, or a server that cannot be started.  CTRUN_SERVER=require makes that
last case an error instead (the tests use it to prove the server ran the command).
"""

import os
import sys

import _signal
import _socket

# the server imports SOCK from here
from .serversock import SOCK, exec_daemon, fd_rights  # noqa: F401
MAGIC = b"ctrun1"
OCI_MAGIC = b"ctrun-oci1"   # a ctrun-oci server's (client.c built with -DCTRUN_OCI)
DEFAULT_ROOT = "/var/lib/ctrun"  # ctrun.state.DEFAULT_ROOT, not imported: it costs ~5 ms
# the signals a CLI gets from its terminal or its caller, passed on to the worker
RELAYED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
           _signal.SIGWINCH)
_HELP = ("-h", "--h", "--he", "--hel", "--help")
_ROOT = ("--r", "--ro", "--roo", "--root")  # argparse takes an unambiguous prefix
_SUN_PATH = 108  # sockaddr_un's path, NUL included
# verbs run in-process: the lab runs for minutes (a warm start saves nothing) and names
# what it makes after its own pid, which its caller may look for
_LOCAL_VERBS = ("lab",)


def package_dir():
    """The ctrun package this code runs from: a server of another one (an upgrade, another
    checkout) does not serve this client."""
    return os.path.dirname(os.path.realpath(__file__))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    root = store_root(argv)
    if root is not None:
        code = _call(root, argv)
        if code is not None:
            return code
        if os.environ.get("CTRUN_SERVER") == "require":
            sys.stderr.write(f"ctrun: error: no ctrun server could serve {root}; see "
                             f"{root}/run/server.log, or unset CTRUN_SERVER\n")
            return 1
    from .cli import main as cli_main
    return cli_main(argv)


def store_root(argv):
    """The absolute store directory of this call if the server should run it, else None."""
    if os.environ.get("CTRUN_SERVER") == "off" or os.geteuid() != 0:
        return None
    root = verb = None
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            break
        if tok in _HELP:
            return None
        if verb is None:
            if not tok.startswith("-"):
                verb = tok
            else:
                name, eq, value = tok.partition("=")
                if name not in _ROOT:
                    return None  # --debug, or what the parser refuses: in-process
                if not eq:
                    i += 1
                    if i == len(argv):
                        return None
                    value = argv[i]
                root = value
        i += 1
    if verb is None or verb in _LOCAL_VERBS:
        return None
    root = os.path.abspath(root or os.environ.get("CTRUN_ROOT") or DEFAULT_ROOT)
    if not os.path.isdir(os.path.join(root, "run")) or \
            len(os.fsencode(root)) + len("/run/" + SOCK) >= _SUN_PATH:
        return None
    return root


class _Relay:
    """Signals caught before the request is sent wait in `pending`."""
    sock = None

    def __init__(self):
        self.pending = []
        self.old = {s: _signal.signal(s, self) for s in RELAYED}

    def __call__(self, sig, frame):
        if self.sock is None:
            self.pending.append(sig)
            return
        try:
            self.sock.send(bytes((sig,)))
        except OSError:
            pass

    def attach(self, sock):
        self.sock = sock
        for sig in self.pending:
            self(sig, None)

    def restore(self):
        """Back to the CLI's own handlers (an in-process fallback); a signal that came
        meanwhile ends this process as it would have ended the CLI."""
        for s, h in self.old.items():
            _signal.signal(s, h)
        for sig in self.pending:
            if sig != _signal.SIGWINCH:
                _die_by(sig)


def _call(root, argv):
    """Run argv on the store's server; its exit code, or None when no server could."""
    run = os.path.join(root, "run")
    data = _request(argv)
    relay = _Relay()
    fds, opened = _passed_fds()
    saved_tty = None
    if os.isatty(0):
        import termios
        try:
            saved_tty = termios.tcgetattr(0)
        except termios.error:
            pass
    try:
        for _ in range(4):
            s = _connect(os.path.join(run, SOCK), run)
            if s is None:
                break
            try:
                n = s.sendmsg([data], fd_rights(fds))
                if n < len(data):
                    # never an empty send: once the server has read the whole request it
                    # may run it, answer and close before this line, and a send on a
                    # closed connection fails even with nothing to send (EPIPE): the
                    # retry below would run the command a second time
                    s.sendall(data[n:])
                first = s.recv(1)
            except OSError:
                first = b""
            if first == b"S":
                break
            s.close()
            if first not in (b"", b"m"):
                s = None  # refused: in-process
                break
            # b"": the server left before taking it (its idle exit); b"m": it runs another
            # ctrun's code and retires; the next connect starts a server of ours
        else:
            s = None
    finally:
        for fd in opened:
            os.close(fd)
    if s is None:
        relay.restore()
        return None
    relay.attach(s)
    reply = b""
    while not reply.endswith(b"\n"):
        try:
            chunk = s.recv(64)
        except OSError:
            chunk = b""
        if not chunk:
            break
        reply += chunk
    if reply[:1] == b"x" and reply[1:-1].isdigit():
        return int(reply[1:-1])
    # the worker was killed (the terminal may be left raw by a -t relay), or the server
    # died while its worker ran this command (the worker got SIGHUP)
    if saved_tty is not None:
        import termios
        try:
            termios.tcsetattr(0, termios.TCSADRAIN, saved_tty)
        except termios.error:
            pass
    if reply[:1] == b"k" and reply[1:-1].isdigit() and 0 < int(reply[1:-1]) < _signal.NSIG:
        _die_by(int(reply[1:-1]))
        return 128 + int(reply[1:-1])
    sys.stderr.write(f"ctrun: error: the ctrun server of {root} stopped during this command; "
                     f"see {run}/server.log\n")
    return 1


def _die_by(sig):
    """End this process by `sig`, as the worker ended (its parent sees the same status)."""
    sys.stdout.flush()
    try:
        _signal.signal(sig, _signal.SIG_DFL)
    except (OSError, ValueError):
        pass   # SIGKILL, SIGSTOP: their action cannot be changed (nor caught)
    os.kill(os.getpid(), sig)


def _request(argv, magic=MAGIC):
    """The request: length, then NUL-separated fields (none can hold a NUL: argv and the
    environment come from execve); magic: the kind of server it is for (OCI_MAGIC: a
    ctrun-oci one, as client.c built with -DCTRUN_OCI sends)."""
    umask = os.umask(0o022)
    os.umask(umask)
    payload = b"\0".join([magic, os.fsencode(package_dir()), b"%o" % umask,
                          b"%d" % len(argv), *map(os.fsencode, argv),
                          *(k + b"=" + v for k, v in os.environb.items())])
    return len(payload).to_bytes(4, "little") + payload


def _passed_fds():
    """(stdin, stdout, stderr, cwd) to send, and those opened here to close afterwards; a
    closed stdio fd is sent as /dev/null."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            opened.append(os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC))
            fds.append(opened[-1])
    try:
        opened.append(os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError:
        opened.append(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    fds.append(opened[-1])
    return fds, opened


def _connect(path, run):
    """A connection to the server, starting one if none listens; None if that fails."""
    spawned = 0
    deadline = None
    while True:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.connect(path)
            # root's server only: a socket someone else bound in the store (a --root
            # in a directory they can write) gets nothing of this call: no fds, no
            # environment
            cred = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
            if int.from_bytes(cred[4:8], sys.byteorder) != 0:
                s.close()
                return None
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
        except OSError:
            s.close()
            return None
        if spawned < 2:
            spawned += 1
            started = _spawn(run)
            if started is None:
                return None  # it failed: see run/server.log
            continue
        # another client's server holds the lock and is still starting
        import time
        deadline = deadline or time.monotonic() + 10
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def server_env():
    """This process's environment for a server it starts, which must import the ctrun this
    code runs: an installed one its interpreter finds by itself (as the monitor's does; put
    on PYTHONPATH, site-packages would come before the standard library), a checkout's is
    named."""
    env = dict(os.environ)
    here = os.path.dirname(package_dir())
    if os.path.basename(here) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = here + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _spawn(run):
    """Start the store's server with this process's environment, as a child of the store's
    monitor (a double fork: the monitor is nobody's child; it starts the server, or has the
    running monitor start it); once it listens, True; False if another server holds the
    store's lock (it is starting or leaving); None if it failed (see run/server.log)."""
    r, w = os.pipe()
    log = os.open(os.path.join(run, "server.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    env = server_env()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                # the store's monitor, which starts the server as its child (so the
                # containers its workers start detached are the monitor's to supervise)
                exec_daemon("ctrun.monitor", [os.path.dirname(run), "--server", "3"], log,
                            env, fd3=w, bare=True)
        finally:
            os._exit(0)
    os.close(w)
    os.close(log)
    os.waitpid(pid, 0)
    try:
        return {b"1": True, b"b": False}.get(os.read(r, 1))
    finally:
        os.close(r)
