"""A zygote: a fork of the warm server parked in a pooled cgroup, which becomes a start's
intermediate process (runtime.process.middle) on request.

Moving a task into a cgroup (a write to cgroup.procs) takes cgroup_threadgroup_rwsem for
writing, and on a host whose hierarchies are not mounted with favordynmods that waits for
an RCU grace period whenever no other attach happened just before: 5 to 19 ms on an idle
host, fresh or reused cgroup alike, and the same on cgroup v1 and v2.  A fork does not
take it (the child is born in its parent's cgroups), so the attach is done once, by the
zygote, when the pool is filled; the start renames the pooled cgroup, zygote inside, into
place (ctrun.cgroups.pool) and hands the zygote the spec, stdio and the channel: the
container's init is then forked inside its cgroup with no attach on the start path.

    z = Zygote(pool.procs_files(entry), pool.mounts)   # parked, off the critical path
    ...                                          # pool.take() renames its cgroup
    launched = process.launch(spec, stdio, zygote=z)   # z becomes the intermediate

A zygote serves one start; discard() ends one that was not used (the pool's drain kills
whatever is in its cgroups anyway).

A zygote is forked before the call it serves comes (by the server, from its own state): it
is handed what a fork of the caller would have inherited (umask, resource limits, signal
mask, environment, working directory).
"""

import json
import os
import signal
import socket

from .. import libc, procs
from ..errors import CtrunError

_LEN = 8   # the request's length prefix: a spec is larger than one read
_NFDS = 5  # stdin, stdout, stderr, the channel, the caller's working directory


class Zygote:
    def __init__(self, procs_files, covers):
        """Fork the zygote and wait until it has joined every cgroup.procs file given;
        covers: the mount points of those hierarchies (a start's own attach is left out
        there, and still done elsewhere: the cgroup2 side of a hybrid host, which cannot
        be renamed into place)."""
        self.covers = [str(m).rstrip("/") + "/" for m in covers]
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            mine.close()
            _park(theirs, procs_files)
        theirs.close()
        self.pid, self.sock = pid, mine
        if mine.recv(1) != b"r":
            self.discard()
            raise CtrunError("the zygote could not join its pooled cgroup; the start pool "
                             "is not usable here")

    def hand_over(self, csock, spec, stdio, tty, bpf):
        """Send the start's request; the zygote becomes its intermediate.  Returns its pid
        (the caller's child, so the caller reaps it as it would its own fork)."""
        if self.sock is None:
            raise CtrunError("this zygote has already served a start; take another")
        ann = dict(spec["annotations"])
        # already there: an attach would wait again
        ann["run.ctrun.cgroup_procs"] = [p for p in ann.get("run.ctrun.cgroup_procs", [])
                                         if not p.startswith(tuple(self.covers))]
        body = json.dumps({
            "spec": {**spec, "annotations": ann}, "tty": tty, "bpf": bpf.hex() if bpf else None,
            "umask": _umask(), "env": dict(os.environ),
            "mask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, ())),
            "rlimits": procs.limits_of()}).encode()
        cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            socket.send_fds(self.sock, [len(body).to_bytes(_LEN, "big")],
                            [*stdio, csock.fileno(), cwd])
            self.sock.sendall(body)
        finally:
            os.close(cwd)
            self.sock.close()
            self.sock = None
        return self.pid

    def discard(self):
        """End an unused zygote."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _park(sock, procs_files):
    """In the zygote: join the cgroups, then wait for one request (EOF: exit)."""
    try:
        import prctl
        prctl.set_pdeathsig(signal.SIGKILL)   # never outlives the server that forked it
        prctl.set_name("ctrun-zygote")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the server
        # none of the server's files (its socket, the other zygotes' ends): an unused
        # zygote must see EOF when its own end closes
        fd = sock.fileno()
        if fd > 3:
            libc.close_range(3, fd - 1)
        libc.close_range(fd + 1)
        for f in procs_files:
            fd = os.open(f, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        sock.sendall(b"r")
        head, fds, _, _ = socket.recv_fds(sock, _LEN, _NFDS)
        if len(head) < _LEN or len(fds) != _NFDS:
            os._exit(0)
        for fd in fds:   # SCM_RIGHTS gives inheritable fds: the workload must not get them
            os.set_inheritable(fd, False)
        size, body = int.from_bytes(head, "big"), b""
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                os._exit(1)
            body += chunk
        sock.close()
        req = json.loads(body)
        _inherit(req, fds.pop())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        prctl.set_pdeathsig(0)   # the intermediate now, which a fork would be: no tie left
    except BaseException:  # noqa: BLE001 - the server sees EOF and reports it
        os._exit(1)
    from .process import Channel, middle
    middle(Channel(socket.socket(fileno=fds[3])), req["spec"], tuple(fds[:3]), req["tty"],
           bytes.fromhex(req["bpf"]) if req["bpf"] else None)
    os._exit(1)   # middle() never returns


def _umask():
    """This process's umask, read without setting it (os.umask would, for a moment, for
    every thread: a file another one makes then would get the wrong mode)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    raise CtrunError("/proc/self/status gives no Umask: this kernel is too old for ctrun")


def _inherit(req, cwd):
    """Take the caller's umask, limits, signal mask, environment and working directory,
    as its fork would have had them."""
    os.umask(req["umask"])
    procs.take_limits(req["rlimits"])
    signal.pthread_sigmask(signal.SIG_SETMASK, req["mask"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.fchdir(cwd)
    os.close(cwd)

