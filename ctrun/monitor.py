"""The shared monitor: one small process per store that supervises every detached container.

Why one shared process rather than conmon per container: conmon measured 0.53 MB PSS per
container here (20 containers), over the 0.5 MB budget, and grows linearly with the count;
one monitor costs ~8 MB in all, so ~0.4 MB each at 20 and ~16 kB each at 500, which is
what OpenVZ-style density asks for.  The trade-off: if the monitor is killed, running
containers keep running (their state reads "monitor-lost" once they exit) but their
stdout/stderr pipes break.  It is kept small and simple for that reason: it imports no
runtime code itself; a short-lived forked launcher sets each container up.

It is a child subreaper, so every container init (forked by a launcher whose intermediate
exits) becomes its child: it reaps them, records exit.json and removes the cgroup.  It
pumps each container's stdout/stderr into its size-capped log.  It exits when it has no
container left.  Protocol: one JSON line request, one JSON line reply, on run/monitor.sock.
"""

import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

from .procs import reaped

SOCK = "monitor.sock"


class Monitor:
    def __init__(self, root):
        from .state import Store
        self.store = Store(root)
        self.sel = selectors.DefaultSelector()
        self.running = {}   # pid -> container record
        self.orphans = {}   # pid -> status, reaped before its launcher reported it
        self.launchers = set()

    def serve(self):
        run = self.store.run
        lock = os.open(run / "monitor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another monitor serves this store
        import prctl
        prctl.set_child_subreaper(1)
        prctl.set_name("ctrun-monitor")
        sock_path = run / SOCK
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(sock_path))
        self.listener.listen(64)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(s, signal.SIG_IGN)
        self.sel.register(wake_r, selectors.EVENT_READ, lambda _: self._drain_wakeups(wake_r))
        idle_since = time.monotonic()
        while True:
            for key, _ in self.sel.select(timeout=1.0):
                key.data(key.fileobj)
            self._reap()
            if self.running or self.launchers:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 0.5:
                # unlink first: a client that finds no socket starts a new monitor
                os.unlink(sock_path)
                self.listener.close()
                return 0

    def _drain_wakeups(self, r):
        try:
            while r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self, listener):
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            req = json.loads(conn.makefile("rb").readline() or b"{}")
            reply = getattr(self, "op_" + req.get("op", "none"), self.op_none)(req, conn)
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the monitor
            reply = {"ok": False, "kind": "CtrunError", "message": f"monitor: {e}"}
        self._reply(conn, reply)

    def _reply(self, conn, reply):
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        conn.close()

    def op_none(self, req, conn):
        return {"ok": False, "kind": "InvalidInput", "message": "monitor: unknown request"}

    def op_start(self, req, conn):
        cdir = Path(req["cdir"])
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        console = _console(req)
        pid = os.fork()
        if pid == 0:
            os.close(res_r)
            _launcher(cdir, req, out_w, err_w, res_w, console)  # never returns
        self.launchers.add(pid)
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        with os.fdopen(res_r, "rb") as f:
            result = json.loads(f.read() or b'{"ok": false, "kind": "ContainerFailed", '
                                b'"message": "container launcher died"}')
        if not result.get("ok"):
            for fd in (out_r, err_r) + (console or ()):
                os.close(fd)
            return result
        from .runtime.logfile import LogWriter
        rec = {"name": req["name"], "cdir": cdir, "start_id": req["start_id"],
               "cgroup_parent": req.get("cgroup_parent", "ctrun"),
               "cgroup_name": req.get("cgroup_name") or req["name"],
               "log": LogWriter(cdir / "logs" / "console.log", req.get("log_max", 1 << 20)),
               "fds": {out_r: "stdout", err_r: "stderr"}, "console": console}
        if console:
            rec["fds"][console[0]] = "console"
        for fd in rec["fds"]:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, lambda fd, rec=rec: self._pump(rec, fd))
        self.running[result["pid"]] = rec
        if result["pid"] in self.orphans:
            self._finish(result["pid"], self.orphans.pop(result["pid"]))
        return result

    def _pump(self, rec, fd):
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            _log(rec, fd, data)
        else:
            self.sel.unregister(fd)
            os.close(fd)
            del rec["fds"][fd]

    def _reap(self):
        for pid, status in reaped():
            if pid in self.launchers:
                self.launchers.discard(pid)
            elif pid in self.running:
                self._finish(pid, status)
            else:
                self.orphans[pid] = status

    def _finish(self, pid, status):
        rec = self.running.pop(pid)
        for fd in list(rec["fds"]):
            while True:  # drain what is left in the pipe
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                _log(rec, fd, data)
            self.sel.unregister(fd)
            os.close(fd)
        if rec["console"]:
            os.close(rec["console"][1])
        rec["log"].close()
        from .runtime.reap import finalize
        finalize(rec["cdir"], rec["name"], rec["start_id"], status, rec["cgroup_parent"],
                 rec["cgroup_name"])


def _console(req):
    """(master, slave) of a host pty for a container that asked for a console (systemd
    writes its boot to /dev/console), or None.  The monitor keeps the slave open while the
    container runs, so the master never reads EIO or hangs up between the container's own
    opens; the slave is owned by the container's root (a --userns one is a mapped uid)."""
    if not req.get("console"):
        return None
    import termios
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~(termios.ECHO | termios.ICANON)  # nobody types: nothing to echo back
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    uid = req.get("console_uid") or 0
    os.fchown(slave, uid, uid)
    return master, slave


def _log(rec, fd, data):
    stream = rec["fds"][fd]
    if stream == "console":   # the tty's output processing ends lines with CR LF
        stream, data = "stdout", data.replace(b"\r\n", b"\n")
    rec["log"].write(stream, data)


def _launcher(cdir, req, out_w, err_w, res_w, console=None):
    """Forked from the monitor: set the container up, start it, report its pid, exit."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        from . import backends, config
        from .state import write_json
        cfg = config.load(cdir) or config.Config(req["name"])
        pid, pid_start, launched = backends.for_mode(cfg.mode)(None).launch(
            req, cdir, cfg, out_w, err_w, console)
        write_json(cdir / "live.json", {"start_id": req["start_id"], "pid": pid,
                                        "pid_start": pid_start,
                                        "started_at": req["started_at"], "monitor": "shared"},
                   durable=False)
        if launched is not None:
            launched.start()
        result = {"ok": True, "pid": pid, "pid_start": pid_start}
    except Exception as e:  # noqa: BLE001
        result = {"ok": False, "kind": type(e).__name__, "message": str(e)}
    os.write(res_w, json.dumps(result).encode())
    os._exit(0)


def request(root, req, timeout=30.0, spawn=True):
    """Send one request to the store's monitor, starting the monitor if none runs."""
    from .state import Store
    store = Store(root)
    path = str(store.run / SOCK)
    deadline = time.monotonic() + 5
    started = False
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if not spawn:
                return None
            if not started:
                _spawn(store)
                started = True
            if time.monotonic() > deadline:
                from .errors import CtrunError
                raise CtrunError(f"the ctrun monitor did not start; see {store.run}/monitor.log")
            time.sleep(0.005)
    try:
        s.settimeout(timeout)
        s.sendall(json.dumps(req).encode() + b"\n")
        data = s.makefile("rb").readline()
    finally:
        s.close()
    if not data:  # the monitor went away between accept and reply (idle exit race)
        return request(root, req, timeout, spawn) if spawn else None
    return json.loads(data)


def _spawn(store):
    store.ensure()
    log = os.open(store.run / "monitor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open("/dev/null", os.O_RDWR)
    pid = os.fork()
    # double fork: the monitor must not stay a child (or zombie) of this CLI; the
    # intermediate is reaped right here.  The monitor outlives every ctrun process that
    # could wait for it, so its own exit is reaped by whoever adopts it (the nearest
    # subreaper, else PID 1): it is the only process ctrun leaves to another's reaping.
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                os.dup2(log, 2)
                os.closerange(3, 1 << 16)
                # -P: never import a "ctrun" that happens to sit in the cwd
                os.execv(sys.executable, [sys.executable, "-P", "-m", "ctrun.monitor",
                                          str(store.root)])
        finally:
            os._exit(0)
    os.close(log)
    os.close(devnull)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    sys.exit(Monitor(sys.argv[1]).serve())
