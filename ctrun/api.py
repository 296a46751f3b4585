"""The lifecycle: create, start, run, stop, kill, freeze, exec and destroy, each written once
(lock, state check, store files, the monitor hand-off), calling the backend the container's
recorded mode chose (ctrun.backends).  Front ends (the CLI, the lab, Python programs) call
Ctrun and nothing below it; it also carries the verbs of ctrun.observe (inspect, list, logs,
stats, captured exec), ctrun.vpsverbs (set, onboot, template) and ctrun.shared (images,
networks).

    from ctrun.api import Ctrun
    ct = Ctrun()                      # or Ctrun(root="/tmp/store")
    ct.create("web1", image="busybox")
    ct.start("web1")
    ct.exec("web1", ["hostname"])     # -> exit code
    ct.stop("web1"); ct.destroy("web1")

Every method raises a ctrun.errors.CtrunError subclass with a one-line message.
"""

import contextlib
import os
import shutil
import sys

from . import backends, config as cfgmod, lifecycle
from .backends import base, container
from .errors import (CommandNotFound, Conflict, CtrunError, HostUnsupported, InvalidInput,
                     NotFound)
from .lifecycle import State
from .observe import ObserveVerbs
from .shared import SharedVerbs
from .state import Store, ephemeral, remove_tree, status, sync, write_json
from .vpsverbs import VPSVerbs

DEFAULT_CGROUP_PARENT = cfgmod.DEFAULT_CGROUP_PARENT
DEVICE_ALLOW = container.DEVICE_ALLOW  # a public name that lived here before the backends


def _now():
    from .runtime.reap import now
    return now()


class Ctrun(SharedVerbs, VPSVerbs, ObserveVerbs):
    def __init__(self, root=None, warn=None, pool=None):
        """pool: starts take pre-made cgroups and network namespaces from the store's
        pools (ctrun.pools; None: $CTRUN_POOL == "1"); whoever fills them (the warm
        server) empties them too, and so does gc."""
        from .pools import enabled
        self.store = Store(root)
        self.pool = enabled(pool)
        # where non-fatal notices go (skipped --ignore-unsupported limits); the CLI prints them
        self.warn = warn or (lambda message: None)

    # ---------------------------------------------------------------- helpers
    def _cdir(self, name):
        cfgmod.check_name(name)
        d = self.store.container_dir(name)
        if not (d / cfgmod.FILE).exists():
            raise _not_found(name)
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
        cfg = cfgmod.load(cdir)
        if cfg is None:
            raise _not_found(cdir.name)
        return cfg

    def _backend(self, cfg):
        b = backends.for_mode(cfg.mode)(self.store, self.warn)
        b.pool = self.pool
        return b

    @contextlib.contextmanager
    def _held(self, name, verb=None):
        """The name's lock, and the container as it is under it: (cdir, Config, Status)
        where Status is (status, state, live), checked for `verb` by the lifecycle."""
        cdir = self._cdir(name)
        with self.store.lock(name):
            st, state, live, _ = status(cdir)
            if verb:
                lifecycle.require(verb, name, st)
            yield cdir, self._config(cdir), (st, state, live)

    def _new_cgroup(self, name):
        """(parent, name) of the cgroup a create now records for container `name` (in its
        config: $CTRUN_CGROUP_PARENT may change later)."""
        from .cgroups import container_name
        return (os.environ.get("CTRUN_CGROUP_PARENT", DEFAULT_CGROUP_PARENT),
                container_name(name, self.store.short_id))

    def _sync_onboot(self):
        from . import onboot  # the store's boot unit follows the containers marked onboot
        onboot.sync(self.store)

    def _warn_all(self, warnings):
        for w in warnings:
            self.warn(w)

    def cgroup_manager(self, name):
        """The cgroup manager of container `name` (its recorded cgroup, or the one a create
        would record now)."""
        cfg = cfgmod.load(self.store.container_dir(name))
        if cfg is None:
            cfg = cfgmod.Config(name)
            cfg.cgroup_parent, cfg.cgroup_name = self._new_cgroup(name)
        return base.manager(cfg)

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
        from .images import store as images
        from .network import container as netc
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
        cfg.onboot = cfgmod.parse_onboot(onboot)
        secret, keys = None, []
        if userpasswd is not None or ssh_key:  # ctrun.vps loads ctypes: not on every create
            from . import vps
            secret, keys = vps.userpasswd_of(userpasswd), vps.keys_from(ssh_key)
        if ip_add and netcfg["network"] in netc.MODES:
            raise InvalidInput(f"--ip-add needs a bridged network, not --net {netcfg['network']}")
        if (secret or keys) and (vm or userns):
            raise InvalidInput("--userpasswd and --ssh-key on create need a container without "
                               "--vm or --userns; start it, then run: ctrun set NAME ...")
        backend = backends.for_create(vm)(self.store, self.warn)
        limits, prepared = backend.check_create(cfg, dict(
            volumes=volumes, userns=userns, init=init, privileged=privileged, cap_add=cap_add,
            cap_drop=cap_drop, ulimits=ulimits, accel=accel), limits)
        from .cgroups.limits import for_host
        lim, skip, warnings = for_host(limits or {}, ignore_unsupported)
        cfg.limits, cfg.limits_skip = lim.to_dict(), skip
        if workdir and not workdir.startswith("/"):
            raise InvalidInput(f"working directory {workdir!r} must be an absolute path")
        if init and not os.path.exists("/usr/bin/tini-static"):
            raise HostUnsupported("--init needs tini-static; run: apt-get install tini")
        rootfs, icfg = images.get(self.store, image)
        _check_command(rootfs, cfg, icfg)
        self.store.ensure()
        with self.store.lock(name):
            final = self.store.container_dir(name)
            if final.exists():
                raise Conflict(f"container '{name}' already exists; choose another name "
                               f"or destroy it first") if (final / cfgmod.FILE).exists() \
                    else Conflict(f"container directory {final} is left from a crash; "
                                  "run: ctrun gc")
            tmp = self.store.containers / f".tmp-{name}-{os.urandom(4).hex()}"
            netc.check_ports_free(self.store, name, netcfg["publish"])
            leased = None
            try:
                tmp.mkdir(mode=0o700)
                for d in backend.dirs:
                    (tmp / d).mkdir(mode=0o755 if d != "logs" else 0o700)
                leased = cfg.net = netc.lease(self.store, name, netcfg)
                for extra in ip_add:  # one by one: a failure releases those taken
                    leased = cfg.net = netc.change_ips(self.store, name, cfg.net, [extra], (),
                                                       None)
                from .network.etc import write_etc_files
                write_etc_files(tmp, name, cfg.hostname or name, cfg.net)
                backend.prepare(tmp, cfg, prepared)
                if secret or keys:
                    vps.apply_inside(self.store, tmp, name, cfg.to_dict(), None, secret, keys,
                                     ssh_user)
                cfg.cgroup_parent, cfg.cgroup_name = self._new_cgroup(name)
                cfg.created_at = _now()
                cfg.save(tmp)
                write_json(tmp / "state.json", {})
                os.rename(tmp, final)
                leased = None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                if leased:  # the create failed after taking an address: give it back
                    netc.release(self.store, name, leased)
                backend.abandon()
        if cfg.onboot:
            self._sync_onboot()
        self._warn_all(warnings)
        out = self._describe(name, final, full=False)
        out["warnings"] = warnings
        return out

    # ---------------------------------------------------------------- start
    def start(self, name):
        """Start a created or stopped container in the background (supervised by the monitor);
        a VM's start returns once its guest agent answers."""
        with self._held(name, "start") as (cdir, cfg, (_, state, _)):
            backend = self._backend(cfg)
            mgr, extra = backend.prepare_start(name, cdir, cfg)
            try:
                sid = self._hand_to_monitor(name, cdir, cfg, backend, state, mgr, extra)
            finally:   # launched (its init has bound LXCFS's files), or not at all
                from .runtime import lxcfs
                lxcfs.settled()
        backend.ready(name, cdir, sid)  # a VM's guest boots without the lock held
        return self.inspect(name)

    def _hand_to_monitor(self, name, cdir, cfg, backend, state, mgr, extra):
        """Ask the store's monitor to launch and supervise this start; returns its id."""
        from . import monitor
        sid = os.urandom(6).hex()
        started = _now()

        def record():   # synced once the init runs (before the verb returns)
            write_json(cdir / "state.json", {"start_id": sid, "started_at": started},
                       durable=False)
        try:
            reply = monitor.start(self.store.root, {
                "op": "start", "name": name, "cdir": str(cdir), "start_id": sid,
                "root": str(self.store.root), "started_at": started, "bpf": None,
                "cgroup_parent": "/".join(mgr.parent_parts), "cgroup_name": mgr.name,
                **extra}, cfg, backend, record)
        except CtrunError:  # no monitor could be reached: nothing was started
            base.undo_start(self.store, name, cdir, state, mgr, cfg.net)
            raise
        # (interrupted while the monitor starts it: the monitor owns it now, and its
        # live/exit records under this start id tell the next verb what happened)
        if not reply.get("ok"):
            base.undo_start(self.store, name, cdir, state, mgr, cfg.net)
            _raise(reply)
        try:
            sync(cdir / "state.json")
        except OSError:   # as a failed write before the start: it does not run
            base.undo_start(self.store, name, cdir, state, mgr, cfg.net)
            raise
        return sid

    def run(self, image="busybox", cmd=(), name=None, rm=False, detach=False, tty=False,
            interactive=False, plumber=None, **create_opts):
        """create + start + wait; returns the workload's exit code (0 with detach).

        plumber: a network.container.Plumber forked early by the caller, so pyroute2 loads
        while the container is created (the CLI forks it before it imports this module)."""
        name = name or "ct-" + os.urandom(4).hex()
        if not detach and not backends.for_create(create_opts.get("vm")).attachable:
            raise InvalidInput("run --vm needs -d: a VM boots its image's init; then use "
                               "ctrun exec NAME -- CMD")
        # what --rm removes at the end need not survive a power loss (no fsync)
        with ephemeral(name if rm and not detach else None):
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
        """Start with this process as the supervisor: stdio inherited (or a pty), the
        workload's exit code returned."""
        with self._held(name) as (cdir, cfg, _):
            backend = self._backend(cfg)
            attached = backend.attach(name, cdir, cfg, tty, interactive, plumber)
        return backend.wait_attached(name, cdir, attached, tty, interactive)

    # ---------------------------------------------------------------- signals
    def kill(self, name, sig="KILL"):
        signum = cfgmod.parse_signal(sig)
        with self._held(name, "kill") as (cdir, cfg, (_, _, live)):
            return self._backend(cfg).signal(cdir, live, signum)

    def stop(self, name, timeout=10.0):
        """The image's stop signal (a VM: its guest's power-off), then SIGKILL after
        `timeout` seconds."""
        with self._held(name, "stop") as (cdir, cfg, (_, state, live)):
            base.request_stop(cdir, state)
            base.thaw_if_frozen(cfg)
            self._backend(cfg).stop(name, cdir, cfg, live, timeout)
            base.await_exit_record(cdir, state["start_id"])
        return self.inspect(name)

    def restart(self, name, timeout=10.0):
        if status(self._cdir(name))[0] == State.RUNNING:
            self.stop(name, timeout)
        return self.start(name)

    # ---------------------------------------------------------------- freezer
    def freeze(self, name):
        with self._held(name, "freeze") as (_, cfg, _):
            base.manager(cfg).freeze()

    def thaw(self, name):
        with self._held(name, "thaw") as (_, cfg, _):
            base.manager(cfg).thaw()

    # ---------------------------------------------------------------- exec
    def exec(self, name, argv, tty=False, interactive=False, env=(), workdir=None, user=None):
        if not argv:
            raise InvalidInput("exec needs a command: ctrun exec NAME -- CMD [ARGS...]")
        cfgmod.parse_env(env)
        cfgmod.parse_user(user)
        with self._held(name, "exec") as (cdir, cfg, (_, _, live)):
            backend = self._backend(cfg)
        # without the lock: an exec may run for as long as it likes
        return backend.exec(cdir, cfg, live, argv, tty=tty, interactive=interactive, env=env,
                            workdir=workdir, user=user, to_monitor=self._sysinfo_to_monitor)

    def _sysinfo_to_monitor(self, fd, live):
        """Hand the sysinfo listener of a command exec'd into a detached container to the
        store's monitor, which answers the container's calls; True if it took it."""
        from . import monitor
        try:
            reply = monitor.request(self.store.root, {"op": "sysinfo", "pid": live["pid"],
                                                      "start_id": live["start_id"]},
                                    fds=[fd], spawn=False)
        except OSError:
            return False
        return bool(reply and reply.get("ok"))

    def enter(self, name):
        """A login shell as root, as `vzctl enter` gives (see the backend's login)."""
        with self._held(name, "exec") as (_, cfg, (_, _, live)):
            (argv, kw), *fallback = self._backend(cfg).login(live)
        tty = sys.stdin.isatty()
        try:
            return self.exec(name, argv, tty=tty, interactive=True, **kw)
        except CommandNotFound:
            if not fallback:
                raise
            argv, kw = fallback[0]
            return self.exec(name, argv, tty=tty, interactive=True, **kw)

    # ---------------------------------------------------------------- destroy, gc
    def destroy(self, name, force=False):
        cdir = self._entry(name)
        with self.store.lock(name):
            if cdir.is_symlink() or not cdir.is_dir():  # a stray file: nothing ran from it
                cdir.unlink(missing_ok=True)
                return
            st, state, live, _ = status(cdir)
            cfg = cfgmod.load(cdir)  # None: debris of a create, which never had a cgroup
            if st == State.STOPPING:  # let the monitor finish recording the exit
                base.await_exit_record(cdir, state["start_id"], timeout=5)
            if not force:
                lifecycle.require("destroy", name, st)
            if st == State.RUNNING:
                base.request_stop(cdir, state)
                base.kill_and_wait(cfg, live)
                base.await_exit_record(cdir, state["start_id"], timeout=5)
            if cfg:
                base.discard_cgroup(cfg)
            if cfg and cfg.net.get("ip"):
                from .network import container as netc
                netc.down(self.store, name, cfg.net)
                netc.release(self.store, name, cfg.net)
                netc.write_hosts(self.store, cfg.net["network"])
            # out of containers/ at once; its files go after a served call's reply
            trash = self.store.private_dir("tmp") / f".destroy-{name}-{os.urandom(4).hex()}"
            os.rename(cdir, trash)
            remove_tree(trash)
            if cfg and cfg.onboot:
                self._sync_onboot()
            (self.store.locks / f"{name}.lock").unlink(missing_ok=True)

    def gc(self):
        """Finish what crashed verbs left: temp dirs, dead containers' cgroups, stale locks."""
        from . import gc
        return gc.collect(self)


def _check_command(rootfs, cfg, icfg):
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


def _not_found(name):
    return NotFound(f"container '{name}' not found; see: ctrun list --all")


def _raise(reply):
    from . import errors
    cls = getattr(errors, reply.get("kind", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, CtrunError)):
        cls = errors.ContainerFailed
    raise cls(reply.get("message", "unknown error"))
