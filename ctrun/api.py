"""The lifecycle: every verb on a container, written once (lock, state check, store files,
the monitor hand-off), calling the backend its recorded mode chose (ctrun.backends).  Front
ends (the CLI, the lab, Python programs) call this class and nothing below it.

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
import select
import shutil
import signal
import sys
import time

from . import backends, config as cfgmod, lifecycle
from .backends import base
from .backends.container import (  # noqa: F401 - names tests and benchmarks import here
    DEVICE_ALLOW, _root_login, _systemd_hierarchy)
from .errors import CommandNotFound, Conflict, CtrunError, InvalidInput, NotFound
from .lifecycle import State
from .shared import SharedVerbs
from .state import Store, status, write_json

DEFAULT_CGROUP_PARENT = cfgmod.DEFAULT_CGROUP_PARENT


def _now():
    from .runtime.reap import now
    return now()


def _cgroup_parent():
    return os.environ.get("CTRUN_CGROUP_PARENT", DEFAULT_CGROUP_PARENT)


class Ctrun(SharedVerbs):
    def __init__(self, root=None, warn=None):
        self.store = Store(root)
        # where non-fatal notices go (skipped --ignore-unsupported limits); the CLI prints them
        self.warn = warn or (lambda message: None)

    # ---------------------------------------------------------------- helpers
    def _cdir(self, name):
        cfgmod.check_name(name)
        d = self.store.container_dir(name)
        if not (d / cfgmod.FILE).exists():
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
        cfg = cfgmod.load(cdir)
        if cfg is None:
            raise NotFound(f"container '{cdir.name}' not found; see: ctrun list --all")
        return cfg

    def _backend(self, cfg):
        return backends.for_mode(cfg.mode)(self.store, self.warn)

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

    def cgroup_manager(self, name):
        """The cgroup manager of container `name` (its recorded cgroup, or the one a create
        would record now)."""
        from .cgroups import container_name
        cfg = cfgmod.load(self.store.container_dir(name)) or cfgmod.Config(
            name, cgroup_name=container_name(name, self.store.short_id),
            cgroup_parent=_cgroup_parent())
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
        lim, skip, warnings = _check_limits(limits or {}, ignore_unsupported)
        cfg.limits, cfg.limits_skip = lim.to_dict(), skip
        if workdir and not workdir.startswith("/"):
            raise InvalidInput(f"working directory {workdir!r} must be an absolute path")
        if init and not os.path.exists("/usr/bin/tini-static"):
            from .errors import HostUnsupported
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
                from .cgroups import container_name
                cfg.cgroup_parent = _cgroup_parent()
                cfg.cgroup_name = container_name(name, self.store.short_id)
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
            from . import onboot as onbootmod
            onbootmod.sync(self.store)
        for w in warnings:
            self.warn(w)
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
            sid = self._hand_to_monitor(name, cdir, state, mgr, cfg.net, extra)
        backend.ready(name, cdir, sid)  # a VM's guest boots without the lock held
        return self.inspect(name)

    def _hand_to_monitor(self, name, cdir, state, mgr, net, extra):
        """Ask the store's monitor to launch and supervise this start; returns its id."""
        from . import monitor
        sid = os.urandom(6).hex()
        started = _now()
        write_json(cdir / "state.json", {"start_id": sid, "started_at": started})
        try:
            reply = monitor.request(self.store.root, {
                "op": "start", "name": name, "cdir": str(cdir), "start_id": sid,
                "root": str(self.store.root), "started_at": started, "bpf": None,
                "cgroup_parent": "/".join(mgr.parent_parts), "cgroup_name": mgr.name,
                **extra})
        except CtrunError:  # no monitor could be reached: nothing was started
            base.undo_start(self.store, name, cdir, state, mgr, net)
            raise
        # (interrupted while the monitor starts it: the monitor owns it now, and its
        # live/exit records under this start id tell the next verb what happened)
        if not reply.get("ok"):
            base.undo_start(self.store, name, cdir, state, mgr, net)
            _raise(reply)
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
            write_json(cdir / "state.json", {**state, "stop_requested": state["start_id"]})
            base.thaw_if_frozen(cfg)
            self._backend(cfg).stop(name, cdir, cfg, live, timeout)
            base.await_exit_record(cdir, state["start_id"])
        return self.inspect(name)

    def restart(self, name, timeout=10.0):
        cdir = self._cdir(name)
        if status(cdir)[0] == State.RUNNING:
            self.stop(name, timeout)
        return self.start(name)

    # ---------------------------------------------------------------- limits
    def set(self, name, limits, save=True, ignore_unsupported=False):
        """Change limits (vzctl set): live on a running container, saved unless save=False.
        Returns warnings for limits skipped with ignore_unsupported."""
        from .cgroups.limits import Limits
        if not limits:
            raise InvalidInput("set needs at least one limit, e.g. ctrun set NAME --memory 256M")
        cdir = self._cdir(name)
        with self.store.lock(name):
            new, skip, warnings = _check_limits(limits, ignore_unsupported)
            st = status(cdir)[0]
            running = st == State.RUNNING
            if not save:
                lifecycle.require("set-live", name, st, " to change its saved limits")
            cfg = self._config(cdir)
            new = self._backend(cfg).set_limits(name, cdir, cfg, new, running)
            merged = Limits.from_dict(cfg.limits or {}).merged(new)
            if running:
                mgr = base.manager(cfg)
                mgr.apply(new, skip=skip)
                if new.cpus is not None:  # the cpuset that makes nproc say --cpus
                    from .runtime import lxcfs
                    lxcfs.spread_cpus(mgr, merged, name, skip)
            if save:
                cfg.limits = merged.to_dict()
                cfg.limits_skip = sorted(set(cfg.limits_skip) - set(
                    k for k, v in new.to_dict().items() if v is not None) | set(skip))
                cfg.save(cdir)
        for w in warnings:
            self.warn(w)
        return warnings

    def freeze(self, name):
        with self._held(name, "freeze") as (_, cfg, _):
            base.manager(cfg).freeze()

    def thaw(self, name):
        with self._held(name, "thaw") as (_, cfg, _):
            base.manager(cfg).thaw()

    def stats(self, names=(), strict=True, only=None):
        """{name: stats} of running containers (all of them when names is empty).

        strict: a named container that is not running is an error; otherwise it (and one
        that stops while being read) is left out.  only: the stat sections to read."""
        out = {}
        for n in names or self.store.container_names():
            cdir = self._cdir(n) if strict and names else self.store.container_dir(n)
            st = status(cdir)[0]
            if not lifecycle.may("stats", st):
                if names and strict:
                    lifecycle.require("stats", n, st)
                continue
            cfg = cfgmod.load(cdir)
            try:
                if cfg is None:
                    raise NotFound(f"container '{n}' not found; see: ctrun list --all")
                out[n] = base.manager(cfg).stats(only)
                if only is None or "guest" in only:
                    guest = self._backend(cfg).guest_stats(cdir)
                    if guest is not None:
                        out[n]["guest"] = guest
            except CtrunError:
                if strict and names:
                    raise
                out.pop(n, None)
        return out

    # ---------------------------------------------------------------- exec
    def exec(self, name, argv, tty=False, interactive=False, env=(), workdir=None, user=None):
        if not argv:
            raise InvalidInput("exec needs a command: ctrun exec NAME -- CMD [ARGS...]")
        cfgmod.parse_env(env)
        cfgmod.parse_user(user)
        with self._held(name, "exec") as (cdir, cfg, (_, _, live)):
            backend = self._backend(cfg)
        # without the lock: an exec may run for as long as it likes
        return backend.exec(cdir, cfg, live, argv, tty=tty, interactive=interactive,
                                       env=env, workdir=workdir, user=user)

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
                        kind = self._config(self._cdir(name)).mode
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
        """A login shell as root, as `vzctl enter` gives (see the backend's login)."""
        cdir = self._cdir(name)
        st, _, live, _ = status(cdir)
        lifecycle.require("exec", name, st)
        tty = sys.stdin.isatty()
        (argv, kw), *fallback = self._backend(self._config(cdir)).login(live)
        try:
            return self.exec(name, argv, tty=tty, interactive=True, **kw)
        except CommandNotFound:
            if not fallback:
                raise
            argv, kw = fallback[0]
            return self.exec(name, argv, tty=tty, interactive=True, **kw)

    # ---------------------------------------------------------------- queries
    def inspect(self, name):
        cdir = self._cdir(name)
        return self._describe(name, cdir)

    def _describe(self, name, cdir, full=True):
        cfg = cfgmod.load(cdir) or cfgmod.Config(name, image=None)
        st, state, live, ex = status(cdir)
        out = {
            "name": name, "image": cfg.image, "mode": cfg.mode,
            "state": st, "pid": live["pid"] if live else None,
            "created_at": cfg.created_at,
            "started_at": state.get("started_at"),
            "finished_at": ex.get("finished_at") if ex else None,
            "exit_code": ex.get("exit_code") if ex else None,
            "exit_reason": ex.get("exit_reason") if ex else None,
        }
        row, detail = self._backend(cfg).describe(
            cdir, cfg, out["pid"] if st == State.RUNNING else None)
        out.update(row)
        if not full:
            return out
        try:
            m = base.manager(cfg)
            paths = m.paths()
        except CtrunError:
            m, paths = None, {}
        out["limits"] = None
        if st == State.RUNNING and m is not None:
            try:
                out["limits"] = m.read_limits()
                if m.frozen():
                    out["state"] = str(State.FROZEN)
            except (CtrunError, OSError):
                out["limits"] = None
        net = cfg.net
        out["network"] = {"name": net.get("network"), "ip": net.get("ip"),
                          "mac": net.get("mac"), "gateway": net.get("gateway"),
                          "veth": net.get("veth"), "publish": net.get("publish", []),
                          "dns": net.get("dns", [])} if net else None
        out.update({"config": cfg.to_dict(), "cgroup": paths, "dir": str(cdir),
                    "log_path": str(cdir / "logs" / "console.log")})
        out.update(detail)
        return out

    def list(self, all=False):
        rows = []
        for n in self.store.container_names():
            cdir = self.store.container_dir(n)
            if not (cdir / cfgmod.FILE).exists():
                continue
            d = self._describe(n, cdir, full=False)
            if all or d["state"] == State.RUNNING:
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
            running = status(cdir)[0] == State.RUNNING
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
            cfg = cfgmod.load(cdir)  # None: debris of a create, which never had a cgroup
            if st == State.STOPPING:  # let the monitor finish recording the exit
                base.await_exit_record(cdir, state["start_id"], timeout=5)
            if not force:
                lifecycle.require("destroy", name, st)
            if st == State.RUNNING:
                write_json(cdir / "state.json", {**state, "stop_requested": state["start_id"]})
                base.kill_and_wait(cfg, live)
                base.await_exit_record(cdir, state["start_id"], timeout=5)
            if cfg:
                base.discard_cgroup(cfg)
            if cfg and cfg.net.get("ip"):
                from .network import container as netc
                netc.down(self.store, name, cfg.net)
                netc.release(self.store, name, cfg.net)
                netc.write_hosts(self.store, cfg.net["network"])
            trash = self.store.containers / f".destroy-{name}-{os.urandom(4).hex()}"
            os.rename(cdir, trash)
            shutil.rmtree(trash, ignore_errors=True)
            if cfg and cfg.onboot:
                from . import onboot
                onboot.sync(self.store)
            try:
                os.unlink(self.store.locks / f"{name}.lock")
            except FileNotFoundError:
                pass

    def gc(self):
        """Finish what crashed verbs left: temp dirs, dead containers' cgroups, stale locks."""
        from . import gc
        return gc.collect(self)

    def set_ips(self, name, add=(), delete=(), save=True):
        """Add or remove extra addresses on eth0 (vzctl set --ipadd/--ipdel)."""
        from .network import container as netc
        with self._held(name) as (cdir, cfg, (st, _, live)):
            net = cfg.net
            if not net.get("ip"):
                raise InvalidInput(f"container '{name}' has no bridged network; --ip-add needs one")
            net = netc.change_ips(self.store, name, net, add, delete,
                                  live["pid"] if st == State.RUNNING else None)
            if save:
                cfg.net = net
                cfg.save(cdir)

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
        with self._held(name, "edit") as (cdir, cfg, (st, _, live)):
            conf = cfg.to_dict()  # its overlay may still be mounted
            live = live if st == State.RUNNING else None
            self._backend(cfg).check_edit(name, {
                "hostname": hostname, "nameserver": nameserver is not None,
                "searchdomain": searchdomain is not None, "userpasswd": secret,
                "ssh_key": keys})
            if not save and (hostname or nameserver is not None or searchdomain is not None
                             or onboot is not None):
                lifecycle.require("set-live", name, st)
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
                cfgmod.Config.from_dict(new).save(cdir)
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
            if not lifecycle.may("start", status(self.store.container_dir(n))[0]):
                continue
            try:
                self.start(n)
                out.append((n, None))
            except CtrunError as e:
                out.append((n, str(e)))
        return out

    def template(self, container, name):
        """Image `name` from a container's changes on its image (vzdump-style template)."""
        from .images import transfer
        cdir = self._cdir(container)
        self._backend(self._config(cdir)).check_template(container)
        return transfer.template(self.store, container, name, cdir)


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


def _raise(reply):
    from . import errors
    cls = getattr(errors, reply.get("kind", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, CtrunError)):
        cls = errors.ContainerFailed
    raise cls(reply.get("message", "unknown error"))
