"""The host end of the guest agent (agent.c): a framed byte stream per virtio-serial port.

QEMU serves each port as a unix socket with room for one client; a client takes a free
port by flock on its lock file, says hello with a fresh nonce (which resets the guest's
session on that port and skips anything a previous client left in the pipe) and then runs
one exec, stats or shutdown request.
"""

import contextlib
import fcntl
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


class AgentError(CtrunError):
    pass


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
        self.release = self._hello(deadline)

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

    def _hello(self, deadline):
        nonce = os.urandom(8).hex().encode()
        self.send("H", nonce)
        while True:
            t, p = self.recv(max(0.05, deadline - time.monotonic()))
            if t == "h" and p.split(b"\0")[0] == nonce:
                return p.split(b"\0")[1].decode()
            if t == "r":  # the agent just started: our first hello may have been dropped
                self.send("H", nonce)

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
        for off in range(0, max(len(payload), 1), MAXFRAME):
            chunk = payload[off:off + MAXFRAME]
            self.sock.sendall(type_.encode() + struct.pack("<I", len(chunk)) + chunk)

    def _read(self, n, timeout):
        buf = b""
        while len(buf) < n:
            if timeout is not None:
                self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(n - len(buf))
            except socket.timeout:
                raise AgentError("the guest agent did not answer in time") from None
            if not data:
                raise AgentError("the guest agent hung up (the VM stopped?)")
            buf += data
        return buf

    def recv(self, timeout=None):
        h = self._read(5, timeout)
        n = struct.unpack("<I", h[1:])[0]
        return chr(h[0]), self._read(n, timeout) if n else b""

    # ---------------------------------------------------------------- requests
    def stats(self):
        self.send("S")
        while True:
            t, p = self.recv(10)
            if t == "s":
                out = {}
                for line in p.decode().splitlines():
                    k, _, v = line.partition(" ")
                    out[k] = float(v) if "." in v else int(v)
                return out

    def signal_init(self, sig):
        self.send("D", str(int(sig)).encode())
        while self.recv(10)[0] != "d":
            pass

    def poweroff(self):
        self.send("P")

    def exec(self, argv, env=(), cwd="", user="0:0", tty=False, stdin=False,
             out=None, err=None, inp=None):
        """Run argv in the guest; returns its exit code.  With tty the user's terminal is
        put in raw mode and its size follows SIGWINCH."""
        flags = ("t" if tty else "") + ("i" if stdin or tty else "")
        fields = [flags, cwd or "", user or "0:0", *env, "", *argv]
        self.send("O", b"\0".join(f.encode() for f in fields) + b"\0")
        out = out if out is not None else sys.stdout.fileno()
        err = err if err is not None else sys.stderr.fileno()
        inp = inp if inp is not None else sys.stdin.fileno()
        watch = [self.sock]
        if stdin or tty:
            watch.append(inp)
        raw = tty and os.isatty(inp)
        with terminal.user_terminal(inp) if raw else contextlib.nullcontext() as wake_r:
            if raw:
                watch.append(wake_r)
                self._resize(inp)
            return self._relay(watch, inp, out, err, wake_r)

    def _relay(self, watch, inp, out, err, wake_r):
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
                    return int(p)
                elif t == "q":
                    ping_at = None

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
