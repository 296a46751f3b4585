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
pumps each container's stdout/stderr into its size-capped log.  It also starts the store's
warm server (ctrun.server) as its child: a worker of that server launches a detached
container itself, warm, and its init, orphaned, lands here (op_adopt).  It exits when it
has no container and no server left.  It answers its containers' sysinfo calls too
(ctrun.runtime.sysinfo: a listener fd each, watched in its event loop).  Protocol: one JSON
line request (with fds, by SCM_RIGHTS, for adopt, sysinfo and server), one JSON line reply,
on run/monitor.sock.

Memory: the monitor lives as long as any container of the store runs, so what it holds is
the store's idle cost.  It imports only what its loop needs at rest: no pathlib (nor
ctrun.state, which loads it), _socket rather than socket (whose enums cost ~0.4 MB), and
the work it does once per container in a forked child: the launcher (op_start) and the
record of an exit (_finish: the cgroup and network code it takes stays out of here).
"""

import _socket
import json
import os
import selectors
import signal
import sys
import time

from .procs import parent_pid, reaped
from .serversock import exec_daemon, fd_rights, lock_if_free, passed_fds

SOCK = "monitor.sock"
# how long a client waits for a leaving monitor to release the store's monitor lock
LEAVING_S = 2.0


class Monitor:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.run = os.path.join(self.root, "run")
        self.sel = selectors.DefaultSelector()
        self.running = {}   # pid -> container record
        self.orphans = {}   # pid -> status, reaped before its launcher reported it
        self.helpers = set()  # its short-lived children: launchers and exit recorders
        self.servers = set()  # the store's warm servers this monitor started (its children)
        self.released = False  # the last server left: an idle monitor leaves with no grace

    def lock(self):
        """The store's monitor lock (an fd), or None: another monitor serves the store."""
        return lock_if_free(os.path.join(self.run, "monitor.lock"))

    def serve(self, lock=None):
        if lock is None and (lock := self.lock()) is None:
            return 0  # another monitor serves this store
        import _prctl   # prctl's own module builds its capability tables: not needed here
        _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)
        _prctl.prctl(_prctl.PR_SET_NAME, "ctrun-monitor")
        sock_path = os.path.join(self.run, SOCK)
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        self.listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.listener.bind(sock_path)
        self.listener.listen(64)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        wake_r, wake_w = _socket.socketpair()
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
            if self.running or self.helpers or self.servers:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 0.5 or self.released:
                # unlink first: a client that finds no socket starts a new monitor, which
                # takes the store's lock as soon as it is closed: before LXCFS's stop,
                # which would otherwise keep the new monitor out until it returns
                os.unlink(sock_path)
                self.listener.close()
                os.close(lock)
                _release_lxcfs()
                return 0

    def _drain_wakeups(self, r):
        try:
            while r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self, listener):
        conn = _socket.socket(fileno=listener._accept()[0])
        conn.settimeout(5)
        fds = []
        try:
            line, fds = _receive(conn)
            req = json.loads(line or b"{}")
            reply = getattr(self, "op_" + req.get("op", "none"), self.op_none)(req, fds)
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the monitor
            reply = {"ok": False, "kind": "CtrunError", "message": f"monitor: {e}"}
        for fd in fds:  # what an op keeps, it has taken out of the list
            os.close(fd)
        self._reply(conn, reply)

    def _reply(self, conn, reply):
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        conn.close()

    def op_none(self, req, fds):
        return {"ok": False, "kind": "InvalidInput", "message": "monitor: unknown request"}

    def op_start(self, req, fds):
        """Launch a container in a launcher forked from here (it imports the runtime: the
        caller is a cold process, the API's or the CLI's) and supervise it."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = _socket.socketpair()   # a socket: the sysinfo listener goes with it
        console = _console(req)
        pid = os.fork()
        if pid == 0:
            res_r.close()
            from pathlib import Path
            result = launch(Path(req["cdir"]), req, out_w, err_w, console)
            listener = result.pop("listener", None)
            res_w.sendmsg([json.dumps(result).encode()],
                          fd_rights([] if listener is None else [listener]))
            os._exit(0)
        self.helpers.add(pid)
        for fd in (out_w, err_w):
            os.close(fd)
        res_w.close()
        try:
            data, fds = _receive(res_r, 1, end=b"")
        finally:
            res_r.close()
        result = json.loads(data or b'{"ok": false, "kind": "ContainerFailed", '
                            b'"message": "container launcher died"}')
        if not result.get("ok"):
            for fd in (out_r, err_r, *fds) + (console or ()):
                os.close(fd)
            return result
        self._supervise(req, result["pid"], out_r, err_r, console, (fds or [None])[0])
        return result

    def op_adopt(self, req, fds):
        """Supervise a container a worker of this monitor's warm server launched itself
        (warm, so without a launcher's imports): its init became this process's child when
        its intermediate exited; fds: its stdout and stderr pipes, then its console's pty
        pair if it has one, then its sysinfo listener if it has one."""
        pid = int(req["pid"])
        if pid not in self.orphans and parent_pid(pid) != os.getpid():
            return {"ok": False, "kind": "CtrunError",
                    "message": f"monitor: process {pid} is not a child of the monitor"}
        n = (4 if req.get("console") else 2) + bool(req.get("sysinfo"))
        if len(fds) != n:
            return {"ok": False, "kind": "CtrunError", "message": "monitor: bad adopt request"}
        taken = fds[:]
        del fds[:]
        listener = taken.pop() if req.get("sysinfo") else None
        self._supervise(req, pid, taken[0], taken[1], tuple(taken[2:]) or None, listener)
        return {"ok": True}

    def op_sysinfo(self, req, fds):
        """Answer the sysinfo calls of a command `ctrun exec` started in a container this
        monitor supervises (the init's pid and start_id name it); fds: its listener."""
        pid = int(req.get("pid", 0))
        rec = self.running.get(pid)
        if rec is None or rec["start_id"] != req.get("start_id") or len(fds) != 1:
            return {"ok": False, "kind": "CtrunError",
                    "message": "monitor: no such container to answer sysinfo for"}
        self._watch_sysinfo(rec, pid, fds.pop())
        return {"ok": True}

    def op_status(self, req, fds):
        """What this monitor holds, for diagnosis (and the tests): the inits it supervises,
        its children at work, its servers and the modules it has loaded."""
        return {"ok": True, "pid": os.getpid(), "running": sorted(self.running),
                "helpers": sorted(self.helpers), "servers": sorted(self.servers),
                "modules": sorted(sys.modules)}

    def op_server(self, req, fds):
        """Start a warm server for the store as this monitor's child, with the caller's
        environment; fds: the pipe its readiness goes to (the client waits on it)."""
        if len(fds) != 1:
            return {"ok": False, "kind": "CtrunError", "message": "monitor: bad server request"}
        self.spawn_server({os.fsencode(k): os.fsencode(v) for k, v in req["env"].items()},
                          fds[0])
        return {"ok": True}

    def spawn_server(self, env, ready_fd):
        """Fork and exec the store's warm server (ctrun.server) as a child of this monitor:
        so the init of every container its workers start detached is orphaned to this
        subreaper, which supervises it (op_adopt) with no launcher to start."""
        log = os.open(os.path.join(self.run, "server.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        pid = os.fork()
        if pid == 0:
            try:   # with default signals: the monitor's ignored ones would stay ignored
                exec_daemon("ctrun.server", [self.root, "3", "--adopted"], log,
                            env, fd3=ready_fd)
            finally:
                os._exit(127)
        os.close(log)
        self.servers.add(pid)
        self.released = False

    def _supervise(self, req, pid, out_r, err_r, console, listener=None):
        """Log the container's output, answer its sysinfo calls (listener: an fd, see
        runtime.sysinfo) and reap its init (pid, this process's child)."""
        self.released = False
        from .runtime.logfile import LogWriter
        cdir = req["cdir"]
        rec = {"name": req["name"], "cdir": cdir, "start_id": req["start_id"],
               "cgroup_parent": req.get("cgroup_parent", "ctrun"),
               "cgroup_name": req.get("cgroup_name") or req["name"],
               "log": LogWriter(os.path.join(cdir, "logs", "console.log"),
                                req.get("log_max", 1 << 20)),
               "fds": {out_r: "stdout", err_r: "stderr"}, "console": console}
        if console:
            rec["fds"][console[0]] = "console"
        for fd in rec["fds"]:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, lambda fd, rec=rec: self._pump(rec, fd))
        self.running[pid] = rec
        if listener is not None:
            self._watch_sysinfo(rec, pid, listener)
        if pid in self.orphans:
            self._finish(pid, self.orphans.pop(pid)[0])

    def _watch_sysinfo(self, rec, pid, fd):
        """Answer the container's sysinfo calls from this loop, until its last task is gone."""
        from .runtime.sysinfo import Listener
        try:
            with open(os.path.join(rec["cdir"], "spec.json"), "rb") as f:
                spec = json.load(f)
        except (OSError, ValueError):
            spec = {"annotations": {}}   # every call then gets the host's figures
        listener = Listener(fd, pid, spec)
        rec.setdefault("sysinfo", []).append(listener)   # the init's, then each exec's
        self.sel.register(fd, selectors.EVENT_READ,
                          lambda _: listener.answer() or self._unwatch_sysinfo(rec, listener))

    def _unwatch_sysinfo(self, rec, listener=None):
        """Stop answering one listener of the container (its tasks are gone), or all."""
        for one in [listener] if listener else rec.pop("sysinfo", []):
            if listener:
                rec["sysinfo"].remove(one)
            self.sel.unregister(one.fd)
            one.close()

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
        now = time.monotonic()
        for pid, status in reaped():
            if pid in self.helpers:
                self.helpers.discard(pid)
            elif pid in self.servers:
                self.servers.discard(pid)
                self.released = not self.servers
            elif pid in self.running:
                self._finish(pid, status)
            else:
                # an init whose start is not reported yet, or any other orphan of a
                # server's worker: forgotten after a minute
                self.orphans[pid] = (status, now)
        for pid in [p for p, (_, t) in self.orphans.items() if now - t > 60]:
            del self.orphans[pid]

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
        self._unwatch_sysinfo(rec)
        rec["log"].close()
        # the exit's record (the cgroup's OOM count and removal, the network's rules, then
        # exit.json) in a child: the code it imports would stay in this process for good.
        # It holds the monitor's lock too, so the container reads "stopping" until it is
        # done even if the monitor dies meanwhile.
        try:
            pid = os.fork()
        except OSError:
            _record_exit(rec, status)   # here, then
            return
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _record_exit(rec, status)
            finally:
                os._exit(0)
        self.helpers.add(pid)


def _record_exit(rec, status):
    from pathlib import Path
    from .runtime.reap import finalize
    try:
        finalize(Path(rec["cdir"]), rec["name"], rec["start_id"], status,
                 rec["cgroup_parent"], rec["cgroup_name"])
    except Exception:  # noqa: BLE001 - the exit is "monitor-lost" then; gc frees the rest
        import traceback
        traceback.print_exc()


def _release_lxcfs():
    """Leaving with no container: ctrun's LXCFS goes too if nothing else on the host uses it
    (ctrun.runtime.lxcfs.release); a failure leaves it to the next monitor, or gc."""
    try:
        from .runtime import lxcfs
        lxcfs.release()
    except Exception:  # noqa: BLE001 - the monitor's exit must not fail for it
        import traceback
        traceback.print_exc()


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


def launch(cdir, req, out_w, err_w, console=None, cfg=None, backend=None, before=None):
    """Set the container up and start it (in a launcher forked from the monitor, which
    reads the container's Config and picks its backend, or in a worker of its server, which
    has them); the result the monitor records: {"ok", "pid", "pid_start"} or the error.
    before(): the caller's own record of the start, written with live.json.  Both are
    written as soon as the pid is known, while the init builds its root, where the
    backend tells it (on_pid).  Closes out_w and err_w."""
    live = cdir / "live.json"
    written = []

    def record(pid, pid_start=None):
        from .state import proc_start_time, write_json
        if before is not None:
            before()
        write_json(live, {"start_id": req["start_id"], "pid": pid,
                          "pid_start": pid_start or proc_start_time(pid),
                          "started_at": req["started_at"], "monitor": "shared"},
                   durable=False)
        written.append(pid)
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if cfg is None:
            from . import backends, config
            cfg = config.load(cdir) or config.Config(req["name"])
            backend = backends.for_mode(cfg.mode)(None)
        pid, pid_start, launched = backend.launch(req, cdir, cfg, out_w, err_w, console,
                                                  on_pid=record)
        if not written:
            record(pid, pid_start)
        if launched is not None:
            launched.start()
        result = {"ok": True, "pid": pid, "pid_start": pid_start}
        if getattr(launched, "listener", None) is not None:
            result["listener"] = launched.listener   # an fd: the caller hands it on
    except Exception as e:  # noqa: BLE001
        result = {"ok": False, "kind": type(e).__name__, "message": str(e)}
        if written:   # its init is gone: no live record of it
            try:
                os.unlink(live)
            except OSError:
                pass
    finally:
        for fd in (out_w, err_w):
            os.close(fd)
    return result


# set in a worker of a warm server this store's monitor started (ctrun.server): a detached
# start is launched right there and handed to the monitor (op_adopt) instead of op_start
ADOPTS = False
# set once this process has started a container that runs on (a warm worker's detached
# start): the server's next spare then waits for the host to be quiet (ctrun.server)
STARTED = False
_DEFERRED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


def start(root, req, cfg, backend, before=None):
    """Have the store's monitor start and supervise a container (its Config and the backend
    the lifecycle chose for it): op_start, or, in a worker of its own server, launched here
    (warm) and adopted.  before(): the caller's record of the start, written first (here,
    while the init builds its root).  The monitor's reply."""
    global STARTED
    STARTED = True
    if not ADOPTS or not backend.orphans_launch:
        if before is not None:
            before()
        return request(root, req)
    # the start completes once begun, as a launcher in the monitor would complete it: the
    # client's Ctrl-C or its death (a SIGHUP) reaches this worker only once the monitor
    # has the container (the container's init unblocks every signal before its exec)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    console = _console(req)
    fds = [out_r, err_r, *(console or ())]
    try:
        # launch() closes the console's master it is given (a launcher must not keep it):
        # the monitor gets this one
        from pathlib import Path
        result = launch(Path(req["cdir"]), req, out_w, err_w,
                        console and (os.dup(console[0]), console[1]), cfg, backend, before)
        if not result.get("ok"):
            return result
        sysinfo = "listener" in result
        if sysinfo:
            fds.append(result.pop("listener"))
        try:
            reply = request(root, {**req, "op": "adopt", "pid": result["pid"],
                                   "sysinfo": sysinfo}, fds=fds, spawn=False)
        except OSError:
            reply = None
        if not reply or not reply.get("ok"):
            # nobody supervises it: it must not run
            from .procs import signal_pid
            fd = signal_pid(result, signal.SIGKILL)
            if fd is not None:
                os.close(fd)
            return reply or {"ok": False, "kind": "CtrunError",
                             "message": "the ctrun monitor left during the start"}
        return result
    finally:
        for fd in fds:
            os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def request(root, req, timeout=30.0, spawn=True, fds=()):
    """Send one request to the store's monitor, starting the monitor if none runs; fds go
    with it (SCM_RIGHTS).  None if no monitor runs and spawn is false."""
    import socket
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
        data = json.dumps(req).encode() + b"\n"
        if fds:
            n = s.sendmsg([data], fd_rights(fds))
            data = data[n:]
        if data:  # never an empty send: the monitor may have answered and closed already
            s.sendall(data)
        data = s.makefile("rb").readline()
    finally:
        s.close()
    if not data:  # the monitor went away between accept and reply (idle exit race)
        return request(root, req, timeout, spawn, fds) if spawn else None
    return json.loads(data)


def _receive(conn, max_fds=5, end=b"\n"):
    """One request line and the fds sent with it (end=b"": everything until EOF)."""
    data, fds = b"", []
    while not (end and data.endswith(end)) and len(data) < 1 << 20:
        chunk, anc, _, _ = conn.recvmsg(65536, _socket.CMSG_SPACE(max_fds * 4),
                                        _socket.MSG_CMSG_CLOEXEC)
        fds += passed_fds(anc)
        if not chunk:
            break
        data += chunk
    return data, fds


def _spawn(store):
    store.ensure()
    log = os.open(store.run / "monitor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pid = os.fork()
    # double fork: the monitor must not stay a child (or zombie) of this CLI; the
    # intermediate is reaped right here.  The monitor outlives every ctrun process that
    # could wait for it, so its own exit is reaped by whoever adopts it (the nearest
    # subreaper, else PID 1): it is the only process ctrun leaves to another's reaping.
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                exec_daemon("ctrun.monitor", [str(store.root)], log, bare=True)
        finally:
            os._exit(0)
    os.close(log)
    os.waitpid(pid, 0)


def serve_with_server(root, ready_fd):
    """`ctrun.monitor ROOT --server FD` (the client's spawn): the store's monitor, whose
    first act is to start the warm server as its child.  If another monitor serves the
    store, it is asked to start the server instead; if none can, the server starts on its
    own (it then hands detached starts to a monitor by op_start, as the CLI does)."""
    m = Monitor(root)
    env = {os.fsdecode(k): os.fsdecode(v) for k, v in os.environb.items()}
    # a monitor that holds the lock but does not answer is leaving (its last server or
    # container gone): its lock goes with it, and this one takes over.  A server started
    # on its own would hand every detached start to a cold launcher for all its life.
    deadline = time.monotonic() + LEAVING_S
    while (lock := m.lock()) is None:
        try:
            reply = request(root, {"op": "server", "env": env}, fds=[ready_fd], spawn=False)
        except (OSError, ValueError):
            reply = None
        if reply and reply.get("ok"):
            return 0
        if time.monotonic() > deadline:
            os.dup2(ready_fd, 3)
            os.execv(sys.executable, [sys.executable, "-P", "-m", "ctrun.server", root, "3"])
        time.sleep(0.005)
    log = os.open(os.path.join(m.run, "monitor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                  0o600)
    os.dup2(log, 2)  # the client started it with the server's log
    os.close(log)
    m.spawn_server(os.environb, ready_fd)
    os.close(ready_fd)
    return m.serve(lock)


def main():
    """`ctrun.monitor ROOT [--server FD]` (started by exec_daemon, bare)."""
    if sys.argv[2:3] == ["--server"]:
        return serve_with_server(sys.argv[1], int(sys.argv[3]))
    return Monitor(sys.argv[1]).serve()


if __name__ == "__main__":
    sys.exit(main())
