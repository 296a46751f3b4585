"""The VPS verbs, vzctl's rather than docker's: change a made container's limits (set), extra
addresses (set_ips) and knobs (set_vps), start the containers marked onboot, and make an
image from a container (template).  Ctrun (ctrun.api) inherits them: they reach the
container through its _held (lock, state check, Config) and _backend, and start through
its start."""

from . import config as cfgmod, lifecycle
from .backends import base
from .errors import CtrunError, InvalidInput
from .lifecycle import State
from .state import status


class VPSVerbs:
    store = None  # set by Ctrun

    def set(self, name, limits, save=True, ignore_unsupported=False):
        """Change limits (vzctl set): live on a running container, saved unless save=False.
        Returns warnings for limits skipped with ignore_unsupported."""
        from .cgroups.limits import Limits, for_host
        if not limits:
            raise InvalidInput("set needs at least one limit, e.g. ctrun set NAME --memory 256M")
        with self._held(name) as (cdir, cfg, (st, _, _)):
            new, skip, warnings = for_host(limits, ignore_unsupported)
            running = st == State.RUNNING
            if not save:
                lifecycle.require("set-live", name, st, " to change its saved limits")
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
        self._warn_all(warnings)
        return warnings

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
                self._sync_onboot()

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
