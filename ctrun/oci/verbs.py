"""The runc verbs over ctrun's runtime: a bundle's container is created by the same
ctrun.runtime.process.launch as ctrun's own, in a cgroup of ctrun's managers, and left
waiting on its exec fifo; `start` releases it.

The client (containerd's shim, conmon) is the supervisor: the init is reparented to it (its
subreaper) when create returns, and it reaps the init and reads its exit status, so no ctrun
monitor is involved.  `run` and a non-detached `exec` are their own subreapers instead.
"""

import os
import select
import time

import _signal   # signal's constants, without the enums `import signal` builds

from .. import errors
from ..errors import Conflict, InvalidInput, NotFound, quote
from . import store
from .store import atomic_write as _atomic_write, now as _now, rmtree as _rmtree
from .store import self_start as _self_start

OCI_VERSION = "1.0.2"

# state, start, kill and delete run several times per container, each a new process: they
# load only os, select, fcntl and the state record here; json (with re and enum), signal's
# enums and the bundle code load in the verbs that use them


def parse_signal(text):
    """A signal by number, or by name with or without SIG ("KILL", "SIGKILL", "9")."""
    s = str(text).strip()
    if s.isdigit() and 0 < int(s) < _signal.NSIG:
        return int(s)
    name = s.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    # signal.Signals' members, read from _signal (`import signal` builds the enums)
    sig = getattr(_signal, name, None) if name.isidentifier() and \
        not name.startswith("SIG_") else None
    if sig is None:
        raise InvalidInput(f"unknown signal {quote(text)}; give a name such as TERM or KILL, "
                           "or a number")
    return int(sig)


class Runtime:
    def __init__(self, root=None, systemd_cgroup=False, warn=None):
        self.root = store.Root(root)
        self.systemd_cgroup = systemd_cgroup
        self.warn = warn or (lambda msg: None)
        if systemd_cgroup and not os.path.isdir("/run/systemd/system"):
            raise errors.HostUnsupported("--systemd-cgroup needs a host booted with systemd, "
                                         "and this one is not; drop --systemd-cgroup")

    # ------------------------------------------------------------------ helpers
    def _mgr(self, ct):
        from .. import cgroups
        parent, name = ct.cgroup
        return cgroups.manager(name, parent=parent, leaf=None)

    def _status(self, ct):
        if ct.rec.get("creating"):
            from ..procs import proc_start_time
            if proc_start_time(ct.creator) == ct.creator_start:
                return "creating"
            return "stopped"
        return ct.status()

    def _state_doc(self, ct, status=None):
        status = status or self._status(ct)
        return {"ociVersion": OCI_VERSION, "id": ct.id, "status": status,
                "pid": ct.pid if status not in ("stopped",) else 0, "bundle": ct.bundle,
                "rootfs": ct.rootfs, "created": ct.created, "owner": "",
                "annotations": ct.annotations}

    def _hook_state(self, ct, status):
        return {"ociVersion": OCI_VERSION, "id": ct.id, "status": status,
                "pid": ct.pid, "bundle": ct.bundle, "annotations": ct.annotations}

    def _hooks(self, ct, phase, status, fatal=True):
        hooks = (ct.rec.get("hooks") or {}).get(phase) or []
        if not hooks:
            return
        from . import hooks as hookmod
        for e in hookmod.run(hooks, self._hook_state(ct, status), phase, keep_going=not fatal):
            self.warn(str(e))

    # ------------------------------------------------------------------ create / start / run
    def create(self, cid, bundle=None, pid_file=None, console_socket=None, preserve_fds=0,
               keep_master=False):
        """Everything set up, the init waiting on its exec fifo; returns the pty master
        when keep_master (run with a terminal and no console socket), else None."""
        import json
        from ..cgroups.limits import Limits
        from ..runtime import process
        from . import bundle as bundlemod
        store.check_id(cid)
        bdir, conf = bundlemod.load(bundle)
        proc = conf["process"]
        terminal = bool(proc.get("terminal"))
        if console_socket and not terminal:
            raise InvalidInput("--console-socket was given but config.json process.terminal "
                               "is false; drop --console-socket or set process.terminal")
        if terminal and not console_socket and not keep_master:
            raise InvalidInput("config.json process.terminal is true but no --console-socket "
                               "was given; give the socket that receives the pty master")
        if console_socket:
            from . import console
            console.check(console_socket)
        if bundlemod.wants_vm(conf):  # ctrun.mode=vm: the bundle booted as a guest
            from . import vm
            return vm.create(self, cid, bdir, conf, pid_file, console_socket, keep_master)
        spec = bundlemod.runtime_spec(conf, bdir, cid)
        fields, device_rules, unified = bundlemod.limits_of(
            conf["linux"].get("resources"))
        limits = Limits.from_dict(fields)
        hooks = conf.get("hooks") or {}
        if hooks:   # the hook code loads subprocess: only for a bundle that has hooks
            from . import hooks as hookmod
            hookmod.validate(hooks)
        bpf = self._seccomp(conf)
        self._check_runtime(spec)
        parent, name = bundlemod.cgroup_of(conf, cid, self.systemd_cgroup)
        from .. import cgroups
        mgr = cgroups.manager(name, parent=parent, leaf=None)

        lock = self.root.lock(cid)
        d = None
        launched = master = None
        created = False
        try:
            d = self.root.make(cid)
            ct = store.Container(d, {
                "id": cid, "pid": 0, "pid_start": None, "bundle": bdir,
                "rootfs": spec["root"]["path"], "created": _now(),
                "annotations": dict(conf.get("annotations") or {}),
                "cgroup": [parent, name], "hooks": hooks, "creating": True,
                "creator": os.getpid(), "creator_start": _self_start()})
            ct.save()
            rules = None
            if device_rules is not None:
                if mgr.supports_device_rules():
                    rules = _with_spec_devices(device_rules, conf["linux"].get("devices"))
                elif device_rules != ["a *:* rwm"]:
                    self._no_device_cgroup(spec)
            mgr.create(device_rules=rules)
            created = True
            ct.rec["cgroup_dirs"] = [str(d) for d in mgr.dirs().values()]  # for delete
            ct.rec["freezer"] = _freezer_file(mgr)
            if not limits.is_empty():
                mgr.apply(limits)
            _write_unified(mgr, unified)
            ann = spec["annotations"]
            from ..backends.container import layout_for_container
            ann["run.ctrun.cgroup_procs"] = [str(p) for p in mgr.procs_files()]
            ann["run.ctrun.cgroup_layout"] = layout_for_container(mgr.layout)
            # bound at /sys/fs/cgroup where the container has no cgroup namespace of its own
            # (podman's default on cgroup v1) or is in a user namespace
            ann["run.ctrun.cgroup_dirs"] = {os.path.basename(str(mnt)): str(mnt / mgr.rel)
                                            for mnt in mgr.mounts().values()}
            ann["run.ctrun.seccomp"] = None
            fifo = ct.path("exec.fifo")
            os.mkfifo(fifo, 0o622)
            ann["run.ctrun.exec_fifo"] = fifo
            ann["run.ctrun.preserve_fds"] = int(preserve_fds or 0)
            # the hooks the init runs itself, in the container's namespaces
            state = json.dumps(self._hook_state(ct, "created"))
            for phase, key in (("createContainer", "create_hooks"),
                               ("startContainer", "start_hooks")):
                if hooks.get(phase):
                    ann["run.ctrun." + key] = [dict(h, state=state) for h in hooks[phase]]
            # what exec starts from; the seccomp profile stays out (its program is in
            # seccomp.bpf): it is most of a client's spec
            store.write_json(ct.path("spec.json"), {**spec, "linux": {
                k: v for k, v in spec["linux"].items() if k != "seccomp"}})
            if bpf:
                with open(ct.path("seccomp.bpf"), "wb") as f:
                    f.write(bpf[0])
                ct.rec["seccomp_flags"] = bpf[1]
            if hooks.get("prestart") or hooks.get("createRuntime"):
                ann["run.ctrun.runtime_hooks"] = True

            def runtime_hooks(pid):
                ct.rec["pid"] = pid
                self._hooks(ct, "prestart", "creating")
                self._hooks(ct, "createRuntime", "creating")

            launched = process.launch(spec, stdio=(0, 1, 2), tty=terminal, bpf=bpf,
                                      on_hooks=runtime_hooks)
            master = launched.master
            launched.chan.close()
            ct.rec.update(pid=launched.pid, pid_start=launched.pid_start)
            del ct.rec["creating"]
            if master is not None:
                size = proc.get("consoleSize")
                from . import console
                if size:
                    console.set_size(master, size.get("height", 0), size.get("width", 0))
                if console_socket:
                    console.send_master(console_socket, master)
            ct.save()
            if pid_file:
                _atomic_write(os.path.abspath(pid_file), str(launched.pid))
        except BaseException:
            if master is not None:
                os.close(master)
                master = None
            if launched is not None:
                _kill_wait(launched.pid, launched.pid_start)
            if created:
                try:
                    mgr.remove()
                except errors.CtrunError:
                    pass
            if d is not None:
                _rmtree(d)
            self.root.unlock(cid, lock, remove=True)
            raise
        self.root.unlock(cid, lock)
        if keep_master:
            return master
        if master is not None:
            os.close(master)
        return None

    def _seccomp(self, conf):
        """(program, load flags) of config.json's seccomp profile, or None.  Compiled once
        per profile text, compiler, libseccomp and kernel, then read from the root's cache:
        podman sends the same default profile with every container, and compiling it takes
        longer than the rest of a create."""
        prof = conf["linux"].get("seccomp")
        if not prof:
            return None
        import json
        from ..runtime.seccomp import OCI_COMPILER, compiler_key

        def compile_():
            from ..runtime import seccomp_oci
            program = seccomp_oci.compile_spec(prof)
            return program.flags.to_bytes(4, "little") + program.bpf if program else b""
        data = self.root.cached(f"seccomp {compiler_key(OCI_COMPILER)} "
                                f"{json.dumps(prof, sort_keys=True)}", compile_)
        return (data[4:], int.from_bytes(data[:4], "little")) if data else None

    def _check_runtime(self, spec):
        from ..runtime import rootfs
        rootfs.check_supported(spec)

    def _no_device_cgroup(self, spec):
        """No device cgroup to enforce the spec's rules (cgroup v2 without a BPF device
        filter): no mknod in the container, as ctrun's own containers get."""
        caps = spec["process"]["capabilities"]
        for k in caps:
            caps[k] = [c for c in caps[k] if c != "CAP_MKNOD"]
        self.warn("this host's cgroups cannot filter devices (cgroup v2 without a BPF device "
                  "program); CAP_MKNOD is dropped instead")

    def start(self, cid):
        lock = self.root.lock(cid)
        try:
            ct = self.root.load(cid)
            st = self._status(ct)
            if st != "created":
                raise Conflict({"stopped": "cannot start a container that has stopped",
                                "running": "cannot start an already running container",
                                "paused": "cannot start an already running container"}
                               .get(st, f"cannot start a container in the {st} state"))
            _release(ct)
        finally:
            self.root.unlock(cid, lock)
        self._hooks(ct, "poststart", "running", fatal=False)

    def run(self, cid, bundle=None, pid_file=None, console_socket=None, detach=False,
            preserve_fds=0):
        """create + start; attached, wait for the init and return its exit code."""
        from ..runtime import process, terminal
        if not detach:
            import prctl
            prctl.set_child_subreaper(True)
        master = self.create(cid, bundle, pid_file, console_socket, preserve_fds,
                             keep_master=not detach and not console_socket)
        try:
            self.start(cid)
        except BaseException:
            if master is not None:
                os.close(master)
            raise
        if detach:
            return 0
        ct = self.root.load(cid)
        if master is not None:
            status = terminal.relay(master, lambda: _poll(ct.pid))
            os.close(master)
        else:
            status = process._wait_forwarding(ct.pid)
        code = process.exit_code(status)
        self.delete(cid, force=True)
        return code

    # ------------------------------------------------------------------ queries
    def state(self, cid):
        return self._state_doc(self.root.load(cid))

    def list(self):
        out = []
        for cid in self.root.ids():
            try:
                out.append(self._state_doc(self.root.load(cid)))
            except errors.CtrunError:
                continue
        return out

    def ps(self, cid):
        ct = self.root.load(cid)
        return sorted(self._mgr(ct).pids())

    def events(self, cid):
        """One stats event, as runc's `events --stats` prints it."""
        ct = self.root.load(cid)
        if self._status(ct) == "stopped":
            raise Conflict("container is stopped")
        s = self._mgr(ct).stats()
        cpu, mem, pids = s.get("cpu") or {}, s.get("memory") or {}, s.get("pids") or {}
        data = {
            "cpu": {"usage": {"total": cpu.get("usage_ns", 0), "user": cpu.get("user_ns", 0),
                              "kernel": cpu.get("system_ns", 0)},
                    "throttling": {"throttledTime": cpu.get("throttled_ns", 0),
                                   "throttledPeriods": cpu.get("nr_throttled", 0)}},
            "memory": {"usage": {"usage": mem.get("usage", 0), "max": mem.get("max_usage", 0),
                                 "limit": mem.get("limit") or 0,
                                 "failcnt": mem.get("failcnt", 0)},
                       "swap": {"usage": mem.get("swap", 0)}},
            "pids": {"current": pids.get("current", 0), "limit": pids.get("limit") or 0},
        }
        return {"type": "stats", "id": cid, "data": data}

    def oom_kills(self, cid):
        ct = self.root.load(cid)
        try:
            return self._mgr(ct).oom_kills()
        except (OSError, errors.CtrunError):
            return 0

    # ------------------------------------------------------------------ signals, delete
    def kill(self, cid, sig="SIGTERM", all_=False):
        signum = parse_signal(sig)
        ct = self.root.load(cid)
        st = self._status(ct)
        if st in ("stopped", "creating"):
            raise Conflict("container not running")
        if all_:
            from . import vm
            mgr = self._mgr(ct)
        if all_ and vm.is_vm(ct):
            vm.kill_all(ct, mgr, signum)
        elif all_:
            for pid in mgr.pids():
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        else:
            from ..procs import signal_pid
            fd = signal_pid({"pid": ct.pid, "pid_start": ct.pid_start}, signum)
            if fd is None:
                raise Conflict("container not running")
            os.close(fd)
        if st == "paused" and signum == _signal.SIGKILL:
            self._mgr(ct).thaw()  # a frozen task dies only once thawed

    def delete(self, cid, force=False):
        store.check_id(cid)
        lock = self.root.lock(cid)
        try:
            try:
                ct = self.root.load(cid)
            except NotFound:
                d = self.root.dir(cid)
                if os.path.isdir(d):  # half-made by a create that crashed
                    if not force:
                        raise
                    self._discard_partial(d)
                    return
                if force:
                    return
                raise NotFound("container does not exist") from None
            st = self._status(ct)
            if st in ("running", "paused", "creating") and not force:
                raise Conflict(f"cannot delete container {cid} that is not stopped: {st}")
            if st != "stopped":
                from ..procs import signal_pid
                fd = signal_pid({"pid": ct.pid, "pid_start": ct.pid_start}, _signal.SIGKILL)
                if fd is not None:
                    os.close(fd)
                if st == "paused":
                    self._mgr(ct).thaw()
                _wait_gone(ct.pid, ct.pid_start)
            if ct.rec.get("mode") == "vm":   # vm.is_vm, without loading the VM code
                from . import vm
                vm.end(self._mgr(ct))
            self._remove_cgroup(ct)
            self._hooks(ct, "poststop", "stopped", fatal=False)
            _rmtree(ct.dir)
        finally:
            self.root.unlock(cid, lock, remove=True)

    def _remove_cgroup(self, ct):
        """Remove the container's cgroup by the directories recorded at create, without the
        cgroup package; through its manager where one stays busy (its error names the
        processes) or for a record without them."""
        dirs = ct.rec.get("cgroup_dirs")
        if dirs is not None:
            from .. import cgroupfs
            if cgroupfs.remove(dirs, time.monotonic() + cgroupfs.TIMEOUT) is None:
                if ct.cgroup[0].strip("/"):  # the parent's last level, as mgr.remove()
                    for d in dirs:
                        cgroupfs.rmdir_if_empty(os.path.dirname(d))
                return
        try:
            self._mgr(ct).remove()
        except errors.NotFound:
            pass

    def _discard_partial(self, d):
        from ..state import read_json
        rec = read_json(os.path.join(d, "state.json")) or {}
        if rec.get("cgroup"):
            from .. import cgroups
            try:
                cgroups.manager(rec["cgroup"][1], parent=rec["cgroup"][0], leaf=None).remove()
            except errors.CtrunError:
                pass
        _rmtree(d)

    # ------------------------------------------------------------------ pause, update
    def pause(self, cid):
        ct = self.root.load(cid)
        if self._status(ct) != "running":
            raise Conflict("container not running")
        self._mgr(ct).freeze()

    def resume(self, cid):
        ct = self.root.load(cid)
        if self._status(ct) != "paused":
            raise Conflict("container not paused")
        self._mgr(ct).thaw()

    def update(self, cid, resources):
        from ..cgroups.limits import Limits
        from . import bundle as bundlemod
        ct = self.root.load(cid)
        if self._status(ct) == "stopped":
            raise Conflict("container not running")
        fields, rules, unified = bundlemod.limits_of(resources, "resources")
        mgr = self._mgr(ct)
        from . import vm
        if vm.is_vm(ct):  # the guest's memory: its balloon, not QEMU's cgroup
            fields = vm.update(ct, fields)
        if fields:
            mgr.apply(Limits.from_dict(fields))
        if rules is not None:
            self.warn("device rules of a running container are kept as they were created")
        _write_unified(mgr, unified)

    # ------------------------------------------------------------------ exec
    def exec(self, cid, proc, detach=False, pid_file=None, console_socket=None):
        """Run `proc` (a runtime-spec process) in the container; detached, return 0 once it
        runs (the client reaps it), else its exit code."""
        from ..runtime import process, terminal
        from . import bundle as bundlemod
        ct = self.root.load(cid)
        st = self._status(ct)
        if st != "running":
            raise Conflict({"paused": "cannot exec in a paused container",
                            "created": "cannot exec in a container that has not been "
                                       "started; start it first"}
                           .get(st, "cannot exec in a stopped container"))
        bundlemod.check_process(proc, "process")
        tty = bool(proc.get("terminal"))
        if console_socket and not tty:
            raise InvalidInput("--console-socket was given but the process has no terminal; "
                               "add --tty or drop --console-socket")
        if tty and detach and not console_socket:
            raise InvalidInput("a detached exec with a terminal needs --console-socket")
        if console_socket:
            from . import console
            console.check(console_socket)
        from . import vm
        if vm.is_vm(ct):
            return vm.exec(ct, proc, detach, pid_file, console_socket)
        spec = ct.spec()
        spec["process"] = bundlemod.process_for(proc)
        from ..backends.container import exec_cgroups
        spec = exec_cgroups(spec, ct.pid)
        if not detach:
            import prctl
            prctl.set_child_subreaper(True)  # the command is ours to wait for
        pid, master = process.join_detached({"pid": ct.pid, "pid_start": ct.pid_start}, spec,
                                            tty=tty, bpf=ct.bpf())
        if pid_file:
            _atomic_write(os.path.abspath(pid_file), str(pid))
        if master is not None and console_socket:
            from . import console
            size = proc.get("consoleSize")
            if size:
                console.set_size(master, size.get("height", 0), size.get("width", 0))
            console.send_master(console_socket, master)
            os.close(master)
            master = None
        if detach:
            return 0
        if master is not None:
            status = terminal.relay(master, lambda: _poll(pid))
            os.close(master)
        else:
            status = process._wait_forwarding(pid)
        return process.exit_code(status)


# ---------------------------------------------------------------------- module helpers



def _poll(pid):
    p, status = os.waitpid(pid, os.WNOHANG)
    return status if p else None


def _release(ct):
    """Open the exec fifo (the init is blocked opening its other end), take the init's one
    byte, remove the fifo: from here the container counts as running."""
    fifo = ct.path("exec.fifo")
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    data = os.read(fd, 1)
                except BlockingIOError:
                    data = None
                if data:
                    break
            if not ct.alive():
                raise errors.ContainerFailed("the container's init exited before the start; "
                                             "see the container's output")
    finally:
        os.close(fd)
    os.unlink(fifo)


def _freezer_file(mgr):
    """The file whose content says whether the cgroup is frozen (read by store.Container
    without loading the cgroup package), or None on a host without a freezer."""
    for key, d in mgr.dirs().items():
        if "freezer" in key.split(","):
            return str(d / "freezer.state")
    if mgr.layout.kind == "v2":
        return str(next(iter(mgr.dirs().values())) / "cgroup.events")
    return None


def _with_spec_devices(rules, devices):
    """The allowlist plus the default devices and the spec's linux.devices, which the
    runtime creates and the container must be able to use (as runc allows them)."""
    from .bundle import DEFAULT_DEVICE_RULES
    if "a *:* rwm" in rules:
        return rules
    out = list(DEFAULT_DEVICE_RULES)
    for d in devices or []:
        if d.get("type") in ("c", "b", "u"):
            out.append(f"{'b' if d['type'] == 'b' else 'c'} {d['major']}:{d['minor']} rwm")
    return out + [r for r in rules if r not in out]


def _write_unified(mgr, unified):
    if not unified:
        return
    v2 = mgr.layout.v2
    if mgr.layout.kind != "v2" or not v2:
        raise InvalidInput("config.json linux.resources.unified needs a cgroup v2 host, and "
                           "this one has cgroup v1 controllers; use the v1 resource fields")
    d = os.path.join(str(v2), mgr.rel)
    for k, v in unified.items():
        try:
            with open(os.path.join(d, k), "w") as f:
                f.write(str(v))
        except OSError as e:
            raise InvalidInput(f"config.json linux.resources.unified {quote(k)}: cannot write "
                               f"{quote(v)}: {e.strerror}") from None


def _kill_wait(pid, start):
    from ..procs import signal_pid
    fd = signal_pid({"pid": pid, "pid_start": start}, _signal.SIGKILL)
    if fd is not None:
        os.close(fd)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        _wait_gone(pid, start)


def _wait_gone(pid, start, timeout=10.0):
    """Until pid is gone or a zombie (its reaper, the client, may not have reaped it)."""
    from ..procs import proc_start_time
    end = time.monotonic() + timeout
    while proc_start_time(pid) == start and time.monotonic() < end:
        time.sleep(0.005)
