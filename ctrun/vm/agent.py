"""The host end of the guest agent (agent.c): a framed byte stream per virtio-serial port.

QEMU serves each port as a unix socket with room for one client; a client takes a free
port by flock on its lock file, says hello with a fresh nonce (which resets the guest's
session on that port and skips anything a previous client left in the pipe), proves that
it holds this start's key (vm/agent.key, root only) against the agent's challenge, checks
the agent's proof in turn, and then runs one exec, stats or shutdown request.

The guest is not trusted either (its root can replace the agent): every frame's length is
bounded by its type before it is read, a frame the protocol does not allow ends the session
with a one-line error, and no read waits without a deadline.
"""

import contextlib
import fcntl
import hashlib
import hmac
import os
import select
import socket
import struct
import sys
import time

from ..errors import CtrunError, Conflict
from ..runtime import terminal
from .qemu import PORTS

MAXFRAME = 65536
VSOCK_PORT = 1024    # the agent's vsock port (agent.c)
PING_EVERY = 2.0     # seconds of silence before an exec asks whether the agent is alive
PING_TIMEOUT = 6.0   # seconds an unanswered ping may wait (TCG guests are slow)
FRAME_TIMEOUT = 30.0  # seconds the rest of a frame may take once its first byte came
KEY_FILE = "agent.key"
KEY_BYTES = 32
NONCE = 32           # the agent's challenge (agent.c)
HOST_NONCE = 16
# the most the host reads of each frame type the agent may send (agent.c sends output in
# chunks of at most 32 KiB; a release is at most 64 bytes): anything else is refused
LIMITS = {"o": MAXFRAME, "e": MAXFRAME, "x": 16, "q": 0, "s": 4096, "d": 8, "r": 0,
          "c": NONCE + HOST_NONCE, "h": 32 + 64, "n": 256}
# what a previous client's session may have left in the pipe before our hello's answer
STALE = set("oexqsdrhcn")


class AgentError(CtrunError):
    pass


class AgentRefused(AgentError):
    """The agent did not accept our proof of the key: retrying cannot help."""


def new_key(vmdir):
    """A fresh key for one start of the VM, readable by root only; returns its bytes."""
    key = os.urandom(KEY_BYTES)
    path = os.path.join(str(vmdir), KEY_FILE)
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


def proof(key, label, a, b):
    """HMAC-SHA256(key, label NUL a b), as agent.c computes it."""
    return hmac.new(key, label.encode() + b"\0" + a + b, hashlib.sha256).digest()


class Agent:
    def __init__(self, vmdir, timeout=10.0, ports=PORTS):
        self.vmdir = str(vmdir)
        self.lock = self.sock = None
        deadline = time.monotonic() + timeout
        from ..state import read_json
        channel = (read_json(os.path.join(self.vmdir, "launch.json")) or {}).get("channel") or {}
        if channel.get("kind") == "vsock":
            self._connect_vsock(channel["cid"], deadline)
        while self.sock is None:
            for i in range(ports):
                if self._try_port(i, deadline):
                    break
            else:
                if time.monotonic() > deadline:
                    raise Conflict(f"every agent channel of the VM is busy ({ports} sessions);"
                                   " try again when one ends")
                time.sleep(0.05)
        try:
            self.release = self._hello(deadline)
        except BaseException:
            self.close()
            raise

    def _try_port(self, i, deadline):
        fd = os.open(os.path.join(self.vmdir, f"agent{i}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        dirfd = os.open(self.vmdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # through /proc/self/fd: the full path may pass a socket path's 108-byte limit
            s.connect(f"/proc/self/fd/{dirfd}/agent{i}.sock")
        except OSError as e:
            s.close()
            os.close(fd)
            raise AgentError(f"the VM's agent channel is gone ({e.strerror}); is it "
                             "running? see: ctrun list") from None
        finally:
            os.close(dirfd)
        self.lock, self.sock = fd, s
        return True

    def _connect_vsock(self, cid, deadline):
        """A vsock connection is a session of its own: no port to take, no lock."""
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            s.connect((cid, VSOCK_PORT))
        except OSError as e:
            s.close()
            raise AgentError(f"the VM's agent does not answer on vsock {cid}:{VSOCK_PORT} "
                             f"({e.strerror or e}); is it running? see: ctrun list") from None
        self.sock = s

    def _key(self):
        try:
            with open(os.path.join(self.vmdir, KEY_FILE), "rb") as f:
                key = f.read(KEY_BYTES + 1)
        except FileNotFoundError:
            key = b""
        if len(key) != KEY_BYTES:
            raise AgentRefused("the VM has no valid agent key (started by an older ctrun?); "
                               "restart it: ctrun restart NAME")
        return key

    def _hello(self, deadline):
        """Challenge and response both ways; the guest's kernel release."""
        key = self._key()
        nonce = None
        while True:
            if nonce is None:  # a fresh nonce per hello: an older hello's answer is stale
                nonce = os.urandom(HOST_NONCE)
                self.send("H", nonce)
            t, p = self.recv(deadline=deadline)
            if t == "r":  # the agent just started: our hello may have been dropped
                nonce = None
            elif t == "c" and p[NONCE:] == nonce:
                break
            elif t not in STALE:
                raise self._unexpected(t, "hello")
        challenge = p[:NONCE]
        self.send("A", proof(key, "ctrun-host", challenge, nonce))
        t, p = self.recv(deadline=deadline)
        if t == "n":
            raise AgentRefused("the VM's agent refused this client's proof of the VM's key "
                               "(was the VM restarted meanwhile?); try again")
        if t != "h":
            raise self._unexpected(t, "hello")
        if not hmac.compare_digest(p[:32], proof(key, "ctrun-agent", nonce, challenge)):
            raise AgentRefused("the VM's agent did not prove that it holds the VM's key; "
                               "the guest may be compromised: ctrun stop it")
        return p[32:].decode(errors="replace")

    @staticmethod
    def _unexpected(t, during):
        return AgentError(f"the guest agent sent an unexpected frame {t!r} during {during}; "
                          "session closed (a broken or hostile guest?)")

    def close(self):
        if self.sock is not None:
            self.sock.close()
            if self.lock is not None:
                os.close(self.lock)
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- frames
    def send(self, type_, payload=b""):
        self.sock.settimeout(FRAME_TIMEOUT)  # a guest that stops reading must not wedge us
        try:
            for off in range(0, max(len(payload), 1), MAXFRAME):
                chunk = payload[off:off + MAXFRAME]
                self.sock.sendall(type_.encode() + struct.pack("<I", len(chunk)) + chunk)
        except socket.timeout:
            raise AgentError("the guest agent stopped reading its channel") from None
        except OSError as e:
            raise AgentError(f"the guest agent's channel broke ({e.strerror or e}); "
                             "the VM stopped?") from None

    def _read(self, n, deadline):
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError("the guest agent did not answer in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(min(n - len(buf), 1 << 16))
            except socket.timeout:
                raise AgentError("the guest agent did not answer in time") from None
            except OSError:
                data = b""  # reset: as good as a hang-up
            if not data:
                raise AgentError("the guest agent hung up (the VM stopped?)")
            buf += data
        return bytes(buf)

    def recv(self, timeout=None, deadline=None):
        """One frame, (type, payload): its length checked against its type's bound before
        a byte of the payload is read."""
        if deadline is None:
            deadline = time.monotonic() + (timeout or FRAME_TIMEOUT)
        h = self._read(5, deadline)
        t, n = chr(h[0]), struct.unpack("<I", h[1:])[0]
        if t not in LIMITS:
            raise AgentError(f"the guest agent sent an unknown frame type {h[0]:#04x}; "
                             "session closed (a broken or hostile guest?)")
        if n > LIMITS[t]:
            raise AgentError(f"the guest agent sent a {n}-byte {t!r} frame (at most "
                             f"{LIMITS[t]} allowed); session closed (a broken or hostile "
                             "guest?)")
        return t, self._read(n, deadline) if n else b""

    def _expect(self, want, timeout, during):
        t, p = self.recv(timeout)
        if t != want:
            raise self._unexpected(t, during)
        return p

    # ---------------------------------------------------------------- requests
    def stats(self):
        self.send("S")
        p = self._expect("s", 10, "stats")
        out = {}
        try:
            for line in p.decode().splitlines():
                k, _, v = line.partition(" ")
                out[k] = float(v) if "." in v else int(v)
        except (UnicodeDecodeError, ValueError):
            raise AgentError("the guest agent sent unreadable stats") from None
        return out

    def signal_init(self, sig, poweroff=False):
        """sig to the guest's PID 1; with poweroff, a PID 1 that is systemd is asked for
        its power-off, and a sysvinit for runlevel 0, instead.  Returns True when that
        power-off was asked for."""
        self.send("D", str(int(sig)).encode() + (b" poweroff" if poweroff else b""))
        return self._expect("d", 10, "a signal to the guest's init") == b"poweroff"

    def poweroff(self):
        self.send("P")

    def exec(self, argv, env=(), cwd="", user="0:0", tty=False, stdin=False,
             out=None, err=None, inp=None, signals=None, init=False):
        """Run argv in the guest; returns its exit code.  With tty the user's terminal is
        put in raw mode and its size follows SIGWINCH.  signals: a pipe that
        signal.set_wakeup_fd writes to; each signal number read from it is sent on to the
        command (how a host process standing for a guest one relays the signals it gets).
        init: the command is the workload; the rest of its process group ends with it."""
        flags = ("t" if tty else "") + ("i" if stdin or tty else "") + ("k" if init else "")
        fields = [flags, cwd or "", user or "0:0", *env, "", *argv]
        self.send("O", b"\0".join(f.encode() for f in fields) + b"\0")
        out = out if out is not None else sys.stdout.fileno()
        err = err if err is not None else sys.stderr.fileno()
        inp = inp if inp is not None else sys.stdin.fileno()
        watch = [self.sock] + ([signals] if signals is not None else [])
        if stdin or tty:
            watch.append(inp)
        raw = tty and os.isatty(inp)
        with terminal.user_terminal(inp) if raw else contextlib.nullcontext() as wake_r:
            if raw:
                watch.append(wake_r)
                self._resize(inp)
            return self._relay(watch, inp, out, err, wake_r, signals)

    def _relay(self, watch, inp, out, err, wake_r, signals=None):
        """Pump frames and stdin until the exit frame; the exit code."""
        ping_at = None  # a silent command is fine; a silent agent is not
        while True:
            try:
                ready = select.select(watch, [], [], PING_EVERY)[0]
            except InterruptedError:
                continue
            if not ready:
                if ping_at is None:
                    ping_at = time.monotonic()
                    self.send("Q")
                elif time.monotonic() - ping_at > PING_TIMEOUT:
                    raise AgentError("the guest agent stopped answering (killed inside "
                                     "the VM?); the command's fate is unknown")
                continue
            if wake_r is not None and wake_r in ready:
                os.read(wake_r, 64)
                self._resize(inp)
            if signals is not None and signals in ready:
                for sig in os.read(signals, 64):
                    self.send("K", str(sig).encode())
            if inp in ready:
                data = os.read(inp, 32768)
                if data:
                    self.send("I", data)
                else:
                    watch.remove(inp)
                    self.send("E")
            if self.sock in ready:
                t, p = self.recv()
                if t == "o":
                    _write_all(out, p)
                elif t == "e":
                    _write_all(err, p)
                elif t == "x":
                    if not p.isdigit():
                        raise AgentError(f"the guest agent sent a bad exit code {p[:16]!r}")
                    return int(p)
                elif t == "q":
                    ping_at = None
                else:
                    raise self._unexpected(t, "exec")

    def _resize(self, fd):
        import termios
        try:
            rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ,
                                                           b"\0" * 8))[:2]
            self.send("R", f"{rows} {cols}".encode())
        except OSError:
            pass


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def wait_ready(vmdir, alive, timeout, console=None):
    """Wait until the guest agent answers; alive() says whether QEMU still runs.  Returns
    the guest's kernel release."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise AgentError("the VM stopped while booting" + _tail(console))
        left = deadline - time.monotonic()
        if left <= 0:
            raise AgentError(f"the VM's guest agent did not answer within {timeout:.0f} s"
                             + _tail(console))
        try:  # one connection: the agent says "r" on it when it starts
            with Agent(vmdir, timeout=min(left, 5.0)) as a:
                return a.release
        except AgentRefused:
            raise
        except (AgentError, Conflict):
            time.sleep(0.02)


def _tail(console):
    """The last console lines, for errors about a boot that went wrong."""
    if not console:
        return ""
    from ..runtime import logfile
    lines = []
    try:
        for p in logfile.files(console):
            with open(p, "rb") as f:
                for line in f:
                    lines.append(logfile.parse(line.rstrip(b"\n"))[3].decode(errors="replace"))
    except OSError:
        return ""
    lines = [ln.strip() for ln in lines if ln.strip()][-3:]
    return "; console: " + " | ".join(lines) if lines else ""
