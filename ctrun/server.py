"""The warm server: one process per store that keeps the command line and the runtime
imported, and runs each `ctrun` call (ctrun.client) in a worker forked from that state.

Why: most of a short verb's time is Python starting, importing and parsing; the same
`run --rm` done in an already loaded process takes a third of the cold CLI's time.  The
server pays the imports once; a call then costs a fork.

A worker is the CLI process, as far as the verb can tell.  It takes the client's stdin,
stdout and stderr (received with SCM_RIGHTS), its working directory (an fd), umask,
environment, resource limits and argv, runs ctrun.cli.main(argv) and exits with its code,
which the server sends back.  So a request is parsed and validated by the CLI's own code,
and the server runs nothing but that.  The signals the client gets are relayed to the
worker, whose CLI code handles them as its own (Ctrl-C, a resize under -t, SIGTERM's stop
of an attached run); a client that goes away is a SIGHUP to its worker, as a CLI gets
when its terminal hangs up, and so is the server's death (PR_SET_PDEATHSIG).  Containers
belong to the monitor (detached) or to the worker (attached, the worker being a child
subreaper while it forks the init, as the CLI is), exactly as without the server.

Security: the socket is 0600 in the store's private run directory, and a peer whose uid
(SO_PEERCRED) is not 0 is closed before anything is read from it.

Protocol on run/server.sock (SOCK_STREAM):
  client: a 4-byte little-endian length, then NUL-separated fields: MAGIC, the client's
          ctrun package directory, its umask (octal), argc, the argv, then its environment
          (K=V each); its first bytes carry four fds: stdin, stdout, stderr, the working
          directory.  Afterwards, one byte per relayed signal (its number).
  server: b"S" just before the worker is forked (so a client whose connection ends before
          it may retry: nothing ran), then b"x<code>\\n" (exit code) or b"k<signal>\\n"
          (killed by it).  The worker sends the exit code itself once its command is done,
          before its own exit (the teardown of a copy of the server is not the call's
          time); the server sends the signal of a worker killed before that.  b"m"
          instead of b"S": this server runs another ctrun's code (an upgrade, another
          checkout); it retires, and the client starts its own.

Two kinds share this code, told apart by the CLI they run (and by MAGIC, so that a client
never talks to a server of the other kind): ctrun's (ctrun.cli.main, a store's server,
below) and ctrun-oci's (ctrun.oci.cli.main, the server of an OCI state root, which serves
the light verbs a container runtime's client calls many times: see ctrun.oci.serving for
its placement and lifetime).

Lifetime: started on demand by the client, as a child of the store's monitor (the client
starts `ctrun.monitor ROOT --server`, or asks the running monitor), so the init of a
container a worker starts detached is orphaned straight to the monitor, which supervises it
(monitor.op_adopt) without a launcher of its own to start and import the runtime; a lock
keeps one server per store; it leaves after CTRUN_SERVER_IDLE seconds (default 30) without a
call, and the monitor, if it has no container, with it.  Its spare worker (~12 MB of pages of
its own) is kept only while calls come: it goes after CTRUN_SERVER_SPARE_IDLE seconds
(default 5) without one; the next call then forks its own worker (paying what the spare
would have saved it), after which a spare is made again.
"""

import errno
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time

from . import procs
from .client import MAGIC, RELAYED, package_dir
from .serversock import LOCK, SOCK, fd_rights, lock_if_free, passed_fds

IDLE = 30.0
SPARE_IDLE = 5.0   # a spare outlives the last call by this long (CTRUN_SERVER_SPARE_IDLE)
MAX_REQUEST = 8 << 20   # argv and environment: the kernel caps both well below this
REQUEST_TIMEOUT = 10.0  # a connection that has not sent its whole request by then is dropped
NFDS = 4
WARM_PARSES = 16
MADV_POPULATE_WRITE = 23
POPULATE_CHUNK = 1 << 20
# the spare works ahead (StoreKind.ahead) once nothing else has been runnable for QUIET_S
# (checked every QUIET_POLL_S), or after QUIET_MAX_S on a host that stays busy
QUIET_S, QUIET_POLL_S, QUIET_MAX_S = 0.02, 0.01, 1.0
POOL_SIZE = 1   # pre-made cgroups and network namespaces a store server keeps (pools)
# what run --rm, exec, enter, logs, list, inspect, stop and destroy import (measured with
# python -X importtime); the rest loads in the worker that needs it
WARM = ("ctrun.cli", "ctrun.api", "ctrun.backends.container", "ctrun.runtime.process",
        "ctrun.runtime.terminal", "ctrun.runtime.reap", "ctrun.runtime.seccomp",
        "ctrun.runtime.lxcfs", "ctrun.runtime.logfile", "ctrun.namespaces.join",
        "ctrun.images.store", "ctrun.network.container", "ctrun.cgroups.limits",
        "ctrun.cgroups.v1", "ctrun.cgroups.v2", "ctrun.cgroups.named", "ctrun.spec",
        "ctrun.monitor", "ctrun.images.layers", "ctrun.pools",
        # the v1 cpuset controller's files (a new cpuset copies its parent's): ~3 ms
        "cgroupspy.controllers")


class _Conn:
    reply = None   # in a spare: the client's socket (an fd), for the exit code

    def __init__(self, sock, peer):
        self.sock, self.peer = sock, peer
        self.buf = bytearray()
        self.fds = []
        self.since = time.monotonic()
        self.pid = None
        self.replied = False   # its worker has sent the exit code: only clean-up is left


class StoreKind:
    """What a store's server runs (ctrun.cli) and where: its run directory in the store; it
    stays in the cgroup of the monitor that started it.  ctrun.oci.serving.OciKind is the
    other kind."""
    magic, prog, entry = MAGIC, "ctrun", "ctrun.cli"

    def __init__(self, root):
        from .state import Store
        self.store = Store(root)
        # its workers' starts take pre-made cgroups and network namespaces, which its
        # spares make (CTRUN_POOL=0 turns that off)
        self.pools = os.environ.get("CTRUN_POOL") != "0"

    def run_dir(self):
        self.store.ensure()
        return self.store.run

    def enter(self):
        """Once it holds the lock, before it serves."""

    def leave(self):
        """After its last call: what its spares put in the pools goes, unless a server
        that took the store over (it holds the lock this one gave up) owns them now."""
        if not self.pools:
            return
        lock = lock_if_free(os.path.join(self.store.run, LOCK))
        if lock is not None:
            from . import pools
            try:
                pools.drain(self.store)
            finally:
                os.close(lock)

    def worker(self):
        """In a worker, before the call runs."""
        if self.pools:
            from . import pools
            pools.SERVED = True

    def ahead(self, sock, calm):
        """In the spare, until its call comes (readable on sock): a copy of the server's
        pages (_own_pages), the store's pools topped up, LXCFS's files cloned (preopen).
        At once if calm; after a call that started a container, once the host is quiet
        (_quiet): the container, a booting systemd that forks dozens of processes above
        all, would otherwise share the CPUs with this (its boot ended 5.6 ms later,
        paired median of 20)."""
        if select.select([sock], [], [], 0)[0] if calm else not _quiet(sock):
            return   # a call came first: it faults what it touches
        _own_pages(sock)
        if self.pools and not select.select([sock], [], [], 0)[0]:
            from . import pools
            try:
                pools.fill(self.store, POOL_SIZE)
            except Exception as e:  # noqa: BLE001 - the starts make their own instead
                _write(2, f"ctrun server: cannot fill the start pools: {e}\n")
        from .runtime import lxcfs
        try:
            lxcfs.preopen(lambda: select.select([sock], [], [], 0)[0])
        except Exception as e:  # noqa: BLE001 - the start binds the files by path instead
            _write(2, f"ctrun server: cannot open LXCFS's files ahead: {e}\n")

    def warm(self):
        warm()


class Server:
    def __init__(self, root, idle=None, adopted=False, oci=False):
        if oci:
            from .oci.serving import OciKind
            self.kind = OciKind(root)
        else:
            self.kind = StoreKind(root)
        self.idle = float(os.environ.get("CTRUN_SERVER_IDLE") or IDLE) if idle is None \
            else idle
        self.spare_idle = float(os.environ.get("CTRUN_SERVER_SPARE_IDLE") or SPARE_IDLE)
        self.sel = selectors.DefaultSelector()
        self.conns = set()
        self.workers = {}  # pid -> _Conn
        self.listener = self.lock = None
        self.spare = None  # (pid, socket): a worker forked ahead of its call (_fork_spare)
        self.calm = True   # no call since the last spare's fork started a container
        self.pkg = package_dir()
        # started by the store's monitor (ctrun.monitor --server): its workers launch
        # detached containers themselves and hand them to it while it is still our parent
        self.monitor = os.getppid() if adopted else None

    def serve(self, ready_fd=None):
        # SIGTERM: leave as when idle (the calls under way finish; kind.leave() runs)
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "idle", -1.0))
        run = self.kind.run_dir()
        self.lock = lock_if_free(os.path.join(run, LOCK))
        if self.lock is None:
            if ready_fd is not None:  # the client waits for the other one instead
                os.write(ready_fd, b"b")
            return 0  # another server serves this store
        import prctl
        prctl.set_name(f"{self.kind.prog}-server"[:15])
        os.chdir("/")
        self.kind.enter()
        self.kind.warm()
        self.path = os.path.join(run, SOCK)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.ino = os.stat(self.path).st_ino
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.wake_r, self.wake_w = socket.socketpair()
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        # a worker writes its pid here once its client has the exit code (_reply)
        self.replied_r, self.replied_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.sel.register(self.replied_r, selectors.EVENT_READ, None)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(s, signal.SIG_IGN)
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        idle_since = time.monotonic()
        while self.listener is not None or self.workers or self.conns:
            for key, _ in self.sel.select(timeout=1.0):
                try:
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self.wake_r:
                        _drain(self.wake_r)
                    elif key.fileobj == self.replied_r:
                        self._replied()
                    else:
                        self._readable(key.data)
                except Exception:  # noqa: BLE001 - one bad call must not stop the server
                    import traceback
                    traceback.print_exc()
                    if isinstance(key.data, _Conn) and key.data.pid is None:
                        self._close(key.data)
            self._reap()
            now = time.monotonic()
            if self.workers or self.conns:
                idle_since = now
            # between calls, off their path: a worker that has replied (its clean-up is
            # all it has left: destroy's file removal) no longer holds it back, so calls
            # back to back find a spare too; with no call for spare_idle seconds the
            # spare's pages are given back (the next call forks its own worker)
            if now - idle_since > self.spare_idle:
                self._drop_spare()
            elif self.spare is None and self.listener is not None and \
                    all(c.replied for c in self.workers.values()):
                self._fork_spare()
            for c in [c for c in self.conns if c.pid is None and
                      now - c.since > REQUEST_TIMEOUT]:
                self._close(c)
            # SIGTERM sets idle below 0: leave now, as when idle
            if self.idle < 0 or (not (self.workers or self.conns) and
                                 now - idle_since > self.idle):
                self._retire()
        self.kind.leave()
        return 0

    def _replied(self):
        try:
            data = os.read(self.replied_r, 4096)
        except BlockingIOError:
            return
        for i in range(0, len(data) - 3, 4):
            value = int.from_bytes(data[i:i + 4], "little")
            c = self.workers.get(value & 0x7FFFFFFF)
            if c is not None:
                c.replied = True
            if value >> 31:
                self.calm = False   # a container it started may still be booting

    def _retire(self):
        """Stop taking calls: the socket goes (a client that finds none starts a new
        server) and so does the lock; the workers still running finish first."""
        if self.listener is None:
            return
        try:
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sel.unregister(self.listener)
        self.listener.close()
        self.listener = None
        os.close(self.lock)
        self._drop_spare()

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != 0:
            sock.close()
            return
        sock.setblocking(False)
        c = _Conn(sock, pid)
        self.conns.add(c)
        self.sel.register(sock, selectors.EVENT_READ, c)

    def _readable(self, c):
        if c.pid is None:
            self._receive(c)
            return
        try:
            data = c.sock.recv(256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # the client is gone (killed, or its terminal with it): a hang-up, as a CLI gets
            _kill(c.pid, signal.SIGHUP)
            self._close(c)
            return
        for sig in data:
            if sig in RELAYED:
                _kill(c.pid, sig)

    def _receive(self, c):
        try:
            data, anc, flags, _ = c.sock.recvmsg(1 << 16, socket.CMSG_SPACE(NFDS * 4),
                                                 socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError:
            data, anc, flags = b"", [], 0
        c.fds += passed_fds(anc)
        c.buf += data
        size = int.from_bytes(c.buf[:4], "little") if len(c.buf) >= 4 else 0
        if not data or flags & socket.MSG_CTRUNC or size > MAX_REQUEST:
            self._close(c)
        elif len(c.buf) >= 4 + size:
            self._start(c, bytes(c.buf[4:4 + size]), bytes(c.buf[4 + size:]))

    def _start(self, c, payload, signals):
        req = _parse(payload, self.kind.magic)
        if req is None or len(c.fds) != NFDS:
            _send(c, b"e")
            self._close(c)
            return
        if req["pkg"] != self.pkg:
            _send(c, b"m")
            self._close(c)
            self._retire()
            return
        adopts = self.monitor is not None and os.getppid() == self.monitor
        if self.monitor is not None and not adopts:
            # its monitor died: this call is still served (a new monitor's launcher starts
            # what it starts), then the server gives way, so the next call starts a new
            # monitor with a server it adopts from (a cold launcher per start is slow)
            self._retire()
        _send(c, b"S")
        pid = self._hand_to_spare(c, payload, adopts)
        if pid is not None:
            self._started(c, pid, signals)
            return
        # the relayed signals wait, blocked, until the worker has its CLI's handlers (the
        # server ignores some; a blocked signal is kept whatever its disposition)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _write(c.fds[2], f"ctrun: error: the ctrun server cannot fork: {e.strerror}\n")
            _send(c, b"x1\n")
            self._close(c)
            return
        if pid == 0:
            self._worker(c, req, mask, adopts)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._started(c, pid, signals)

    def _started(self, c, pid, signals):
        _close_fds(c)
        c.pid = pid
        self.workers[pid] = c
        for sig in signals:
            if sig in RELAYED:
                _kill(pid, sig)

    # ---------------------------------------------------------------- the spare worker
    def _fork_spare(self):
        """Fork the next call's worker now, between calls: the fork, and the copy-on-write
        faults its first steps would take on the server's pages (it walks the server's
        objects while it waits), are then off the call's path.  One at a time; a call that
        finds none (calls at once) forks its worker itself."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            mine.close()
            theirs.close()
            return
        if pid == 0:
            mine.close()
            self._spare_main(theirs, mask, self.calm)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        self.spare = (pid, mine)
        self.calm = True

    def _hand_to_spare(self, c, payload, adopts):
        """The spare worker's pid once it has this call (the request, its fds), or None."""
        if self.spare is None:
            return None
        pid, sock = self.spare
        self.spare = None
        head = (len(payload).to_bytes(4, "little") + c.peer.to_bytes(4, "little")
                + (b"1" if adopts else b"0"))
        fds = c.fds + [c.sock.fileno()]   # the client's socket last: the worker replies
        try:
            n = sock.sendmsg([head + payload], fd_rights(fds))
            if n < len(head) + len(payload):  # never an empty send (see client._call):
                sock.sendall((head + payload)[n:])   # the spare may be running the call
        except OSError:  # it died: the call gets a worker of its own
            _kill(pid, signal.SIGKILL)
            return None
        finally:
            sock.close()
        return pid

    def _drop_spare(self):
        if self.spare is not None:
            pid, sock = self.spare
            self.spare = None
            sock.close()   # it reads EOF and leaves
            _kill(pid, signal.SIGKILL)
            # reaped here: gone before the server drains the pools it may be filling
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def _spare_main(self, sock, mask, calm):
        """In the spare: wait for a call, then become its worker.  calm: no call since the
        last spare started a container (see StoreKind.ahead)."""
        try:
            import prctl
            prctl.set_pdeathsig(signal.SIGKILL)  # SIGHUP is blocked while it waits
            if os.getppid() == 1:
                os._exit(0)
            prctl.set_name("ctrun-spare")
            # the server's lock: not held by a spare, nor by what it forks while it waits
            # (the server's exit takes it back to empty the pools)
            os.close(self.lock)
            self.lock = None
            self.kind.ahead(sock, calm)
            head = b""
            fds = []
            while len(head) < 9:
                data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE((NFDS + 1) * 4),
                                               socket.MSG_CMSG_CLOEXEC)
                fds += passed_fds(anc)
                if not data:
                    os._exit(0)  # dropped unused
                head += data
            size, peer = (int.from_bytes(head[i:i + 4], "little") for i in (0, 4))
            adopts, payload = head[8:9] == b"1", head[9:]
            while len(payload) < size:
                data = sock.recv(1 << 16)
                if not data:
                    os._exit(0)
                payload += data
            sock.close()
            c = _Conn(None, peer)
            c.fds, c.reply = fds[:NFDS], fds[NFDS]
            req = _parse(payload, self.kind.magic)
        except BaseException:  # noqa: BLE001 - nothing was asked of it yet
            os._exit(1)
        self._worker(c, req, mask, adopts)  # never returns

    def _reap(self):
        for pid, status in procs.reaped():
            if self.spare is not None and pid == self.spare[0]:
                self.spare[1].close()  # it died waiting
                self.spare = None
            c = self.workers.pop(pid, None)
            if c is None:
                continue
            if c in self.conns:
                _send(c, b"k%d\n" % os.WTERMSIG(status) if os.WIFSIGNALED(status)
                      else b"x%d\n" % os.WEXITSTATUS(status))
                self._close(c)

    def _close(self, c):
        if c in self.conns:
            self.conns.discard(c)
            self.sel.unregister(c.sock)
            c.sock.close()
        _close_fds(c)

    # ---------------------------------------------------------------- the worker
    def _worker(self, c, req, mask, adopts):
        """In the forked child: become the client's CLI process, run the command, exit."""
        code = 1
        server = os.getppid()
        reply = None
        try:
            reply = c.reply if c.sock is None else os.dup(c.sock.fileno())
            if adopts:
                from . import monitor
                monitor.ADOPTS = True
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH,
                      signal.SIGCHLD):
                signal.signal(s, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            import prctl
            prctl.set_pdeathsig(signal.SIGHUP)  # the server died: as a terminal hang-up
            if os.getppid() != server:
                os.kill(os.getpid(), signal.SIGHUP)
            prctl.set_name(self.kind.prog)
            self.kind.worker()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # nothing of the server's, nor of its other clients', stays open in a worker
            self.sel.close()
            for s in (self.listener, self.wake_r, self.wake_w):
                if s is not None:
                    s.close()
            os.close(self.replied_r)
            if self.listener is not None and self.lock is not None:
                os.close(self.lock)
            for other in self.conns:
                other.sock.close()
                if other is not c:
                    _close_fds(other)
            if self.spare is not None:
                self.spare[1].close()
            stdin, stdout, stderr, cwd = c.fds
            for i, fd in enumerate((stdin, stdout, stderr)):
                os.dup2(fd, i)
            os.fchdir(cwd)
            _close_fds(c)
            os.umask(req["umask"])
            os.environ.clear()
            for item in req["env"]:
                k, eq, v = item.partition(b"=")
                if eq and k:
                    os.environb[k] = v
            # the client's limits, as a CLI it started would have inherited them (a
            # container's processes inherit them in turn)
            procs.take_limits(procs.limits_of(c.peer))
            sys.argv = [self.kind.prog, *req["argv"]]
            _reopen_stdio()
            from . import state
            state.defer_removals()
            import importlib
            code = _run_cli(importlib.import_module(self.kind.entry).main, req["argv"])
        except KeyboardInterrupt:  # a Ctrl-C relayed before the CLI's code ran
            code = 130
        except BaseException as e:  # noqa: BLE001 - taking the client's place failed
            _write(2, f"ctrun: error: the ctrun server could not run this command: {e}\n")
        finally:
            if os.getppid() == server:   # else the client learns that its server died
                _reply(reply, code)
                # the server may fork the next call's spare now (pipe: atomic); the top
                # bit: this call left a container starting (monitor.STARTED)
                started = getattr(sys.modules.get("ctrun.monitor"), "STARTED", False)
                try:
                    os.write(self.replied_w, (os.getpid() | started << 31).to_bytes(
                        4, "little"))
                except OSError:
                    pass
            from . import state
            state.finish_removals()
            os._exit(code)


def _quiet(sock):
    """Wait until nothing but this process has been runnable for QUIET_S (the running
    count of /proc/loadavg), at most QUIET_MAX_S; False if a call came meanwhile."""
    deadline = time.monotonic() + QUIET_MAX_S
    since = None
    while not select.select([sock], [], [], QUIET_POLL_S)[0]:
        now = time.monotonic()
        try:
            with open("/proc/loadavg", "rb") as f:
                running = int(f.read().split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            running = 1
        if running > 1:
            since = None
        elif since is None:
            since = now
        if (since is not None and now - since >= QUIET_S) or now > deadline:
            return True
    return False


def _own_pages(sock):
    """In the spare: take a copy of each page shared with the server, so the call's steps
    do not fault on them one by one.  MADV_POPULATE_WRITE (Linux 5.14) does it in the
    kernel for every private writable mapping, a chunk at a time: a call that comes
    meanwhile (calls back to back) stops it, and the rest faults as it is touched.
    Without it, each object Python tracks is referenced (its refcount written), which
    covers most of its heap."""
    import ctypes
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    with open("/proc/self/maps", "rb") as f:
        spans = [[int(x, 16) for x in span.split(b"-")]
                 for span, perms in (line.split(None, 2)[:2] for line in f)
                 if perms == b"rw-p"]
    for start, end in spans:
        for at in range(start, end, POPULATE_CHUNK):
            if madvise(at, min(POPULATE_CHUNK, end - at), MADV_POPULATE_WRITE) != 0:
                if ctypes.get_errno() == errno.EINVAL and at == spans[0][0]:
                    import gc   # a kernel before 5.14
                    gc.get_objects()
                    return
                break   # a mapping it cannot populate: the next one
            if select.select([sock], [], [], 0)[0]:
                return


def warm():
    import importlib
    # locale: argparse's messages would load it in every worker otherwise
    for name in ("locale",) + WARM:
        importlib.import_module(name)
    from .cgroups.detect import detect
    detect()   # the host's cgroup layout: a worker only checks it (ctrun.cgroups.detect)
    from .runtime import seccomp
    seccomp.cache_key(())   # reads the compiler's sources once (seccomp._compiler)
    from . import cli
    for verb in cli.VERBS:   # each verb's parser, as cli.main would build it per call
        cli.parser(verb)
    # argparse's code run here, so the interpreter has adapted it to these calls once
    # (Python 3.11 specializes a function's bytecode after its first calls) rather than
    # in each worker: parsing only, nothing is done
    for _ in range(WARM_PARSES):
        for argv in (["run", "--rm", "--net", "none", "busybox"], ["start", "NAME"],
                     ["exec", "NAME"], ["list"]):
            cli.parser(argv[0]).parse_args(argv)


def _parse(payload, magic):
    fields = payload.split(b"\0")
    try:
        if fields[0] != magic:
            return None
        argc = int(fields[3])
        if not 0 <= argc <= len(fields) - 4:
            return None
        return {"pkg": os.fsdecode(fields[1]), "umask": int(fields[2], 8) & 0o777,
                "argv": [os.fsdecode(a) for a in fields[4:4 + argc]],
                "env": fields[4 + argc:]}
    except (IndexError, ValueError):
        return None


def _reopen_stdio():
    """sys.stdin/stdout/stderr over the client's fds, buffered as Python does it for a
    process started on them (stdout line-buffered on a terminal, stderr always)."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        old = getattr(sys, name)
        stream = open(fd, mode, encoding=old.encoding, errors=old.errors, closefd=False)
        if mode == "w":
            stream.reconfigure(line_buffering=fd == 2 or os.isatty(fd),
                               write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_cli(main, argv):
    """The CLI's main(argv) as `sys.exit(main())` runs it: its exit code."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        import traceback
        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as Python dies of an uncaught one
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # noqa: BLE001 - as the interpreter reports it
        import traceback
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    return code if _flush() else 120


def _reply(fd, code):
    """In a worker whose command is done: the exit code (as os._exit passes it on) to the
    client, which then returns while this copy of the server is torn down.  The relayed
    signals are blocked first (a hang-up of the client that got its code must not turn
    the exit into a kill), and the client's stdio is closed (a reader of its output sees
    the end with the client's exit); the socket is shut for writing, so the server's
    own reply at the reaping goes nowhere."""
    if fd is None:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)
    os.closerange(0, 3)
    try:
        os.write(fd, b"x%d\n" % (code & 0xFF))
        socket.socket(fileno=fd).shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _flush():
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            ok = False
    return ok


def _send(c, data):
    try:
        c.sock.send(data)
    except OSError:
        pass


def _write(fd, text):
    try:
        os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _close_fds(c):
    for fd in c.fds:
        os.close(fd)
    c.fds = []


def _drain(sock):
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


if __name__ == "__main__":
    # ROOT [READY_FD|-] [--adopted] [--oci]
    sys.exit(Server(sys.argv[1], adopted="--adopted" in sys.argv[3:],
                    oci="--oci" in sys.argv[3:]).serve(
        int(sys.argv[2]) if sys.argv[2:3] not in ([], ["-"]) else None))
