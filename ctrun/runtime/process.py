"""Creating a container's init, joining a running container, and the parent<->child channel.

The channel is a socketpair carrying JSON lines (never pickle); a pty master travels as
SCM_RIGHTS with its message.  The child's real error travels back and is what the user
sees.  Success of the final execve is signalled by EOF: the child's end is close-on-exec.

Start-up is: parent forks an intermediate, which unshares CLONE_NEWPID (that affects its
children only) and forks the init, reports the init's host pid and exits, so the init is
reparented to the nearest child subreaper: the shared monitor, or the CLI for `run`.  An
attached `run` (the CLI reaps its init) forks the init itself when it can (launch's
child=True): it unshares CLONE_NEWPID for that one fork and takes its own pid namespace
back for its later children (setns).
"""

import json
import os
import signal
import socket

from .. import errors, libc, namespaces
from ..namespaces import loopback_up as _loopback_up
from ..kernel import linux
from . import inhooks, paths, rootfs, security, sysinfo, terminal


class Channel:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.fds = []

    def send(self, obj, fd=None):
        data = json.dumps(obj).encode() + b"\n"
        if fd is None:
            self.sock.sendall(data)
        else:
            socket.send_fds(self.sock, [data], [fd])

    def recv(self):
        """The next message (a dict, with "fd" if one was attached), or None at EOF."""
        while b"\n" not in self.buf:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
            self.fds.extend(fds)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        msg = json.loads(line)
        if msg.get("has_fd") and self.fds:
            msg["fd"] = self.fds.pop(0)
        return msg

    def close(self):
        self.sock.close()


def _raise_child_error(msg):
    cls = getattr(errors, msg.get("kind", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.CtrunError)):
        cls = errors.ContainerFailed
    raise cls(msg["message"])


# set in an init released by `ctrun-oci start` (another process): its creator has exited, so
# an error after the release is written to the container's stderr (the client's log) too
_CREATOR_GONE = []

# the exec fifo (an O_PATH descriptor) an OCI init waits on, opened on the host side
_EXEC_FIFO = []


def _report(chan, step, exc):
    """In a child: send the error to the parent, then exit without running Python cleanup."""
    if isinstance(exc, errors.CtrunError):
        kind, text = type(exc).__name__, str(exc)
    elif isinstance(exc, OSError):
        kind, text = "ContainerFailed", f"container setup failed while {step}: {exc.strerror or exc}"
    else:
        kind, text = "ContainerFailed", f"container setup failed while {step}: {exc!r}"
    if os.environ.get("CTRUN_DEBUG"):
        import traceback
        text += "\n" + traceback.format_exc()
    if _CREATOR_GONE:
        try:
            os.write(2, f"ctrun-oci: {text}\n".encode())
        except OSError:
            pass
    try:
        chan.send({"type": "error", "kind": kind, "message": text})
    except OSError:
        pass
    linux.exit(126)


def _enter_workdir(chan, proc, cwd, tty, make):
    """Inside the container: find the command, enter cwd (created if `make`), and take a
    terminal from the container's own devpts when asked; returns the command's path.
    Errors name what failed (CommandNotFound, or the directory)."""
    exe = paths.lookup_command("/", proc["args"][0], _env_dict(proc["env"]).get("PATH", ""))
    # entered through an fd resolved inside the root, never by a path the kernel would
    # resolve through magic links (the cwd is checked again once the fds are closed)
    try:
        fd = paths.mkdirs_in_root("/", cwd) if make else paths.open_workdir("/", cwd)
        try:
            linux.fchdir(fd)
        finally:
            os.close(fd)
    except errors.InvalidInput as e:
        raise errors.InvalidInput(f"cannot enter the working directory: {e}") from None
    except OSError as e:
        raise errors.InvalidInput(f"cannot enter the working directory '{cwd}' in the "
                                  f"container: {os.strerror(e.errno)}; give an existing "
                                  "directory") from None
    if tty:
        master, slave = terminal.open_pty_inside()
        chan.send({"type": "pty", "has_fd": True}, fd=master)
        os.close(master)
        terminal.become_session_leader_on(slave)
    return exe


def _final_exec(chan, proc, bpf, argv0_path, env, preserve_fds=0, intercept=False):
    """Shared tail of init and exec: privileges, fds, seccomp, execve.  preserve_fds: how
    many fds after stdio pass to the workload (runc's --preserve-fds); intercept: hand
    sysinfo(2) to the launcher (runtime.sysinfo), whose listener fd goes over chan."""
    # without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which the drop may take
    # away: then it is loaded first, as runc does (a bundle's profile allows the few calls
    # that follow; ctrun's own containers always set no_new_privs and load it last)
    early = bool(bpf) and not proc.get("noNewPrivileges")
    step = "dropping privileges"
    try:
        security.reset_signals()
        if early:
            step = "installing the seccomp filter"
            security.install_seccomp(bpf)
            step = "dropping privileges"
        security.drop_privileges(proc)
        step = "closing inherited file descriptors"
        passed = set(range(3, 3 + preserve_fds))
        for fd in passed:
            os.set_inheritable(fd, True)
        security.close_fds(keep={chan.sock.fileno()} | passed)
        step = "checking the working directory"
        security.check_cwd()
        if intercept:
            step = "intercepting sysinfo"
            _send_listener(chan)
        if not early:
            step = "installing the seccomp filter"
            security.install_seccomp(bpf)
        step = f"executing {argv0_path}"
        linux.execve(argv0_path, proc["args"], _env_dict(env))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the parent
        _report(chan, step, e)


def _send_listener(chan):
    """Load the sysinfo filter and send its listener to the launcher; closed here at once,
    so the workload never holds it (Launched.start takes it)."""
    fd = sysinfo.install()
    if fd is not None:
        try:
            chan.send({"type": "sysinfo", "has_fd": True}, fd=fd)
        finally:
            os.close(fd)


def _env_dict(env_list):
    return dict(item.split("=", 1) for item in env_list)


def _init_main(chan, spec, stdio, tty, bpf):
    """The container's init (PID 1 of its pid namespace), until it execs the workload."""
    step = "starting"
    try:
        if not tty:
            for i, fd in enumerate(stdio):
                if fd != i:
                    os.dup2(fd, i)
        linux.setsid()
        step = "creating namespaces"
        linux.unshare(namespaces.unshare_flags(spec["linux"]["namespaces"]))
        ann = spec["annotations"]
        if ann.get("run.ctrun.runtime_hooks") or ann.get("run.ctrun.create_hooks"):
            rootfs.before_pivot(lambda: _oci_hooks(chan, ann))
        step = "preparing the root file system"
        rootfs.prepare(spec)
        step = "masking /proc and /sys paths"
        rootfs.mask(spec)
        step = "setting the hostname"
        linux.sethostname(spec["hostname"])
        step = "bringing up loopback"
        _loopback_up()
        proc = spec["process"]
        step = "setting rlimits"
        security.set_rlimits(proc)
        step = "finding the command"
        exe = _enter_workdir(chan, proc, proc["cwd"], tty, make=True)
        if tty and spec["annotations"].get("run.ctrun.init"):
            step = "binding the terminal to /dev/console"
            rootfs.console_on_terminal(0)
        chan.send({"type": "ready"})
        if _EXEC_FIFO:
            step = "waiting for the start"
            _await_release(_EXEC_FIFO.pop())
            if spec["annotations"].get("run.ctrun.start_hooks"):
                step = "running the startContainer hooks"
                inhooks.run(spec["annotations"]["run.ctrun.start_hooks"], "startContainer")
        else:
            msg = chan.recv()
            if not msg or msg.get("type") != "start":
                linux.exit(1)
    except BaseException as e:  # noqa: BLE001
        _report(chan, step, e)
    _final_exec(chan, proc, bpf, exe, proc["env"],
                spec["annotations"].get("run.ctrun.preserve_fds", 0),
                bool(spec["annotations"].get("run.ctrun.sysinfo")))


def _oci_hooks(chan, ann):
    """Before pivot_root: the caller runs prestart/createRuntime (in the runtime's
    namespaces), then this init runs createContainer (in the container's), in the spec's
    order.  The host's /proc still names this process by its host pid."""
    pid = int(os.readlink("/proc/self"))
    if ann.get("run.ctrun.runtime_hooks"):
        chan.send({"type": "hooks", "pid": pid})
        msg = chan.recv()
        if not msg or msg.get("type") != "hooks-done":
            linux.exit(1)  # the caller reports its hook's failure and kills us
    if ann.get("run.ctrun.create_hooks"):
        inhooks.run(ann["run.ctrun.create_hooks"], "createContainer", pid)


def _await_release(fifo):
    """Block until `ctrun-oci start` opens the exec fifo for reading, then tell it the init
    is going ahead (one byte).  Reopened through /proc/self/fd: the fifo's directory (the
    runtime's state dir) is not reachable from inside the container."""
    _CREATOR_GONE.append(True)
    fd = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
        os.close(fifo)


class Launched:
    listener = None   # the fd of the container's sysinfo listener, once started (sysinfo)

    def __init__(self, pid, pid_start, chan, master):
        self.pid, self.pid_start, self.chan, self.master = pid, pid_start, chan, master

    def start(self):
        """Let the init exec the workload; raise the child's error if the exec fails.  A
        container whose sysinfo is intercepted leaves its listener in self.listener: the
        caller answers it or hands it on, at once (the workload's calls wait for it)."""
        try:
            self.chan.send({"type": "start"})
            msg = self.chan.recv()
            while msg is not None and msg.get("type") == "sysinfo" and "fd" in msg:
                self.listener = msg["fd"]
                os.set_inheritable(self.listener, False)  # SCM_RIGHTS gives inheritable fds
                msg = self.chan.recv()
        finally:
            self.chan.close()
        if msg is not None:
            if self.listener is not None:
                os.close(self.listener)
                self.listener = None
            _raise_child_error(msg)


def launch(spec, stdio=(0, 1, 2), tty=False, bpf=None, on_hooks=None, zygote=None,
           on_pid=None, child=False):
    """Create the container's init, set up but not yet running the workload.  on_hooks(pid):
    the caller's runtime-namespace OCI hooks, run when the init asks (before its
    pivot_root; annotation run.ctrun.runtime_hooks).  zygote: a runtime.zygote.Zygote
    already in the container's cgroup, which becomes the intermediate instead of a fork
    of ours (no cgroup attach, so no wait for the kernel on the start path).  on_pid(pid):
    the caller's records of the start, written while the init builds its root (its
    failure kills the init).  child: the init may stay the caller's child (an attached
    run, which reaps it); unless a user namespace must be mapped or a pid or user
    namespace joined by path (_direct), it is then forked from here, without an
    intermediate, and joins the other namespaces given by path itself."""
    from ..state import proc_start_time
    psock, csock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    chan = Channel(psock)
    mid = None
    if zygote is not None:
        try:
            mid = zygote.hand_over(csock, spec, stdio, tty, bpf)
        except OSError:
            zygote.discard()   # it died before it had the request: fork as without it
        except BaseException:
            csock.close()
            chan.close()
            raise
    if mid is None and child and _direct(spec):
        try:
            pid = _fork_init(psock, csock, spec, stdio, tty, bpf)
        finally:
            csock.close()
        return _await_init(chan, None, spec, on_hooks, proc_start_time, on_pid, pid)
    if mid is None:
        mid = linux.fork()
        if mid == 0:
            psock.close()
            middle(Channel(csock), spec, stdio, tty, bpf)
    csock.close()
    return _await_init(chan, mid, spec, on_hooks, proc_start_time, on_pid)


def _direct(spec):
    """The init can be forked by its caller: no user namespace (whose maps its parent
    writes) and no pid namespace to join by path (its parent's setns), no exec fifo (an OCI
    create, whose init outlives it)."""
    nss = spec["linux"]["namespaces"]
    return not (any(ns.get("path") and ns["type"] in ("pid", "user") for ns in nss)
                or namespaces.new(nss, "user") or spec["annotations"].get("run.ctrun.exec_fifo"))


def _fork_init(psock, csock, spec, stdio, tty, bpf):
    """Fork the init from this process, into a new pid namespace when the spec has one;
    this process's own later children stay in its pid namespace.  Returns its pid."""
    own = None
    if namespaces.new(spec["linux"]["namespaces"], "pid"):
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        linux.unshare(libc.CLONE_NEWPID)
    try:
        pid = linux.fork()
        if pid == 0:
            psock.close()
            chan = Channel(csock)
            step = "opening the namespaces to join"
            try:
                linux.set_dumpable(False)   # first, as in middle()
                joined = _open_paths(spec)
                step = "joining the container's cgroup"
                _enter_host_side(spec)
                step = "joining namespaces by path"
                _join(joined)
            except BaseException as e:  # noqa: BLE001
                _report(chan, step, e)
            _init_main(chan, spec, stdio, tty, bpf)
    finally:
        if own is not None:
            linux.setns(own, libc.CLONE_NEWPID)
            os.close(own)
    return pid


def _open_paths(spec):
    """The namespaces the spec gives by path, opened (before anything can change what
    they name)."""
    nss = spec["linux"]["namespaces"]
    if not any(ns.get("path") for ns in nss):
        return []
    from ..namespaces import join as nsjoin
    return nsjoin.open_paths(nss)


def _join(opened):
    if opened:
        from ..namespaces import join as nsjoin
        nsjoin.join(opened)   # the user namespace first: it owns the rest


def _enter_host_side(spec):
    """What the init takes from the host side before any namespace (once non-dumpable,
    until its execve): the container's cgroup (inherited by the workload), oomScoreAdj."""
    for p in spec["annotations"].get("run.ctrun.cgroup_procs", []):
        fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC)
        try:
            linux.cgroup_attach(fd)
        finally:
            os.close(fd)
    if "oomScoreAdj" in spec["process"]:
        _write_oom_score_adj(spec["process"]["oomScoreAdj"])


def middle(cchan, spec, stdio, tty, bpf):
    """The intermediate: joins the cgroup and the namespaces given by path, makes the new
    user and pid namespaces, forks the init and exits."""
    step = "joining the container's cgroup"
    try:
        # first: the init inherits it and keeps it until its execve
        linux.set_dumpable(False)
        nss = spec["linux"]["namespaces"]
        step = "opening the namespaces to join"
        joined = _open_paths(spec)
        step = "joining the container's cgroup"
        # joined here, while still host root: the init inherits the cgroup
        _enter_host_side(spec)
        if spec["annotations"].get("run.ctrun.exec_fifo"):
            step = "opening the exec fifo"
            _EXEC_FIFO.append(os.open(spec["annotations"]["run.ctrun.exec_fifo"],
                                      os.O_PATH | os.O_CLOEXEC))
        if any(ns["type"] == "user" for ns in nss):
            step = "opening volume sources"
            rootfs.open_sources(spec, (spec["annotations"].get("run.ctrun.cgroup_dirs")
                                       or {}).values())
        step = "joining namespaces by path"
        _join(joined)
        new_pid = namespaces.new(nss, "pid")
        step = "creating the pid namespace"
        if namespaces.new(nss, "user"):
            # the user namespace comes first so that it owns every other namespace
            step = "creating the user namespace"
            linux.unshare(libc.CLONE_NEWUSER | (libc.CLONE_NEWPID if new_pid else 0))
            cchan.send({"type": "userns", "pid": os.getpid()})
            msg = cchan.recv() or {}
            if msg.get("type") != "mapped":
                linux.exit(1)
            if "fd" in msg:
                rootfs.use_root_tree(msg["fd"])
            linux.setresgid(0, 0, 0)
            linux.setresuid(0, 0, 0)
            linux.setgroups([])
        elif new_pid:
            linux.unshare(libc.CLONE_NEWPID)
        pid = linux.fork()
        if pid == 0:
            _init_main(cchan, spec, stdio, tty, bpf)
        cchan.send({"type": "pid", "pid": pid})
        linux.exit(0)
    except BaseException as e:  # noqa: BLE001
        _report(cchan, step, e)


def _await_init(chan, mid, spec, on_hooks, proc_start_time, on_pid=None, pid=None):
    """The caller's side of launch: answer the intermediate (mid; None: pid, the init, is
    this process's child) and the init until it is ready."""
    master = None
    ready = False
    try:
        if mid is None and on_pid is not None:
            on_pid(pid)
        while True:
            msg = chan.recv()
            if msg is None:
                raise errors.ContainerFailed("container init exited during setup; "
                                             "rerun with --debug for details")
            if msg["type"] == "pid":
                pid = msg["pid"]
                if on_pid is not None:
                    on_pid(pid)
            elif msg["type"] == "userns":
                _map_userns(chan, msg["pid"], spec)
            elif msg["type"] == "pty":
                master = msg["fd"]
            elif msg["type"] == "hooks":
                pid = pid or msg["pid"]
                on_hooks(msg["pid"])   # its failure kills the init below
                chan.send({"type": "hooks-done"})
            elif msg["type"] == "ready":
                ready = True
            if ready and pid:
                if mid is not None:  # it has exited: the init is reparented
                    os.waitpid(mid, 0)
                break
            elif msg["type"] == "error":
                _raise_child_error(msg)
    except BaseException:
        chan.close()
        if master is not None:
            os.close(master)
        if pid:
            _kill_reap(pid)
        if mid is not None:
            _kill_reap(mid)
        raise
    return Launched(pid, proc_start_time(pid), chan, master)


def _map_userns(chan, pid, spec):
    """In the parent: write the new user namespace's maps, then answer "mapped" with the
    root tree of a ctrun container (an OCI spec's root was cloned by the child itself)."""
    from ..namespaces import userns
    ov = spec["annotations"].get("run.ctrun.overlay")
    if ov is None:
        userns.write_spec_maps(pid, spec["linux"])
        chan.send({"type": "mapped"})
        return
    userns.write_maps(pid, spec["annotations"]["run.ctrun.userns_base"])
    tree = rootfs.overlay_tree(pid, ov, ov.get("idmap", False))
    try:
        chan.send({"type": "mapped", "has_fd": True}, fd=tree)
    finally:
        os.close(tree)


def _write_oom_score_adj(value):
    """Through the host's /proc, before any namespace: the init and its workload inherit
    it (lowering it needs CAP_SYS_RESOURCE, as for runc)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(int(value)))
    except OSError as e:
        raise errors.InvalidInput(f"process.oomScoreAdj {value!r} cannot be set: "
                                  f"{e.strerror}; give a value in -1000..1000 (a lower one "
                                  "than the caller's needs CAP_SYS_RESOURCE)") from None


def _kill_reap(pid):
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def exit_code(status):
    """Shell convention: the exit code, or 128+signal when killed by a signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def join(live, spec, argv, env=(), cwd=None, user=None, tty=False, stdin=True, bpf=None,
         on_listener=None):
    """Run argv inside a running container; returns its exit code (ctrun exec).
    on_listener(fd): the container's supervisor takes the sysinfo listener of the command
    (runtime.sysinfo), at once: none when not given."""
    proc = dict(spec["process"])
    proc["args"] = list(argv)
    envd = _env_dict(proc["env"])
    envd.update(_env_dict(env))
    if tty:
        envd.setdefault("TERM", os.environ.get("TERM", "xterm"))
    proc["env"] = [f"{k}={v}" for k, v in envd.items()]
    if user:
        uid, _, gid = user.partition(":")
        proc["user"] = {"uid": int(uid), "gid": int(gid) if gid else 0}
    mid, chan = _fork_joiner(live, spec, proc, cwd or proc["cwd"], tty, stdin, bpf, False,
                             on_listener is not None)
    master = None
    try:
        while True:
            msg = chan.recv()
            if msg is None:
                break
            if msg["type"] == "sysinfo" and "fd" in msg:
                os.set_inheritable(msg["fd"], False)
                on_listener(msg["fd"])
            elif msg["type"] == "pty":
                master = msg["fd"]
                break
            elif msg["type"] == "error":
                os.waitpid(mid, 0)
                _raise_child_error(msg)
        if master is not None:
            status = terminal.relay(master, lambda: _poll(mid), forward_stdin=stdin)
            os.close(master)
        else:
            status = _wait_forwarding(mid)
        # an exec failure after the pty was sent still arrives as a message
        msg = chan.recv()
        if msg and msg.get("type") == "error":
            _raise_child_error(msg)
        return exit_code(status)
    finally:
        chan.close()


def join_detached(live, spec, tty=False, bpf=None):
    """Start spec["process"] inside a running container and return (its host pid, the pty
    master or None) once it has exec'd, without waiting for it: it is reparented to the
    caller's subreaper (ctrun-oci exec --detach, as the containerd shim and conmon call it)."""
    proc = spec["process"]
    mid, chan = _fork_joiner(live, spec, proc, proc["cwd"], tty, True, bpf, True)
    pid = master = None
    try:
        while True:  # until EOF: the command's execve closed the last end of the channel
            msg = chan.recv()
            if msg is None:
                break
            if msg["type"] == "pid":
                pid = msg["pid"]
            elif msg["type"] == "pty":
                master = msg["fd"]
            elif msg["type"] == "error":
                if master is not None:
                    os.close(master)
                _raise_child_error(msg)
    finally:
        chan.close()
        os.waitpid(mid, 0)
    if pid is None:
        raise errors.ContainerFailed("the exec'd process exited during setup; "
                                     "rerun with --debug for details")
    return pid, master


def _fork_joiner(live, spec, proc, cwd, tty, stdin, bpf, detach, intercept=False):
    """Fork the middle process of an exec (see _join_middle); (its pid, the channel)."""
    from ..state import alive
    from ..namespaces import join as nsjoin  # exec only: not on the start path
    kinds = {ns["type"] for ns in spec["linux"]["namespaces"]}
    ns_fds = nsjoin.open_all(live["pid"], kinds)
    cg_fds = []
    try:
        if not alive(live["pid"], live["pid_start"]):
            raise errors.Conflict("the container stopped while ctrun was joining it")
        for p in spec["annotations"].get("run.ctrun.cgroup_procs", []):
            cg_fds.append(os.open(p, os.O_WRONLY | os.O_CLOEXEC))
        psock, csock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mid = linux.fork()
        if mid == 0:
            _join_middle(Channel(csock), psock, ns_fds, cg_fds, proc, cwd, tty, stdin, bpf,
                         detach, intercept)
    finally:
        for _, fd in ns_fds:
            os.close(fd)
        for fd in cg_fds:
            os.close(fd)
    csock.close()
    return mid, Channel(psock)


def _poll(pid):
    p, status = os.waitpid(pid, os.WNOHANG)
    return status if p else None


def _wait_forwarding(pid, translate=None):
    """Wait for pid, passing SIGINT/SIGTERM/SIGHUP on to it (as translate[sig] if given: a
    signal number, or a callable that asks pid to stop in its own way)."""
    def fwd(sig, _):
        to = (translate or {}).get(sig, sig)
        try:
            to() if callable(to) else os.kill(pid, to)
        except ProcessLookupError:
            pass
    old = {s: signal.signal(s, fwd) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _join_middle(chan, psock, ns_fds, cg_fds, proc, cwd, tty, stdin, bpf, detach=False,
                 intercept=False):
    """Middle process of exec: enters the namespaces, forks the command, relays its status.

    The order is what keeps the host out of the container's reach:
    1. non-dumpable, first of all: from here until the command's execve, neither this host
       Python nor the child it forks can be ptraced by the container, nor its
       /proc/PID/exe (the host's interpreter) or /proc/PID/fd/* opened, even once the
       child holds no more capabilities than container root; this process never execs and
       stays so for the life of the command;
    2. every host fd closed but the channel, the namespace and cgroup fds, while still
       wholly on the host: once inside, no host object is left to reach, neither for the
       container nor for a path resolved in the container (a working directory linked to
       /proc/self/fd/N, the CVE-2024-21626 pattern);
    3. only then the namespaces are joined; the child closes the last ones (cgroup fds,
       and the channel at its execve, which is close-on-exec).
    """
    step = "joining the container's namespaces"
    try:
        linux.set_dumpable(False)
        psock.close()
        if not stdin and not tty:
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
        security.close_fds(keep={chan.sock.fileno(), *(fd for _, fd in ns_fds), *cg_fds})
        from ..namespaces import join as nsjoin  # loaded by join() before the fork
        nsjoin.join(ns_fds)
        step = "forking into the container's pid namespace"
        pid = linux.fork()
        if pid == 0:
            _join_child(chan, cg_fds, proc, cwd, tty, bpf, intercept)
        if detach:  # the command is reparented to the caller's subreaper
            chan.send({"type": "pid", "pid": pid})
            linux.exit(0)
        linux.exit(exit_code(_wait_forwarding(pid)))
    except BaseException as e:  # noqa: BLE001
        _report(chan, step, e)


def _join_child(chan, cg_fds, proc, cwd, tty, bpf, intercept=False):
    step = "joining the container's cgroup"
    try:
        for fd in cg_fds:
            linux.cgroup_attach(fd)
            os.close(fd)
        if intercept:
            # first, still holding the caps a filter needs without no_new_privs: join()
            # reads the channel only until the pty, which comes next
            step = "intercepting sysinfo"
            _send_listener(chan)
        if not tty:
            # a session of its own: the operator's terminal (still its stdio, as it must
            # be) is not its controlling terminal, so TIOCSTI cannot type into it
            linux.setsid()
        step = "setting rlimits"
        security.set_rlimits(proc)
        step = "finding the command"
        exe = _enter_workdir(chan, proc, cwd, tty, make=False)
    except BaseException as e:  # noqa: BLE001
        _report(chan, step, e)
    _final_exec(chan, proc, bpf, exe, proc["env"])
