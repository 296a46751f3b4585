"""The Python API: the same operations as the CLI.

    from ctrun.api import Ctrun
    ct = Ctrun()                      # or Ctrun(root="/tmp/store")
    ct.create("web1", image="busybox")
    ct.start("web1")
    ct.exec("web1", ["hostname"])     # -> exit code
    ct.stop("web1"); ct.destroy("web1")

Every method raises a ctrun.errors.CtrunError subclass with a one-line message.
"""

import os
import select
import shutil
import signal
import sys
import time

from . import config as cfgmod
from .errors import CommandNotFound, Conflict, CtrunError, InvalidInput, NotFound, quote
from .state import Store, read_json, stale_temp_files, status, write_json

DEFAULT_CGROUP_PARENT = "ctrun"


def _now():
    from .runtime.reap import now
    return now()


class Ctrun:
    def __init__(self, root=None, warn=None):
        self.store = Store(root)
        # where non-fatal notices go (skipped --ignore-unsupported limits); the CLI prints them
        self.warn = warn or (lambda message: None)

    # ---------------------------------------------------------------- helpers
    def _cdir(self, name):
        cfgmod.check_name(name)
        d = self.store.container_dir(name)
        if not (d / "config.json").exists():
            raise NotFound(f"container '{name}' not found; see: ctrun list --all")
        return d

    def _entry(self, name):
        """Any entry the store holds under `name`, even one this version would refuse (a
        name an older version let in, a create's debris without a config, a stray file),
        so destroy and gc can always remove it; otherwise as _cdir."""
        if isinstance(name, str) and name and not name.startswith(".") and not (
                set(name) & {"/", "\0"}):
            d = self.store.container_dir(name)
            if os.path.lexists(d):
                return d
        return self._cdir(name)

    def _config(self, cdir):
        return cfgmod.Config.from_dict(read_json(cdir / "config.json"))

    def _cgroup_name(self, name):
        from .cgroups import container_name
        return container_name(name, self.store.short_id)

    def cgroup_manager(self, name):
        """The cgroup manager of container `name` (its recorded cgroup, or the one a create
        would record now)."""
        conf = read_json(self.store.container_dir(name) / "config.json") or {}
        return _manager(name, conf or {"cgroup_name": self._cgroup_name(name),
                                       "cgroup_parent": os.environ.get(
                                           "CTRUN_CGROUP_PARENT", DEFAULT_CGROUP_PARENT)})

    # ---------------------------------------------------------------- create
    def create(self, name, image="busybox", cmd=(), hostname="", env=(), volumes=(),
               workdir="", user="", init=False, ulimits=(), cap_add=(), cap_drop=(),
               privileged=False, userns=False, limits=None, ignore_unsupported=False,
               net=None, ip=None, mac=None, publish=(), dns=(), vm=False, accel="auto",
               nameserver=(), searchdomain=(), onboot=False, userpasswd=None, ssh_key=(),
               ssh_user="root", ip_add=(), stop_signal=""):
        """Record a container and prepare its file system; no process yet.

        limits: CLI-style resource options ({"memory": "64M", "pids_limit": "64"}); limits
        this host cannot apply are refused unless ignore_unsupported, then skipped and
        named in the result's "warnings".  net: a network name, "none" or "host" (default
        $CTRUN_NETWORK or ctrun0); ip/mac/publish/dns as on the CLI.  vm: boot the image
        as a QEMU virtual machine; then limits' memory is guest RAM and cpus the vCPU
        count, and accel is auto, kvm or tcg.  VPS knobs (vzctl set's, see set_vps):
        nameserver (more dns), searchdomain, onboot, userpasswd ("USER:PASSWORD"), ssh_key
        (public key files, for ssh_user), ip_add (extra addresses, leased like ip).  stop_signal:
        what stop sends PID 1 instead of the image's (SIGRTMIN+3 when PID 1 is systemd)."""
        from .network import container as netc
        from .images import store as images
        cfgmod.check_name(name)
        cfgmod.check_name(image, "image")
        cfg = cfgmod.Config(
            name=name, image=image, cmd=list(cmd), hostname=cfgmod.check_hostname(hostname),
            env=cfgmod.parse_env(env), volumes=[cfgmod.parse_volume(v) for v in volumes],
            workdir=workdir, user=cfgmod.parse_user(user), init=bool(init),
            ulimits=dict(cfgmod.parse_ulimit(u) for u in ulimits),
            cap_add=cfgmod.parse_caps(cap_add), cap_drop=cfgmod.parse_caps(cap_drop),
            privileged=bool(privileged), userns=bool(userns))
        if stop_signal:
            cfgmod.parse_signal(stop_signal)
            cfg.stop_signal = str(stop_signal)
        netcfg = netc.parse_options(net or os.environ.get("CTRUN_NETWORK") or "ctrun0", ip, mac,
                                    publish, list(dns) + list(nameserver), searchdomain)
        from . import vps
        cfg.onboot = cfgmod.parse_onboot(onboot)
        secret = vps.userpasswd_of(userpasswd)
        keys = vps.keys_from(ssh_key)
        if ip_add and netcfg["network"] in netc.MODES:
            raise InvalidInput(f"--ip-add needs a bridged network, not --net {netcfg['network']}")
        if (secret or keys) and (vm or userns):
            raise InvalidInput("--userpasswd and --ssh-key on create need a container without "
                               "--vm or --userns; start it, then run: ctrun set NAME ...")
        vmopts = None
        if vm:
            from .vm import machine
            for opt, given in (("--volume", volumes), ("--userns", userns), ("--init", init),
                               ("--privileged", privileged), ("--cap-add", cap_add),
                               ("--cap-drop", cap_drop), ("--ulimit", ulimits)):
                if given:
                    raise InvalidInput(f"{opt} does not apply to a VM (--vm); drop it")
            limits = dict(limits or {})
            vmopts = machine.options(limits.pop("memory", None), limits.pop("cpus", None),
                                     accel)
            machine.check_host()
            cfg.mode = "vm"
        lim, skip, warnings = _check_limits(limits or {}, ignore_unsupported)
        cfg.limits, cfg.limits_skip = lim.to_dict(), skip
        if workdir and not workdir.startswith("/"):
            raise InvalidInput(f"working directory {workdir!r} must be an absolute path")
        if init and not os.path.exists("/usr/bin/tini-static"):
            from .errors import HostUnsupported
            raise HostUnsupported("--init needs tini-static; run: apt-get install tini")
        rootfs, icfg = images.get(self.store, image)
        self._check_command(rootfs, cfg, icfg)
        self.store.ensure()
        with self.store.lock(name):
            final = self.store.container_dir(name)
            if final.exists():
                raise Conflict(f"container '{name}' already exists; choose another name "
                               f"or destroy it first") if (final / "config.json").exists() \
                    else Conflict(f"container directory {final} is left from a crash; "
                                  "run: ctrun gc")
            tmp = self.store.containers / f".tmp-{name}-{os.urandom(4).hex()}"
            netc.check_ports_free(self.store, name, netcfg["publish"])
            leased = None
            try:
                tmp.mkdir(mode=0o700)
                for d in ("logs",) if vm else ("upper", "work", "rootfs", "logs"):
                    (tmp / d).mkdir(mode=0o755 if d != "logs" else 0o700)
                leased = cfg.net = netc.lease(self.store, name, netcfg)
                for extra in ip_add:  # one by one: a failure releases those taken
                    leased = cfg.net = netc.change_ips(self.store, name, cfg.net, [extra], (),
                                                       None)
                from .network.etc import write_etc_files
                write_etc_files(tmp, name, cfg.hostname or name, cfg.net)
                if vm:
                    cfg.vm = machine.create(self.store, tmp, image, vmopts)
                if cfg.userns:
                    cfg.userns_base = self._userns_setup(tmp)
                vps.apply_inside(self.store, tmp, name, cfg.to_dict(), None, secret, keys,
                                 ssh_user)
                data = cfg.to_dict()
                data["cgroup_parent"] = os.environ.get("CTRUN_CGROUP_PARENT",
                                                       DEFAULT_CGROUP_PARENT)
                data["cgroup_name"] = self._cgroup_name(name)
                data["created_at"] = _now()
                write_json(tmp / "config.json", data)
                write_json(tmp / "state.json", {})
                os.rename(tmp, final)
                leased = None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                if leased:  # the create failed after taking an address: give it back
                    netc.release(self.store, name, leased)
                claim = getattr(self, "_claim", None)
                if claim is not None:
                    claim.unlink(missing_ok=True)
                    self._claim = None
        if cfg.onboot:
            from . import onboot as onbootmod
            onbootmod.sync(self.store)
        for w in warnings:
            self.warn(w)
        out = self._describe(name, final, full=False)
        out["warnings"] = warnings
        return out

    def _userns_setup(self, cdir):
        """A private id range, and upper/work dirs (and /etc files) owned by its root; the
        image's layers are shown through idmapped mounts at start (namespaces.userns)."""
        from .namespaces import userns
        # the store stays private: the mapped root never walks to it (the parent, as host
        # root, builds the root file system and clones the bind sources for it)
        with self.store.lock(".userns-pool"):
            used = [(read_json(self.store.container_dir(n) / "config.json") or {}).get(
                "userns_base") for n in self.store.container_names()]
            used += [int(p.read_text()) for p in self.store.locks.glob("userns-*.claim")]
            base = userns.allocate(b for b in used if b is not None)
            # held until the container directory (and its config) exists: see create()
            (self.store.locks / f"userns-{base}.claim").write_text(str(base))
        for d in ("upper", "work", "rootfs", "etc", "etc/hosts", "etc/hostname",
                  "etc/resolv.conf"):
            os.chown(cdir / d, base, base)
        self._claim = self.store.locks / f"userns-{base}.claim"
        return base

    def _check_command(self, rootfs, cfg, icfg):
        """Refuse a command the image does not have, before anything is written."""
        from .runtime import paths
        argv = cfg.cmd or icfg.get("cmd") or ["/bin/sh"]
        if any(os.path.commonpath([argv[0], v["target"]]) == v["target"]
               for v in cfg.volumes if argv[0].startswith("/")):
            return  # it comes from a volume: the start-time lookup checks it
        env = dict(e.split("=", 1) for e in icfg.get("env", []) + cfg.env)
        try:
            paths.lookup_command(rootfs, argv[0], env.get("PATH", "/usr/bin:/bin"))
        except CommandNotFound as e:
            raise CommandNotFound(f"{e} (image '{cfg.image}')") from None

    # ---------------------------------------------------------------- start
    def _prepare_start(self, name, cdir, cfg, tty=False):
        """Cgroup, spec and seccomp program for a new start; returns (spec, mgr, bpf_path)."""
        from . import spec as specmod
        from .images import store as images
        from .runtime import lxcfs, seccomp
        rootfs, icfg = images.get(self.store, cfg.image, build_missing=False)
        _systemd_hierarchy(cfg, icfg, rootfs)
        mgr = _manager(name, read_json(cdir / "config.json"))
        device_rules = mgr.supports_device_rules()
        mgr.create(device_rules=DEVICE_ALLOW if device_rules and not cfg.privileged else None)
        try:
            if cfg.limits:
                from .cgroups.limits import Limits
                lim = Limits.from_dict(cfg.limits)
                mgr.apply(lim, skip=cfg.limits_skip)
                lxcfs.spread_cpus(mgr, lim, name, cfg.limits_skip)
            spec = specmod.build(cfg, icfg, cdir, rootfs, mgr.procs_files(),
                                 privileged_devices=True, lxcfs=lxcfs.binds(self.warn))
            if not device_rules and not cfg.privileged:
                # no devices cgroup (cgroup v2 without a BPF device filter): no mknod at all
                for k in ("bounding", "effective", "permitted"):
                    spec["process"]["capabilities"][k] = [
                        c for c in spec["process"]["capabilities"][k] if c != "CAP_MKNOD"]
            spec["process"]["terminal"] = tty
            spec["annotations"]["run.ctrun.cgroup_layout"] = _layout_for_container(mgr.layout)
            if cfg.userns:
                leaf = {os.path.basename(str(mnt)): str(mnt / mgr.rel / "ct")
                        for mnt in mgr.mounts().values()}
                spec["annotations"]["run.ctrun.cgroup_dirs"] = leaf
                _delegate(leaf.values(), cfg.userns_base)
            bpf_path = None
            if spec["annotations"]["run.ctrun.seccomp"]:
                caps = spec["process"]["capabilities"]["bounding"]
                bpf_path = str(seccomp.bpf_path_for(caps, self.store.root / "cache"))
            write_json(cdir / "spec.json", spec, durable=False)
        except BaseException:
            mgr.remove()
            raise
        return spec, mgr, bpf_path

    def start(self, name):
        """Start a created or stopped container in the background (supervised by the monitor);
        a VM's start returns once its guest agent answers."""
        cdir = self._cdir(name)
        with self.store.lock(name):
            st, state, _, _ = status(cdir)
            if st in ("running", "stopping"):
                raise Conflict(f"container '{name}' is already {st}"
                               + ("; wait for it to stop" if st == "stopping" else ""))
            cfg = self._config(cdir)
            if cfg.mode == "vm":
                sid = self._start_vm(name, cdir, cfg, state)
            else:
                self._start_container(name, cdir, cfg, state)
        if cfg.mode == "vm":  # the guest boots without the lock held
            self._vm_ready(name, cdir, sid)
        return self.inspect(name)

    def _start_container(self, name, cdir, cfg, state):
        spec, mgr, bpf = self._prepare_start(name, cdir, cfg)
        console = {"console": True, "console_uid": cfg.userns_base if cfg.userns else 0} \
            if spec["annotations"].get("run.ctrun.init") else {}
        self._hand_to_monitor(name, cdir, state, mgr, cfg.net, bpf, console)

    def _hand_to_monitor(self, name, cdir, state, mgr, net, bpf=None, extra=None):
        """Ask the store's monitor to launch and supervise this start; returns its id."""
        from . import monitor
        sid = os.urandom(6).hex()
        started = _now()
        write_json(cdir / "state.json", {"start_id": sid, "started_at": started})
        try:
            reply = monitor.request(self.store.root, {
                "op": "start", "name": name, "cdir": str(cdir), "start_id": sid,
                "root": str(self.store.root), "started_at": started, "bpf": bpf,
                "cgroup_parent": "/".join(mgr.parent_parts), "cgroup_name": mgr.name,
                **(extra or {})})
        except CtrunError:  # no monitor could be reached: nothing was started
            self._undo_start(name, cdir, state, mgr, net)
            raise
        # (interrupted while the monitor starts it: the monitor owns it now, and its
        # live/exit records under this start id tell the next verb what happened)
        if not reply.get("ok"):
            self._undo_start(name, cdir, state, mgr, net)
            _raise(reply)
        return sid

    def _start_vm(self, name, cdir, cfg, state):
        """Start QEMU under the monitor (called with the container's lock held); returns
        the start id."""
        from .cgroups.limits import Limits
        from .images import store as images
        from .vm import machine
        _, icfg = images.get(self.store, cfg.image, build_missing=False)
        conf = read_json(cdir / "config.json")
        accel, note = machine.prepare_start(self.store, cdir, conf, icfg)
        mgr = _manager(name, conf)
        mgr.create(device_rules=None)
        try:
            lim = dict(cfg.limits or {})
            if lim.get("memory") in (None, -1):
                lim["memory"] = machine.memory_limit(cfg.vm, accel)
            mgr.apply(Limits.from_dict(lim), skip=cfg.limits_skip)
        except BaseException:
            mgr.discard()
            raise
        sid = self._hand_to_monitor(name, cdir, state, mgr, cfg.net)
        if note:
            self.warn(f"VM '{name}': {note}")
        return sid

    def _vm_ready(self, name, cdir, sid):
        """Wait until the guest agent answers; a VM that never does is killed, and the
        error carries the console's last lines."""
        from .vm import machine
        try:
            machine.wait_ready(cdir, lambda: status(cdir)[0] == "running")
        except CtrunError as e:
            live = status(cdir)[2]
            if live:
                self._kill_and_wait(name, cdir, live)
            self._await_exit_record(cdir, sid)
            from .errors import ContainerFailed
            raise ContainerFailed(f"VM '{name}' did not become ready: {e}") from None

    def _undo_start(self, name, cdir, state, mgr, net):
        """A start that failed: the state it had before, no process, cgroup or rules."""
        from .network import container as netc
        write_json(cdir / "state.json", state)
        mgr.discard()
        netc.down(self.store, name, net)

    def run(self, image="busybox", cmd=(), name=None, rm=False, detach=False, tty=False,
            interactive=False, plumber=None, **create_opts):
        """create + start + wait; returns the workload's exit code (0 with detach).

        plumber: a network.container.Plumber forked early by the caller, so pyroute2 loads
        while the container is created (the CLI forks it before it imports this module)."""
        name = name or "ct-" + os.urandom(4).hex()
        if create_opts.get("vm") and not detach:
            raise InvalidInput("run --vm needs -d: a VM boots its image's init; then use "
                               "ctrun exec NAME -- CMD")
        try:
            self.create(name, image=image, cmd=cmd, **create_opts)
        except BaseException:
            if plumber:
                plumber.cancel()
            raise
        try:
            if detach:
                if plumber:
                    plumber.cancel()
                self.start(name)
                return 0
            return self._run_attached(name, tty, interactive, plumber)
        finally:
            if rm and not detach:
                try:
                    self.destroy(name, force=True)
                except CtrunError:
                    pass

    def _run_attached(self, name, tty, interactive, plumber=None):
        """The CLI itself supervises: stdio inherited (or a pty), exit code returned."""
        import prctl
        from .runtime import process, reap, terminal
        cdir = self._cdir(name)
        with self.store.lock(name):
            cfg = self._config(cdir)
            from .network import container as netc
            if plumber is None:
                plumber = netc.plumber_for(cfg.net)  # loads pyroute2 meanwhile, elsewhere
            elif not netc.bridged(cfg.net):
                plumber.cancel()
                plumber = None
            try:
                spec, mgr, bpf_path = self._prepare_start(name, cdir, cfg, tty=tty)
            except BaseException:
                if plumber:
                    plumber.cancel()
                raise
            sid = os.urandom(6).hex()
            started = _now()
            write_json(cdir / "state.json", {"start_id": sid, "started_at": started})
            bpf = open(bpf_path, "rb").read() if bpf_path else None
            stdin = 0
            if not interactive and not tty:
                stdin = os.open("/dev/null", os.O_RDONLY)
            try:
                # a subreaper only while the init is forked: its intermediate exits and the
                # init becomes our child.  Kept on, a Python program calling run() would
                # inherit every later orphan (each monitor it spawns) and never reap them.
                was_reaper = prctl.get_child_subreaper()
                prctl.set_child_subreaper(1)
                try:
                    launched = process.launch(spec, stdio=(stdin, 1, 2), tty=tty, bpf=bpf)
                finally:
                    if not was_reaper:
                        prctl.set_child_subreaper(0)
                if plumber:
                    plumber.up(self.store, name, cfg.net, launched.pid)
                    plumber = None
                write_json(cdir / "live.json", {"start_id": sid, "pid": launched.pid,
                                                "pid_start": launched.pid_start,
                                                "started_at": started, "monitor": "attached"},
                           durable=False)
                launched.start()
            except BaseException:
                if plumber:
                    plumber.cancel()
                self._undo_start(name, cdir, {}, mgr, cfg.net)
                raise
        pid = launched.pid
        if launched.master is not None:
            # an init's /dev/console is this terminal (rootfs.console_on_terminal)
            peer = terminal.open_peer(launched.master) \
                if spec["annotations"].get("run.ctrun.init") else None
            try:
                status_ = terminal.relay(launched.master, lambda: process._poll(pid),
                                         forward_stdin=interactive or tty)
            finally:
                if peer is not None:
                    os.close(peer)
            os.close(launched.master)
        else:
            # systemd ignores SIGTERM and takes SIGINT for a reboot: a TERM or INT to the CLI
            # (timeout, Ctrl-C) means stop, and becomes its stop signal
            stop = cfgmod.parse_signal(spec["annotations"]["run.ctrun.stop_signal"])
            status_ = process._wait_forwarding(pid, {signal.SIGTERM: stop, signal.SIGINT: stop}
                                               if spec["annotations"].get("run.ctrun.systemd")
                                               else None)
        code, _ = reap.finalize(cdir, name, sid, status_, "/".join(mgr.parent_parts),
                                mgr.name)
        return code

    # ---------------------------------------------------------------- signals
    def _signal(self, live, sig):
        """Signal the init by pidfd, checked against its start time: never a recycled pid."""
        from .state import proc_start_time
        try:
            fd = os.pidfd_open(live["pid"])
        except ProcessLookupError:
            return None
        if proc_start_time(live["pid"]) != live["pid_start"]:
            os.close(fd)
            return None
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        return fd

    def _kill_and_wait(self, name, cdir, live, timeout=10):
        """SIGKILL the init (or QEMU) and wait up to timeout for it to die."""
        fd = self._signal(live, signal.SIGKILL)
        self._thaw_if_frozen(name, cdir)  # a frozen task dies only once thawed
        if fd is not None:
            select.select([fd], [], [], timeout)
            os.close(fd)

    def _thaw_if_frozen(self, name, cdir):
        try:
            mgr = _manager(name, read_json(cdir / "config.json"))
            if mgr.frozen():
                mgr.thaw()
        except (CtrunError, OSError):
            pass

    def kill(self, name, sig="KILL"):
        signum = cfgmod.parse_signal(sig)
        cdir = self._cdir(name)
        with self.store.lock(name):
            st, _, live, _ = status(cdir)
            if st != "running":
                raise Conflict(f"container '{name}' is not running; start it first")
            if signum != signal.SIGKILL and self._is_vm(cdir):
                from .vm import machine  # to the guest's init; SIGKILL ends QEMU itself
                return machine.signal_guest(cdir, signum)
            fd = self._signal(live, signum)
            if fd is not None:
                os.close(fd)

    def stop(self, name, timeout=10.0):
        """The image's stop signal, then SIGKILL after `timeout` seconds."""
        cdir = self._cdir(name)
        with self.store.lock(name):
            st, state, live, _ = status(cdir)
            if st != "running":
                raise Conflict(f"container '{name}' is not running")
            write_json(cdir / "state.json", {**state, "stop_requested": state["start_id"]})
            self._thaw_if_frozen(name, cdir)
            if self._is_vm(cdir):
                self._stop_vm(name, cdir, live, timeout)
                self._await_exit_record(cdir, state["start_id"])
                return self.inspect(name)
            from .runtime import sysvinit
            ann = (read_json(cdir / "spec.json") or {}).get("annotations", {})
            sig = cfgmod.parse_signal(ann.get("run.ctrun.stop_signal", "SIGTERM"))
            # sysvinit halts on a runlevel request, not a signal: the signal only when the
            # request cannot be written
            fd = self._signal(live, 0 if ann.get("run.ctrun.halt") == "initctl" and
                              sysvinit.request_halt(live["pid"], live["pid_start"]) else sig)
            if fd is not None:
                try:
                    if not select.select([fd], [], [], max(0.0, float(timeout)))[0]:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                        select.select([fd], [], [], 10)
                except ProcessLookupError:
                    pass
                finally:
                    os.close(fd)
            self._await_exit_record(cdir, state["start_id"])
        return self.inspect(name)

    def _is_vm(self, cdir):
        return (read_json(cdir / "config.json") or {}).get("mode") == "vm"

    def _stop_vm(self, name, cdir, live, timeout):
        from .images import store as images
        from .vm import machine
        conf = read_json(cdir / "config.json")
        try:
            icfg = images.get(self.store, conf["image"], build_missing=False)[1]
        except CtrunError:
            icfg = {}
        sig = cfgmod.parse_signal(conf.get("stop_signal") or icfg.get("stop_signal")
                                  or "SIGTERM")
        fd = self._signal(live, 0)
        if fd is not None:
            try:
                machine.stop(cdir, fd, sig, timeout)
            finally:
                os.close(fd)

    def _await_exit_record(self, cdir, sid, timeout=10.0):
        """Wait until the supervisor has written exit.json (cgroup read and removed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ex = read_json(cdir / "exit.json")
            if ex and ex.get("start_id") == sid:
                return ex
            time.sleep(0.005)
        return None

    def restart(self, name, timeout=10.0):
        cdir = self._cdir(name)
        if status(cdir)[0] == "running":
            self.stop(name, timeout)
        return self.start(name)

    # ---------------------------------------------------------------- limits
    def _running_mgr(self, name, cdir, what):
        if status(cdir)[0] != "running":
            raise Conflict(f"container '{name}' is not running; {what}")
        return _manager(name, read_json(cdir / "config.json"))

    def set(self, name, limits, save=True, ignore_unsupported=False):
        """Change limits (vzctl set): live on a running container, saved unless save=False.
        Returns warnings for limits skipped with ignore_unsupported."""
        from .cgroups.limits import Limits
        if not limits:
            raise InvalidInput("set needs at least one limit, e.g. ctrun set NAME --memory 256M")
        cdir = self._cdir(name)
        with self.store.lock(name):
            new, skip, warnings = _check_limits(limits, ignore_unsupported)
            running = status(cdir)[0] == "running"
            if not running and not save:
                raise Conflict(f"container '{name}' is not running and --no-save keeps nothing;"
                               " drop --no-save to change its saved limits")
            conf = read_json(cdir / "config.json")
            if conf.get("mode") == "vm" and new.memory is not None:
                from .vm import machine  # guest RAM: the balloon, not the QEMU cgroup
                if not running:
                    raise Conflict(f"VM '{name}' is not running; its boot memory is fixed: "
                                   "recreate it with another --memory")
                machine.balloon(cdir, conf["vm"], new.memory)
                new.memory = None
            merged = Limits.from_dict(conf.get("limits") or {}).merged(new)
            if running:
                mgr = _manager(name, conf)
                mgr.apply(new, skip=skip)
                if new.cpus is not None:  # the cpuset that makes nproc say --cpus
                    from .runtime import lxcfs
                    lxcfs.spread_cpus(mgr, merged, name, skip)
            if save:
                conf["limits"] = merged.to_dict()
                conf["limits_skip"] = sorted(set(conf.get("limits_skip", [])) - set(
                    k for k, v in new.to_dict().items() if v is not None) | set(skip))
                write_json(cdir / "config.json", conf)
        for w in warnings:
            self.warn(w)
        return warnings

    def freeze(self, name):
        cdir = self._cdir(name)
        with self.store.lock(name):
            self._running_mgr(name, cdir, "only a running container can be frozen").freeze()

    def thaw(self, name):
        cdir = self._cdir(name)
        with self.store.lock(name):
            self._running_mgr(name, cdir, "only a running container can be thawed").thaw()

    def stats(self, names=(), strict=True, only=None):
        """{name: stats} of running containers (all of them when names is empty).

        strict: a named container that is not running is an error; otherwise it (and one
        that stops while being read) is left out.  only: the stat sections to read."""
        out = {}
        for n in names or self.store.container_names():
            cdir = self._cdir(n) if strict and names else self.store.container_dir(n)
            if status(cdir)[0] != "running":
                if names and strict:
                    raise Conflict(f"container '{n}' is not running; stats need a running "
                                   "container")
                continue
            conf = read_json(cdir / "config.json")
            mgr = _manager(n, conf)
            try:
                out[n] = mgr.stats(only)
                if conf.get("mode") == "vm" and (only is None or "guest" in only):
                    from .vm import machine  # the guest's view next to QEMU's host cost
                    out[n]["guest"] = machine.stats(cdir)
            except NotFound:
                if strict and names:
                    raise
            except CtrunError:
                if strict and names:
                    raise
                out.pop(n, None)
        return out

    # ---------------------------------------------------------------- networks
    def network_create(self, name, subnet, gateway=None, nat=True, **fences):
        """fences: allow_from, host_access (see networks.create)."""
        from .network import networks
        self.store.ensure()
        return networks.create(self.store, name, subnet, gateway=gateway, nat=nat, **fences)

    def network_list(self):
        from .network import ipam, networks
        out = []
        for n in networks.list_networks(self.store):
            users = sorted({c.split("/")[0] for c in ipam.leases(self.store, n["name"]).values()})
            out.append({**n, "containers": ",".join(users) or "-"})
        return out

    def network_inspect(self, name):
        from .network import ipam, networks
        n = networks.get(self.store, name, create_default=False)
        return {**n, "leases": ipam.leases(self.store, name)}

    def network_rm(self, name):
        """Refused while containers hold addresses; removes this store's bridge and rules, and
        restores ip_forward when the host's last ctrun network goes."""
        from .network import networks
        n = networks.get(self.store, name, create_default=False)
        networks.remove(self.store, name)
        networks.remove_bridge(self.store, n)
        from .network import nft
        try:
            nft.remove_network(n, last=not networks.list_networks(self.store),
                               owner=self.store.short_id)
        except CtrunError:
            if n.get("nat", True):
                raise

    def set_ips(self, name, add=(), delete=(), save=True):
        """Add or remove extra addresses on eth0 (vzctl set --ipadd/--ipdel)."""
        from .network import container as netc
        cdir = self._cdir(name)
        with self.store.lock(name):
            conf = read_json(cdir / "config.json")
            net = conf.get("net") or {}
            if not net.get("ip"):
                raise InvalidInput(f"container '{name}' has no bridged network; --ip-add needs one")
            st, _, live, _ = status(cdir)
            net = netc.change_ips(self.store, name, net, add, delete,
                                  live["pid"] if st == "running" else None)
            if save:
                conf["net"] = net
                write_json(cdir / "config.json", conf)

    # ---------------------------------------------------------------- VPS knobs
    def set_vps(self, name, hostname=None, nameserver=None, searchdomain=None, onboot=None,
                userpasswd=None, ssh_key=(), ssh_user="root", save=True):
        """vzctl set's knobs, live on a running container and saved unless save=False.

        hostname: sethostname in its UTS namespace, /etc/hostname and /etc/hosts;
        nameserver/searchdomain (lists, replacing the old ones): its /etc/resolv.conf;
        onboot: started by `ctrun start --onboot` at host boot (see ctrun.onboot);
        userpasswd: "USER:PASSWORD", whose hash goes into its /etc/shadow; ssh_key: public
        key files appended to ssh_user's ~/.ssh/authorized_keys.  The last two change the
        container's files (running or not, not --userns while stopped) and are never saved
        in its config."""
        from . import vps
        from .network import container as netc
        hostname = cfgmod.check_hostname(hostname) if hostname is not None else None
        if hostname == "":
            raise InvalidInput("--hostname needs a name; give one such as web1")
        nameserver = netc.check_nameservers(nameserver) if nameserver is not None else None
        searchdomain = (cfgmod.parse_searchdomains(searchdomain) if searchdomain is not None
                        else None)
        onboot = None if onboot is None else cfgmod.parse_onboot(onboot)
        secret = vps.userpasswd_of(userpasswd)
        keys = vps.keys_from(ssh_key)
        cdir = self._cdir(name)
        with self.store.lock(name):
            conf = read_json(cdir / "config.json")
            st, _, live, _ = status(cdir)
            if st == "stopping":  # its overlay may still be mounted: not a second one
                raise Conflict(f"container '{name}' is stopping; wait for it to stop")
            live = live if st == "running" else None
            if conf.get("mode") == "vm" and (hostname or nameserver is not None
                                             or searchdomain is not None or secret or keys):
                raise InvalidInput(f"'{name}' is a VM (--vm): only --onboot and limits can be "
                                   "set on it; change the guest from inside (ctrun exec)")
            if not live and not save and (hostname or nameserver is not None
                                          or searchdomain is not None or onboot is not None):
                raise Conflict(f"container '{name}' is not running and --no-save keeps nothing;"
                               " drop --no-save")
            vps.apply_inside(self.store, cdir, name, conf, live, secret, keys, ssh_user)
            new = dict(conf, net=dict(conf.get("net") or {}))
            if hostname is not None:
                new["hostname"] = hostname
            if nameserver is not None:
                new["net"]["dns"] = nameserver
            if searchdomain is not None:
                new["net"]["search"] = searchdomain
            if onboot is not None:
                new["onboot"] = onboot
            if save and new != conf:
                write_json(cdir / "config.json", new)
            if hostname is not None or nameserver is not None or searchdomain is not None:
                if live and hostname is not None:
                    vps.sethostname(live, hostname)
                # the /etc files are the container's own, bind-mounted: --no-save changes
                # them too (they are written anew from the config at create only)
                netc.rewrite_etc(self.store, name, new)
            if onboot is not None and save:
                from . import onboot as onbootmod
                onbootmod.sync(self.store)

    def start_onboot(self):
        """Start every stopped container of the store marked onboot: [(name, error or None)],
        one failure never stopping the rest (the boot hook, see ctrun.onboot)."""
        from . import onboot
        out = []
        for n in onboot.marked(self.store):
            if status(self.store.container_dir(n))[0] in ("running", "stopping"):
                continue
            try:
                self.start(n)
                out.append((n, None))
            except CtrunError as e:
                out.append((n, str(e)))
        return out

    # ---------------------------------------------------------------- exec
    def exec(self, name, argv, tty=False, interactive=False, env=(), workdir=None, user=None):
        from .runtime import process
        if not argv:
            raise InvalidInput("exec needs a command: ctrun exec NAME -- CMD [ARGS...]")
        cfgmod.parse_env(env)
        cfgmod.parse_user(user)
        cdir = self._cdir(name)
        with self.store.lock(name):
            st, _, live, _ = status(cdir)
            if st != "running":
                raise Conflict(f"container '{name}' is not running; start it first: "
                               f"ctrun start {name}")
            conf = read_json(cdir / "config.json")
            spec = read_json(cdir / "spec.json")
        if conf.get("mode") == "vm":
            from .images import store as images
            from .vm import machine
            icfg = images.get(self.store, conf["image"], build_missing=False)[1]
            return machine.exec(cdir, conf, icfg, argv, env=env, cwd=workdir, user=user,
                                tty=tty, stdin=interactive or tty)
        bpf = None
        if spec["annotations"].get("run.ctrun.seccomp"):
            from .runtime import seccomp
            caps = spec["process"]["capabilities"]["bounding"]
            bpf = seccomp.bpf_for(caps, self.store.root / "cache")
        return process.join(live, _exec_cgroups(spec, live["pid"]), argv, env=env, cwd=workdir,
                            user=user, tty=tty, stdin=interactive or tty, bpf=bpf)

    def exec_output(self, name, argv, timeout=None, stdin_path=None, **kw):
        """exec with stdout and stderr captured: (exit code, combined output as text).

        stdin_path: a file given to the command as its stdin.  timeout: seconds after which
        the command is killed and CtrunError raised (the lab bounds every command)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.dup2(w, 1)
                os.dup2(w, 2)
                if stdin_path:
                    os.dup2(os.open(stdin_path, os.O_RDONLY), 0)
                    kw["interactive"] = True
                os._exit(self.exec(name, list(argv), **kw))
            except BaseException as e:  # noqa: BLE001 - the parent reads the message
                os.write(2, f"{e}\n".encode())
                os._exit(125)
        os.close(w)
        chunks = []
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([r], [], [], left)[0]:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        kind = "vm" if self._is_vm(self._cdir(name)) else "container"
                        raise CtrunError(f"{argv[0]} in {kind} {name} did not finish within "
                                         f"{timeout:.0f} s")
                data = os.read(r, 65536)
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(r)
        _, st = os.waitpid(pid, 0)
        out = b"".join(chunks).decode(errors="replace")  # newlines as a text-mode read gives
        return os.waitstatus_to_exitcode(st), out.replace("\r\n", "\n").replace("\r", "\n")

    def enter(self, name):
        """A login shell as root, as `vzctl enter` gives: root's shell from the container's
        /etc/passwd (bash as a login shell, in root's home with its profile) when present,
        else /bin/sh."""
        cdir = self._cdir(name)
        tty = sys.stdin.isatty()
        if self._is_vm(cdir):
            return self.exec(name, ["/bin/sh", "-l"], tty=tty, interactive=True)
        st, _, live, _ = status(cdir)
        if st != "running":
            raise Conflict(f"container {quote(name)} is not running; start it first: "
                           f"ctrun start {quote(name)}")
        home, shell = _root_login(f"/proc/{live['pid']}/root")
        env = [f"HOME={home}", "USER=root", "LOGNAME=root", f"SHELL={shell}"]
        try:
            return self.exec(name, [shell, "-l"], tty=tty, interactive=True, env=env,
                             workdir=home)
        except CommandNotFound:
            return self.exec(name, ["/bin/sh"], tty=tty, interactive=True)

    # ---------------------------------------------------------------- queries
    def inspect(self, name):
        cdir = self._cdir(name)
        return self._describe(name, cdir)

    def _describe(self, name, cdir, full=True):
        conf = read_json(cdir / "config.json") or {}
        st, state, live, ex = status(cdir)
        out = {
            "name": name, "image": conf.get("image"), "mode": conf.get("mode", "container"),
            "state": st, "pid": live["pid"] if live else None,
            "created_at": conf.get("created_at"),
            "started_at": state.get("started_at"),
            "finished_at": ex.get("finished_at") if ex else None,
            "exit_code": ex.get("exit_code") if ex else None,
            "exit_reason": ex.get("exit_reason") if ex else None,
        }
        vm = None
        if out["mode"] == "vm":
            from .vm import machine
            vm = machine.describe(cdir, conf, st == "running")
            out["accel"] = vm.pop("accel")
        else:
            out["accel"] = None
        if full:
            try:
                m = _manager(name, conf)
                paths = m.paths()
            except CtrunError:
                m, paths = None, {}
            if st == "running" and m is not None:
                try:
                    out["limits"] = m.read_limits()
                    if m.frozen():
                        out["state"] = "frozen"
                except (CtrunError, OSError):
                    out["limits"] = None
            else:
                out["limits"] = None
            net = conf.get("net") or {}
            out["network"] = {"name": net.get("network"), "ip": net.get("ip"),
                              "mac": net.get("mac"), "gateway": net.get("gateway"),
                              "veth": net.get("veth"), "publish": net.get("publish", []),
                              "dns": net.get("dns", [])} if net else None
            out.update({"config": conf, "cgroup": paths, "dir": str(cdir),
                        "log_path": str(cdir / "logs" / "console.log"),
                        "rootfs": str(cdir / "rootfs"), "upper": str(cdir / "upper")})
            if vm is not None:
                out.update(vm, qemu_pid=out["pid"], rootfs=None, upper=None)
        return out

    def list(self, all=False):
        rows = []
        for n in self.store.container_names():
            cdir = self.store.container_dir(n)
            if not (cdir / "config.json").exists():
                continue
            d = self._describe(n, cdir, full=False)
            if all or d["state"] == "running":
                rows.append(d)
        return rows

    def logs(self, name, follow=False, out=None, err=None):
        """Write the container's log records to out/err (binary streams)."""
        from .runtime import logfile
        out = out or sys.stdout.buffer
        err = err or sys.stderr.buffer
        cdir = self._cdir(name)
        path = cdir / "logs" / "console.log"

        def emit(line):
            _, stream, full, text = logfile.parse(line)
            (err if stream == "stderr" else out).write(text + (b"\n" if full else b""))
        for p in logfile.files(path):
            with open(p, "rb") as f:
                for line in f:
                    emit(line.rstrip(b"\n"))
        out.flush()
        if not follow:
            return
        pos = path.stat().st_size if path.exists() else 0
        ino = path.stat().st_ino if path.exists() else None
        while True:
            running = status(cdir)[0] == "running"
            if path.exists():
                st = path.stat()
                if st.st_ino != ino:  # rotated
                    ino, pos = st.st_ino, 0
                if st.st_size > pos:
                    with open(path, "rb") as f:
                        f.seek(pos)
                        data = f.read()
                    complete = data[:data.rfind(b"\n") + 1]
                    pos += len(complete)
                    for line in complete.splitlines():
                        emit(line)
                    out.flush()
                    err.flush()
            if not running:
                return
            time.sleep(0.1)

    # ---------------------------------------------------------------- destroy, gc
    def destroy(self, name, force=False):
        cdir = self._entry(name)
        with self.store.lock(name):
            if cdir.is_symlink() or not cdir.is_dir():  # a stray file: nothing ran from it
                cdir.unlink(missing_ok=True)
                return
            st, state, live, _ = status(cdir)
            if st == "stopping":  # let the monitor finish recording the exit first
                self._await_exit_record(cdir, state["start_id"], timeout=5)
            if st == "running":
                if not force:
                    raise Conflict(f"container {quote(name)} is running; stop it first or "
                                   "use --force")
                write_json(cdir / "state.json", {**state, "stop_requested": state["start_id"]})
                self._kill_and_wait(name, cdir, live)
                self._await_exit_record(cdir, state["start_id"], timeout=5)
            conf = read_json(cdir / "config.json") or {}
            if conf:  # debris without a config never had a cgroup (start makes it)
                _discard_cgroup(name, conf)
            net = conf.get("net") or {}
            if net.get("ip"):
                from .network import container as netc
                netc.down(self.store, name, net)
                netc.release(self.store, name, net)
                netc.write_hosts(self.store, net["network"])
            trash = self.store.containers / f".destroy-{name}-{os.urandom(4).hex()}"
            os.rename(cdir, trash)
            shutil.rmtree(trash, ignore_errors=True)
            if conf.get("onboot"):
                from . import onboot
                onboot.sync(self.store)
            try:
                os.unlink(self.store.locks / f"{name}.lock")
            except FileNotFoundError:
                pass

    def _gc_bad_entry(self, n, cdir, conf):
        """An entry no verb but destroy can use: a directory without a config (a crashed
        create's debris) or a name this version refuses.  Removed unless it runs."""
        if conf is not None and status(cdir)[0] == "running":
            return [f"kept running container {quote(n)}, whose name is invalid; remove it "
                    f"with: ctrun destroy --force {quote(n)}"]
        try:
            self.destroy(n, force=True)
        except NotFound:  # a destroy running meanwhile took it
            return []
        except CtrunError as e:  # one bad entry must not stop the rest of gc
            return [f"could not remove {quote(n)}: {e}"]
        return [f"removed {'invalid container' if conf else 'leftover entry'} {quote(n)}"]

    def _orphan_cgroup_removed(self, parent, cgroup):
        """Remove one of this store's cgroups that no container recorded when gc looked;
        re-checked under the name's lock, since a create and start may have made it since."""
        from . import cgroups
        name = cgroup[:-len(self.store.short_id) - 1]
        try:
            cfgmod.check_name(name)
        except InvalidInput:  # no container can have that name: nothing to race with
            return cgroups.manager(cgroup, parent=parent).discard()
        with self.store.lock(name):
            conf = read_json(self.store.container_dir(name) / "config.json") or {}
            if conf and (conf.get("cgroup_parent", DEFAULT_CGROUP_PARENT), conf.get(
                    "cgroup_name") or name) == (parent, cgroup):
                return False
            return cgroups.manager(cgroup, parent=parent).discard()

    def gc(self):
        """Finish what crashed verbs left: temp dirs, dead containers' cgroups, stale locks."""
        from . import cgroups
        done = []
        self.store.ensure()
        for n in os.listdir(self.store.containers):
            if n.startswith((".tmp-", ".destroy-")):
                shutil.rmtree(self.store.containers / n, ignore_errors=True)
                done.append(f"removed leftover {quote(n)}")
        parents, owned = set(), set()
        done += _remove_stale_temps(self.store, [self.store.root / "networks"])
        for n in self.store.container_names():
            cdir = self.store.container_dir(n)
            done += _remove_stale_temps(self.store, [cdir, cdir / "vm"])
            conf = read_json(cdir / "config.json")
            if conf is None or not cfgmod.NAME_RE.fullmatch(n):
                done += self._gc_bad_entry(n, cdir, conf)
                continue
            parent = conf.get("cgroup_parent", DEFAULT_CGROUP_PARENT)
            parents.add(parent)
            owned.add((parent, conf.get("cgroup_name") or n))
            with self.store.lock(n):
                st, state, live, ex = status(cdir)
                if st != "running":
                    if _manager(n, conf).discard():
                        done.append(f"removed cgroup of stopped container {n}")
                    if state.get("start_id") and not (read_json(cdir / "exit.json") or {}).get(
                            "start_id") == state["start_id"]:
                        write_json(cdir / "exit.json", {"start_id": state["start_id"],
                                                        "exit_code": None,
                                                        "exit_reason": ex["exit_reason"],
                                                        "finished_at": None},
                                   durable=False)
                        done.append(f"recorded lost exit of {n}")
        known = set(self.store.container_names())
        done += _gc_network(self.store, known)
        from .images import store as images
        done += images.gc(self.store)
        from .vm import disk
        done += disk.gc(self.store)
        # only cgroups named with this store's id: the parent is shared by every store on the
        # host, and another store's (or a pre-store-id) cgroup is never an orphan of ours
        parents.add(os.environ.get("CTRUN_CGROUP_PARENT", DEFAULT_CGROUP_PARENT))
        for parent in sorted(parents):
            for n in cgroups.children(parent, owner=self.store.short_id):
                if (parent, n) in owned:
                    continue
                if self._orphan_cgroup_removed(parent, n):
                    done.append(f"removed orphan cgroup {parent}/{n}")
        return done


# v1 devices cgroup allowlist: what a container's /dev holds, plus pty masters/slaves.
DEVICE_ALLOW = ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
                "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c *:* m", "b *:* m"]


def _manager(name, conf):
    """The cgroup manager of a container: the name and parent recorded in its config (a
    container made before store ids has a cgroup of its plain name)."""
    from . import cgroups
    conf = conf or {}
    return cgroups.manager(conf.get("cgroup_name") or name,
                           parent=conf.get("cgroup_parent", DEFAULT_CGROUP_PARENT))


def _remove_stale_temps(store, dirs):
    """write_json temporary files whose writer died (killed half-way through a write)."""
    done = []
    for d in dirs:
        for tmp in stale_temp_files(d):
            tmp.unlink(missing_ok=True)
            done.append(f"removed stale temporary file {quote(str(tmp.relative_to(store.root)))}")
    return done


def _discard_cgroup(name, conf):
    """Remove a container's cgroup; a name the cgroup layer refuses never had one."""
    try:
        mgr = _manager(name, conf)
    except InvalidInput:
        return False
    return mgr.discard()


def _check_limits(opts, ignore_unsupported):
    """(Limits, names to skip, warnings): refuse what this host cannot apply, unless told."""
    from .cgroups import detect
    from .cgroups.limits import from_options, unsupported
    lim = from_options(**opts)
    if lim.is_empty():
        return lim, [], []
    problems = unsupported(lim, detect())
    if problems and not ignore_unsupported:
        raise InvalidInput(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                          else "") + "; drop the option or use "
                           "--ignore-unsupported")
    skip = sorted({p.field for p in problems})
    return lim, skip, problems


def _delegate(dirs, uid):
    """Hand the container's own cgroup subtree (not its limits) to its mapped root."""
    for d in dirs:
        os.chown(d, uid, uid)
        for f in ("cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads"):
            try:
                os.chown(os.path.join(d, f), uid, uid)
            except FileNotFoundError:
                pass


def _gc_network(store, known):
    """Leases and published-port rules whose container no longer exists."""
    done = []
    nets_dir = store.root / "networks"
    if not nets_dir.exists():
        return done
    from .network import ipam, networks
    for n in networks.list_networks(store):
        for ip, holder in ipam.leases(store, n["name"]).items():
            owner = holder.split("/")[0]
            if owner in known:
                continue
            try:  # a create holding the name's lock may be about to rename its directory
                with store.lock(owner, timeout=0):
                    if owner in set(store.container_names()):
                        continue
                    ipam.release(store, n["name"], holder)
                    done.append(f"released {ip} of missing container {holder}")
            except Conflict:
                pass
    try:
        from .network import nft
        # this store's rules only: the table is shared by every store on the host
        for owner in nft.owned_names("ct", store.short_id):
            if owner not in known:
                try:  # a create and start may have made it since gc listed the store
                    with store.lock(owner, timeout=0):
                        if (store.container_dir(owner) / "config.json").exists():
                            continue
                        nft.unpublish(owner, store.short_id)
                except Conflict:
                    continue
                done.append(f"removed published ports of missing container {owner}")
            elif status(store.container_dir(owner))[0] != "running":
                # its supervisor died with it (e.g. a killed `ctrun run`): nobody unpublished
                nft.unpublish(owner, store.short_id)
                done.append(f"removed published ports of stopped container {owner}")
    except CtrunError:
        pass
    return done


def _root_login(root):
    """(home, shell) of root in the /etc/passwd of the container whose root directory is
    `root`, read without leaving it; "/" and /bin/sh stand in for what is missing there."""
    import stat
    from .runtime import paths
    entry = []
    try:   # a regular file only, read in bounds: the container may have planted a FIFO
        with os.fdopen(paths.open_in_root(root, "/etc/passwd", os.O_RDONLY | os.O_NONBLOCK),
                       "rb") as f:
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                entry = next((line.decode(errors="replace").rstrip("\n").split(":")
                              for line in f.read(1 << 20).splitlines()
                              if line.startswith(b"root:")), [])
    except (OSError, CtrunError):
        pass
    home, shell = entry[5:7] if len(entry) == 7 else ("/", "/bin/sh")
    try:
        paths.lookup_command(root, shell, "")
    except CtrunError:
        shell = "/bin/sh"
    try:
        os.close(paths.open_in_root(root, home, os.O_PATH | os.O_DIRECTORY))
    except (OSError, CtrunError):
        home = "/"
    return home, shell


def _exec_cgroups(spec, pid):
    """The spec with the cgroups an exec'd process joins: on cgroup2, the init's own cgroup
    where the container's init (systemd) has delegated controllers below its root."""
    ann = spec["annotations"]
    v2 = (ann.get("run.ctrun.cgroup_layout") or {}).get("v2")
    if not v2:
        return spec
    from .cgroups.v2 import joinable_procs
    procs = [str(joinable_procs(p, v2, pid)) if p.startswith(v2.rstrip("/") + "/") else p
             for p in ann.get("run.ctrun.cgroup_procs", [])]
    return {**spec, "annotations": {**ann, "run.ctrun.cgroup_procs": procs}}


def _systemd_hierarchy(cfg, icfg, rootfs):
    """systemd as PID 1 on a cgroup v1 or hybrid host without a name=systemd hierarchy:
    mount one first (ctrun.cgroups.named), so the container's cgroups include it."""
    from .cgroups import named
    from .cgroups.detect import detect, forget
    from .runtime import pid1
    from .spec import init_of
    if named.needed(detect()) and init_of(cfg, icfg, rootfs) == pid1.SYSTEMD and \
            named.ensure(detect()):
        forget()


def _layout_for_container(layout):
    """What the container init needs to mount its own view of the hierarchies."""
    return {"kind": layout.kind, "v1": {k: str(p) for k, p in layout.v1.items()},
            "v2": str(layout.v2) if layout.v2 else None}


def _raise(reply):
    from . import errors
    cls = getattr(errors, reply.get("kind", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, CtrunError)):
        cls = errors.ContainerFailed
    raise cls(reply.get("message", "unknown error"))
