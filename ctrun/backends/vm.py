"""The VM backend: a thin adapter of the lifecycle's verbs to ctrun.vm.machine (QEMU in the
container's cgroup, the guest reached through its agent and QMP)."""

import os
import signal

from .. import config as cfgmod
from ..errors import ContainerFailed, Conflict, CtrunError, InvalidInput
from ..lifecycle import State
from . import base

# create options that have no meaning for a guest kernel
NOT_FOR_VM = (("--volume", "volumes"), ("--userns", "userns"), ("--init", "init"),
              ("--privileged", "privileged"), ("--cap-add", "cap_add"),
              ("--cap-drop", "cap_drop"), ("--ulimit", "ulimits"))


class VMBackend(base.Backend):
    mode = "vm"
    guest = True

    def check_host(self, accel="auto"):
        from ..vm import accel as accelmod, kernel, machine
        machine.check_host()
        return accelmod.choose(accel, kernel.find())

    def check_create(self, cfg, opts, limits):
        from ..vm import machine
        for opt, key in NOT_FOR_VM:
            if opts.get(key):
                raise InvalidInput(f"{opt} does not apply to a VM (--vm); drop it")
        limits = dict(limits or {})
        vmopts = machine.options(limits.pop("memory", None), limits.pop("cpus", None),
                                 opts.get("accel"))
        machine.check_host()
        cfg.mode = self.mode
        return limits, vmopts

    def prepare(self, tmp, cfg, prepared):
        from ..vm import machine
        cfg.vm = machine.create(self.store, tmp, cfg.image, prepared)

    def prepare_start(self, name, cdir, cfg, tty=False):
        from ..cgroups.limits import Limits
        from ..vm import machine
        icfg = base.image_config_strict(self.store, cfg.image)
        accel, note = machine.prepare_start(self.store, cdir, cfg.to_dict(), icfg)
        mgr = base.manager(cfg)
        mgr.create(device_rules=None)
        try:
            lim = dict(cfg.limits or {})
            if lim.get("memory") in (None, -1):
                lim["memory"] = machine.memory_limit(cfg.vm, accel)
            mgr.apply(Limits.from_dict(lim), skip=cfg.limits_skip)
        except BaseException:
            mgr.discard()
            raise
        if note:
            self.warn(f"VM '{name}': {note}")
        return mgr, {}

    def ready(self, name, cdir, sid):
        """Wait until the guest agent answers; a VM that never does is killed, and the
        error carries the console's last lines."""
        from ..state import status
        from ..vm import machine
        try:
            machine.wait_ready(cdir, lambda: status(cdir)[0] == State.RUNNING)
        except CtrunError as e:
            live = status(cdir)[2]
            if live:
                base.kill_and_wait(cfgmod.load(cdir), live)
            base.await_exit_record(cdir, sid)
            raise ContainerFailed(f"VM '{name}' did not become ready: {e}") from None

    def launch(self, req, cdir, cfg, out_w, err_w, console=None, on_pid=None):
        from .. import cgroups
        from ..state import Store
        from ..vm import machine
        procs = cgroups.manager(req.get("cgroup_name") or req["name"],
                                parent=req.get("cgroup_parent", "ctrun"))
        pid, pid_start = machine.launch(Store(req["root"]), req["name"], cdir, cfg.to_dict(),
                                        procs.procs_files(), out_w, err_w)
        return pid, pid_start, None

    def signal(self, cdir, live, signum):
        if signum == signal.SIGKILL:  # ends QEMU itself
            return super().signal(cdir, live, signum)
        from ..vm import machine  # to the guest's init
        return machine.signal_guest(cdir, signum)

    def stop(self, name, cdir, cfg, live, timeout):
        from ..vm import machine
        icfg = base.image_config(self.store, cfg.image)
        sig = cfgmod.parse_signal(cfg.stop_signal or icfg.get("stop_signal") or "SIGTERM")
        fd = base.signal_pid(live, 0)
        if fd is not None:
            try:
                machine.stop(cdir, fd, sig, timeout)
            finally:
                os.close(fd)

    def exec(self, cdir, cfg, live, argv, tty=False, interactive=False, env=(), workdir=None,
             user=None, to_monitor=None):
        # to_monitor: a guest's sysinfo is its own kernel's, nothing to hand over
        from ..vm import machine
        icfg = base.image_config_strict(self.store, cfg.image)
        return machine.exec(cdir, cfg.to_dict(), icfg, argv, env=env, cwd=workdir, user=user,
                            tty=tty, stdin=interactive or tty)

    def guest_stats(self, cdir):
        from ..vm import machine  # the guest's view next to QEMU's host cost
        return machine.stats(cdir)

    def set_limits(self, name, cdir, cfg, new, running):
        if new.memory is not None:
            from ..vm import machine  # guest RAM: the balloon, not the QEMU cgroup
            if not running:
                raise Conflict(f"VM '{name}' is not running; its boot memory is fixed: "
                               "recreate it with another --memory")
            machine.balloon(cdir, cfg.vm, new.memory)
            new.memory = None
        return new

    def check_edit(self, name, changes):
        if any(changes.values()):
            raise InvalidInput(f"'{name}' is a VM (--vm): only --onboot and limits can be "
                               "set on it; change the guest from inside (ctrun exec)")

    def check_template(self, name):
        raise InvalidInput(f"'{name}' is a VM: its changes live in a disk image, not in "
                           "files a template can take; use a container")

    def describe(self, cdir, cfg, pid):
        from ..vm import machine
        vm = machine.describe(cdir, cfg.to_dict(), pid is not None)
        return {"accel": vm.pop("accel")}, dict(vm, qemu_pid=pid, rootfs=None, upper=None)
