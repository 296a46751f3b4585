"""The container backend: the workload's init in its own namespaces, cgroup and overlay root,
built from an OCI runtime spec (ctrun.spec) and started by ctrun.runtime.process."""

import os
import signal

from .. import config as cfgmod
from ..cgroups.base import DEVICE_ALLOW
from ..errors import CtrunError
from ..state import read_json, sync, write_json
from . import base


class ContainerBackend(base.Backend):
    mode = "container"
    dirs = ("upper", "work", "rootfs", "logs")
    attachable = True
    orphans_launch = True
    _claim = None
    pool = False   # take cgroups and network namespaces from the store's pools (ctrun.pools)

    # ---------------------------------------------------------------- create
    def prepare(self, tmp, cfg, prepared):
        if cfg.userns:
            cfg.userns_base = self._userns_setup(tmp)

    def abandon(self):
        if self._claim is not None:
            self._claim.unlink(missing_ok=True)
            self._claim = None

    def _userns_setup(self, cdir):
        """A private id range, and upper/work dirs (and /etc files) owned by its root; the
        image's layers are shown through idmapped mounts at start (namespaces.userns)."""
        from ..namespaces import userns
        store = self.store
        # the store stays private: the mapped root never walks to it (the parent, as host
        # root, builds the root file system and clones the bind sources for it)
        with store.lock(".userns-pool"):
            used = [getattr(cfgmod.load(store.container_dir(n)), "userns_base", None)
                    for n in store.container_names()]
            used += [int(p.read_text()) for p in store.locks.glob("userns-*.claim")]
            base_ = userns.allocate(b for b in used if b is not None)
            # held until the container directory (and its config) exists: see abandon()
            self._claim = store.locks / f"userns-{base_}.claim"
            self._claim.write_text(str(base_))
        for d in ("upper", "work", "rootfs", "etc", "etc/hosts", "etc/hostname",
                  "etc/resolv.conf"):
            os.chown(cdir / d, base_, base_)
        return base_

    # ---------------------------------------------------------------- start
    def prepare_start(self, name, cdir, cfg, tty=False):
        """Cgroup, spec and seccomp program for a new start: (mgr, monitor request fields)."""
        from .. import spec as specmod
        from ..images import store as images
        from ..runtime import lxcfs, seccomp
        rootfs, icfg = images.get(self.store, cfg.image, build_missing=False)
        _systemd_hierarchy(cfg, icfg, rootfs)
        mgr = base.manager(cfg)
        device_rules = mgr.supports_device_rules()
        rules = DEVICE_ALLOW if device_rules and not cfg.privileged else None
        entry = self.pool and mgr.leaf and _take_cgroup(self.store, mgr, rules)
        if entry:
            mgr.create()   # what the pool cannot hold: the cgroup2 side of a hybrid host
        else:
            mgr.create(device_rules=rules)
        spec = None
        try:
            if cfg.limits:
                from ..cgroups.limits import Limits
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
            spec["annotations"]["run.ctrun.cgroup_layout"] = layout_for_container(mgr.layout)
            if cfg.userns:
                leaf = {os.path.basename(str(mnt)): str(mnt / mgr.rel / "ct")
                        for mnt in mgr.mounts().values()}
                spec["annotations"]["run.ctrun.cgroup_dirs"] = leaf
                _delegate(leaf.values(), cfg.userns_base)
            if self.pool:
                from ..network import nspool
                nspool.use(self.store, spec)
            bpf_path = None
            if spec["annotations"]["run.ctrun.seccomp"]:
                caps = spec["process"]["capabilities"]["bounding"]
                bpf_path = str(seccomp.bpf_path_for(caps, self.store.root / "cache"))
            write_json(cdir / "spec.json", spec, durable=False)
            self.specs[str(cdir)] = spec
        except BaseException:
            if spec is not None:
                _release_netns(spec)
            mgr.remove()
            lxcfs.settled()   # no init will bind its files: a release may go on
            raise
        extra = {"bpf": bpf_path}
        if entry:
            extra["pool_entry"] = entry   # a zygote parked there can launch it
        if spec["annotations"].get("run.ctrun.init"):
            extra.update(console=True, console_uid=cfg.userns_base if cfg.userns else 0)
        return mgr, extra

    def _prepared_spec(self, cdir):
        """The spec prepare_start wrote: as it built it, if this object did (a warm
        worker, an attached run), else read back (a launcher of the monitor's)."""
        return self.specs.pop(str(cdir), None) or read_json(cdir / "spec.json")

    def launch(self, req, cdir, cfg, out_w, err_w, console=None, on_pid=None):
        from pathlib import Path
        from ..network import container as netc
        from ..runtime import process
        from ..state import Store
        plumber = netc.plumber_for(cfg.net)  # pyroute2 loads meanwhile
        spec = self._prepared_spec(cdir)
        if console:
            os.close(console[0])
            spec["annotations"]["run.ctrun.console"] = os.ttyname(console[1])
        bpf = Path(req["bpf"]).read_bytes() if req.get("bpf") else None
        devnull = os.open("/dev/null", os.O_RDONLY)
        try:
            launched = process.launch(spec, stdio=(devnull, out_w, err_w), bpf=bpf,
                                      zygote=_zygote(req.get("pool_entry")), on_pid=on_pid)
        except BaseException:
            if plumber:
                plumber.cancel()
            raise
        finally:
            _release_netns(spec)
        if plumber:
            try:
                plumber.up(Store(req["root"]), req["name"], cfg.net, launched.pid)
            except BaseException:
                os.kill(launched.pid, signal.SIGKILL)
                raise
        return launched.pid, launched.pid_start, launched

    def attach(self, name, cdir, cfg, tty, interactive, plumber):
        """stdio inherited (or a pty)."""
        import prctl
        from ..network import container as netc
        from ..runtime import lxcfs, process
        from ..runtime.reap import now
        if plumber is None:
            plumber = netc.plumber_for(cfg.net)  # loads pyroute2 meanwhile, elsewhere
        elif not netc.bridged(cfg.net):
            plumber.cancel()
            plumber = None
        try:
            mgr, extra = self.prepare_start(name, cdir, cfg, tty=tty)
        except BaseException:
            if plumber:
                plumber.cancel()
            raise
        spec = self._prepared_spec(cdir)
        sid = os.urandom(6).hex()
        started = now()
        # synced once the workload runs (state.sync below), not before its start
        write_json(cdir / "state.json", {"start_id": sid, "started_at": started},
                   durable=False)
        bpf = open(extra["bpf"], "rb").read() if extra["bpf"] else None
        stdin = 0
        if not interactive and not tty:
            stdin = os.open("/dev/null", os.O_RDONLY)
        try:
            # a subreaper only while the init is forked (straight from here, or by an
            # intermediate that exits: the init becomes our child).  Kept on, a Python
            # program calling run() would inherit every later orphan (each monitor it
            # spawns) and never reap them.
            was_reaper = prctl.get_child_subreaper()
            prctl.set_child_subreaper(1)
            try:
                launched = process.launch(spec, stdio=(stdin, 1, 2), tty=tty, bpf=bpf,
                                          zygote=_zygote(extra.get("pool_entry")),
                                          child=True)
            finally:
                _release_netns(spec)
                if not was_reaper:
                    prctl.set_child_subreaper(0)
            if plumber:
                plumber.up(self.store, name, cfg.net, launched.pid)
                plumber = None
            write_json(cdir / "live.json", {"start_id": sid, "pid": launched.pid,
                                            "pid_start": launched.pid_start,
                                            "started_at": started, "monitor": "attached"},
                       durable=False)
            if launched.master is not None:
                # the terminal's size before the workload runs (it may ask at once); the
                # relay copies it again, and at each resize
                from ..runtime import terminal
                terminal.copy_winsize(0, launched.master)
            launched.start()
            lxcfs.settled()   # its init has bound LXCFS's files (ready)
            if launched.listener is not None:   # this runner answers its sysinfo calls
                from ..runtime import sysinfo
                sysinfo.serve(launched.listener, launched.pid, spec)
            sync(cdir / "state.json")
        except BaseException:
            lxcfs.settled()
            if plumber:
                plumber.cancel()
            base.undo_start(self.store, name, cdir, {}, mgr, cfg.net)
            raise
        return launched, spec, mgr, sid

    def wait_attached(self, name, cdir, attached, tty, interactive):
        from ..runtime import process, reap, terminal
        launched, spec, mgr, sid = attached
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
            # an init (systemd, sysvinit) ignores SIGTERM and takes SIGINT for a reboot: a TERM
            # or INT to the CLI (timeout, Ctrl-C) means stop, and becomes its stop: systemd's
            # stop signal, sysvinit's runlevel-0 request (its stop signal if that fails)
            ann = spec["annotations"]
            stop = cfgmod.parse_signal(ann["run.ctrun.stop_signal"])
            if ann.get("run.ctrun.halt") == "initctl":
                from ..runtime import sysvinit
                sig = stop

                def stop():
                    if not sysvinit.request_halt(pid, launched.pid_start):
                        os.kill(pid, sig)
            status_ = process._wait_forwarding(pid, {signal.SIGTERM: stop, signal.SIGINT: stop}
                                               if ann.get("run.ctrun.init") else None)
        code, _ = reap.finalize(cdir, name, sid, status_, "/".join(mgr.parent_parts),
                                mgr.name)
        return code

    # ---------------------------------------------------------------- running
    def stop(self, name, cdir, cfg, live, timeout):
        import select
        from ..runtime import sysvinit
        ann = (read_json(cdir / "spec.json") or {}).get("annotations", {})
        sig = cfgmod.parse_signal(ann.get("run.ctrun.stop_signal", "SIGTERM"))
        # sysvinit halts on a runlevel request, not a signal: the signal only when the
        # request cannot be written
        fd = base.signal_pid(live, 0 if ann.get("run.ctrun.halt") == "initctl" and
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

    def exec(self, cdir, cfg, live, argv, tty=False, interactive=False, env=(), workdir=None,
             user=None, to_monitor=None):
        from ..runtime import process
        spec = read_json(cdir / "spec.json")
        bpf = None
        if spec["annotations"].get("run.ctrun.seccomp"):
            from ..runtime import seccomp
            caps = spec["process"]["capabilities"]["bounding"]
            bpf = seccomp.bpf_for(caps, self.store.root / "cache")
        return process.join(live, exec_cgroups(spec, live["pid"]), argv, env=env, cwd=workdir,
                            user=user, tty=tty, stdin=interactive or tty, bpf=bpf,
                            on_listener=_sysinfo_to_monitor(live, spec, to_monitor))

    def login(self, live):
        """Root's shell from the container's /etc/passwd, as a login shell in root's home
        (as `vzctl enter` gives); plain /bin/sh when that is missing."""
        home, shell = _root_login(f"/proc/{live['pid']}/root")
        env = [f"HOME={home}", "USER=root", "LOGNAME=root", f"SHELL={shell}"]
        return [([shell, "-l"], {"env": env, "workdir": home}), (["/bin/sh"], {})]


def _sysinfo_to_monitor(live, spec, to_monitor):
    """For `exec` into a detached container with sysinfo intercepted: what hands the
    command's listener to the store's monitor, which answers the container's
    (to_monitor(fd, live): True once it took it; an attached container's supervisor has no
    socket: its exec'd commands keep the host's sysinfo)."""
    if not spec["annotations"].get("run.ctrun.sysinfo") or live.get("monitor") != "shared" \
            or to_monitor is None:
        return None

    def hand(fd):
        if to_monitor(fd, live):
            os.close(fd)
        else:   # this verb answers while it lives: the command must never wait unanswered
            from ..runtime import sysinfo
            sysinfo.serve(fd, live["pid"], spec)
    return hand


def _take_cgroup(store, mgr, rules):
    """Rename a pooled cgroup into place as the container's (ctrun.cgroups.pool)."""
    from .. import pools
    return pools.cgroup_pool(store, "/".join(mgr.parent_parts), mgr.layout).take(mgr.name,
                                                                                 rules)


def _zygote(entry):
    """The zygote parked in the pooled cgroup this start took, if this process has one."""
    if not entry:
        return None
    from .. import pools
    return pools.zygote_for(entry)


def _release_netns(spec):
    """The pooled network namespace a start took is released once the init joined it."""
    if spec["annotations"].get("run.ctrun.netns_pool"):
        from ..network import nspool
        nspool.release_spec(spec)


def _delegate(dirs, uid):
    """Hand the container's own cgroup subtree (not its limits) to its mapped root."""
    for d in dirs:
        os.chown(d, uid, uid)
        for f in ("cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads"):
            try:
                os.chown(os.path.join(d, f), uid, uid)
            except FileNotFoundError:
                pass


def _root_login(root):
    """(home, shell) of root in the /etc/passwd of the container whose root directory is
    `root`, read without leaving it; "/" and /bin/sh stand in for what is missing there."""
    import stat
    from ..runtime import paths
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


def exec_cgroups(spec, pid):
    """The spec with the cgroups an exec'd process joins: on cgroup2, the init's own cgroup
    where the container's init (systemd) has delegated controllers below its root."""
    ann = spec["annotations"]
    v2 = (ann.get("run.ctrun.cgroup_layout") or {}).get("v2")
    if not v2:
        return spec
    from ..cgroups.v2 import joinable_procs
    procs = [str(joinable_procs(p, v2, pid)) if p.startswith(v2.rstrip("/") + "/") else p
             for p in ann.get("run.ctrun.cgroup_procs", [])]
    return {**spec, "annotations": {**ann, "run.ctrun.cgroup_procs": procs}}


def _systemd_hierarchy(cfg, icfg, rootfs):
    """systemd as PID 1 on a cgroup v1 or hybrid host without a name=systemd hierarchy:
    mount one first (ctrun.cgroups.named), so the container's cgroups include it."""
    from ..cgroups import named
    from ..cgroups.detect import detect, forget
    from ..runtime import pid1
    from ..spec import init_of
    if named.needed(detect()) and init_of(cfg, icfg, rootfs) == pid1.SYSTEMD and \
            named.ensure(detect()):
        forget()


def layout_for_container(layout):
    """What the container init needs to mount its own view of the hierarchies."""
    return {"kind": layout.kind, "v1": {k: str(p) for k, p in layout.v1.items()},
            "v2": str(layout.v2) if layout.v2 else None}

