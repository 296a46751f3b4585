"""The verbs of a VM (create, start, exec, signal, stop, stats, balloon): what the VM backend
(ctrun.backends.vm) calls.

A VM is a container record like any other (config.json, state, exit record, cgroup, IP
lease, logs); only the process differs: QEMU runs where a container's init would, in the
container's cgroup, supervised and reaped by the same monitor, its serial console pumped
into the same log.  Files of its own live in the container directory's vm/: the disk
overlay, the initramfs of the current start, QMP's and the agent's sockets.
"""

import os
import signal

from ..errors import ContainerFailed, CtrunError, HostUnsupported, InvalidInput
from ..state import read_json, write_json

MIN_MEMORY = 128 << 20       # the cloud kernel with the initramfs unpacked needs ~100 MiB
DEFAULT_MEMORY = 256 << 20
BOOT_TIMEOUT = 90.0           # seconds; $CTRUN_VM_BOOT_TIMEOUT overrides it


def boot_timeout():
    """Read at each boot, not at import: a warm server's worker takes its caller's
    environment after the import (ctrun.server)."""
    return float(os.environ.get("CTRUN_VM_BOOT_TIMEOUT") or BOOT_TIMEOUT)


def options(memory=None, cpus=None, accel="auto"):
    """Validated VM settings from the CLI's --memory/--cpus/--accel (before anything is made)."""
    from . import accel as accelmod
    from ..cgroups.limits import parse_size
    mem = parse_size(memory, "--memory") if memory else DEFAULT_MEMORY
    if mem < MIN_MEMORY:
        raise InvalidInput(f"--memory {memory} is below what a VM guest needs; give at least "
                           f"{MIN_MEMORY >> 20}M")
    try:
        n = int(cpus) if cpus is not None else 1
    except ValueError:
        n = 0
    if n < 1 or n > 255:
        raise InvalidInput(f"--cpus {cpus} for a VM is a vCPU count: a whole number from 1 "
                           "to 255")
    return {"memory": mem, "cpus": n, "accel": accelmod.check(accel or "auto")}


def check_host():
    """Fail before anything is written when the host cannot run VMs at all."""
    from . import kernel, qemu
    qemu.binary()
    kernel.find()
    if not os.path.exists("/dev/net/tun"):
        raise HostUnsupported("VMs on a bridge need /dev/net/tun; run: modprobe tun")


def create(store, tmp, image, vm):
    """Make the VM's disk (the image's shared ext4 disk, and its own overlay on it)."""
    from . import disk
    base = disk.base(store, image)
    (tmp / "vm").mkdir(mode=0o700)
    disk.overlay(base, tmp / "vm" / "disk.qcow2")
    return {**vm, "base_disk": str(base)}


def guest_argv(conf, icfg):
    return list(conf.get("cmd") or []) or list(icfg.get("cmd") or ["/sbin/init"])


def prepare_start(store, cdir, conf, icfg, argv=None):
    """Everything QEMU needs, decided in the CLI (so errors reach the user): the
    accelerator, the kernel, this start's initramfs; written to vm/launch.json for the
    monitor's launcher.  Returns a notice when KVM was asked for implicitly but unusable.
    argv: the guest's init instead of the image's ([]: none, the agent alone serves)."""
    from . import accel as accelmod, agent, initramfs, kernel, qemu
    from ..network import container as netc
    vm = conf["vm"]
    k = kernel.find()
    accel, note = accelmod.choose(vm["accel"], k)
    vmdir = cdir / "vm"
    net = conf.get("net") or {}
    bridged = netc.bridged(net)
    # a fresh agent key per start: only a client that read it from vm/ (root) is obeyed
    initrd = initramfs.for_vm(k, vmdir / "initrd.img", {
        "name": conf["name"], "hostname": conf.get("hostname"),
        "argv": guest_argv(conf, icfg) if argv is None else argv,
        "readonly": conf.get("readonly"), "binds": conf.get("binds"),
        "sysctl": conf.get("sysctl"), "resolv": netc.resolv_text(net) if bridged else ""},
        net if bridged else None, key=agent.new_key(vmdir))
    channel = {"kind": qemu.agent_channel()}
    if channel["kind"] == "vsock":  # a context id no other VM on this host is likely to hold
        channel["cid"] = 3 + int.from_bytes(os.urandom(4), "little") % (0xFFFFFFF0 - 3)
    argv = qemu.argv(accel, kernel.vmlinux(k), initrd, vm["memory"] >> 20, vm["cpus"],
                     disk="disk.qcow2", tap_fd=-1 if bridged else None, mac=net.get("mac"),
                     vsock_cid=channel.get("cid"))
    write_json(vmdir / "launch.json", {"argv": argv, "accel": accel, "note": note,
                                       "tap": net.get("veth") if bridged else None,
                                       "kernel": k.release, "channel": channel}, durable=False)
    for p in vmdir.glob("*.sock"):  # QEMU refuses to bind over a dead VM's sockets
        p.unlink()
    return accel, note


def memory_limit(vm, accel):
    """The QEMU cgroup's memory limit: guest RAM plus QEMU's own overhead."""
    from . import qemu
    return vm["memory"] + qemu.OVERHEAD[accel]


def launch(store, name, cdir, conf, procs_files, out_w, err_w, parent_death=False,
           plumb=None):
    """In the monitor's launcher: start QEMU in the VM's cgroup; returns (pid, start time).
    parent_death: QEMU is killed when its parent (a process standing for the VM) dies.
    plumb(tap): connects the tap instead of ctrun's bridge (netc.up)."""
    from ..network import container as netc
    from ..state import proc_start_time
    vmdir = cdir / "vm"
    spec = read_json(vmdir / "launch.json")
    argv = list(spec["argv"])
    tap_fd = None
    if spec.get("tap"):
        from ..network import link
        tap_fd = link.open_tap(spec["tap"])
        os.set_inheritable(tap_fd, True)
        argv = [a.replace("fd=-1", f"fd={tap_fd}") for a in argv]
    errr, errw = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(errr)
            for f in procs_files:  # join the cgroup before exec: QEMU is born limited
                with open(f, "w") as fh:
                    fh.write("0")
            os.chdir(vmdir)
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.setsid()
            if parent_death:
                import prctl
                prctl.set_pdeathsig(signal.SIGKILL)
                if os.getppid() != parent:  # it died before the line above
                    os._exit(1)
            import shutil
            path = shutil.which(argv[0])
            drop_capabilities()
            os.execv(path, argv)
        except BaseException as e:  # noqa: BLE001
            os.write(errw, f"cannot start QEMU: {e}".encode())
        os._exit(127)
    os.close(errw)
    with os.fdopen(errr, "rb") as f:
        failed = f.read()
    if tap_fd is not None:
        os.close(tap_fd)  # QEMU holds it now
    if failed:
        os.waitpid(pid, 0)
        raise ContainerFailed(failed.decode())
    if spec.get("tap"):
        try:
            if plumb is not None:
                plumb(spec["tap"])
            else:
                netc.up(store, name, conf["net"], pid, tap=spec["tap"])
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
    return pid, proc_start_time(pid)


def drop_capabilities():
    """QEMU runs as root but with no capability at all (nor a way back to one): every file
    it opens (disks, kernel, /dev/kvm, /dev/vhost-*) is root's own, its sockets are made in
    root's directory, the tap arrives as an open fd and its cgroup is joined before exec.
    An empty bounding set and inheritable set leave root nothing to gain at exec; lowering
    the inheritable set clears the ambient set too (a capability is ambient only while it
    is permitted and inheritable)."""
    import prctl
    from .. import libc
    for cap in range(libc.cap_last_cap() + 1):
        libc.capbset_drop(cap)
    prctl.cap_inheritable.limit()
    prctl.set_no_new_privs(1)


def wait_ready(cdir, alive):
    from . import agent
    return agent.wait_ready(cdir / "vm", alive, boot_timeout(), cdir / "logs" / "console.log")


def _wait_gone(fd, timeout):
    import select
    return bool(select.select([fd], [], [], max(0.0, timeout))[0])


def stop(cdir, pidfd, stop_signal, timeout):
    """Orderly: a power-off request to the guest's init through the agent (systemd's own
    power-off signal when PID 1 is systemd, a runlevel-0 request to sysvinit, else the
    image's stop signal); then ACPI power-down through QMP; then QMP quit; SIGKILL as the
    last resort.  An init that took the power-off request gets the whole timeout: ACPI adds nothing to a shutdown
    under way (and needs udev and logind in the guest to be heard at all), while a quit
    cuts it off."""
    from . import agent
    left = max(0.0, timeout)
    try:
        with agent.Agent(cdir / "vm", timeout=2) as a:
            powering_off = a.signal_init(stop_signal, poweroff=True)
        wait = left if powering_off else left / 2
        if _wait_gone(pidfd, wait):
            return "agent"
        left -= wait
    except CtrunError:
        pass
    try:
        from .qemu import QMP
        if left > 0:
            with QMP(cdir / "vm") as q:
                q.cmd("system_powerdown")
            if _wait_gone(pidfd, left):
                return "acpi"
        with QMP(cdir / "vm") as q:
            q.cmd("quit")
        if _wait_gone(pidfd, 5):
            return "quit"
    except Exception:  # noqa: BLE001 - QMP gone or QEMU wedged: kill it below
        pass
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _wait_gone(pidfd, 10)
    return "kill"


def signal_guest(cdir, sig):
    from . import agent
    with agent.Agent(cdir / "vm", timeout=5) as a:
        a.signal_init(sig)


def exec(cdir, conf, icfg, argv, env=(), cwd=None, user=None, tty=False, stdin=False,
         out=None, err=None):
    from . import agent
    from ..spec import _merge_env
    uid, gid = _guest_user(user or conf.get("user") or icfg.get("user") or "0:0")
    environment = _merge_env(icfg.get("env", []), list(conf.get("env") or []) + list(env))
    with agent.Agent(cdir / "vm", timeout=10) as a:
        return a.exec(argv, env=environment, cwd=cwd or conf.get("workdir") or
                      icfg.get("workdir") or "/", user=f"{uid}:{gid}", tty=tty, stdin=stdin,
                      out=out, err=err)


def _guest_user(user):
    uid, _, gid = user.partition(":")  # numeric: checked by config.parse_user
    return int(uid), int(gid or uid)


def stats(cdir):
    """The guest's own view, through the agent: memory and CPU as its kernel counts them."""
    from . import agent
    with agent.Agent(cdir / "vm", timeout=5) as a:
        g = a.stats()
    hz = g.get("clock_ticks") or 100
    return {"mem_total": g["mem_total_kb"] * 1024, "mem_available": g["mem_available_kb"] * 1024,
            "mem_used": (g["mem_total_kb"] - g["mem_available_kb"]) * 1024,
            "cpu_user_usec": g["cpu_user_ticks"] * 1_000_000 // hz,
            "cpu_system_usec": g["cpu_system_ticks"] * 1_000_000 // hz,
            "uptime": g["uptime"], "processes": g["processes"], "cpus": g["online_cpus"]}


def balloon(cdir, vm, target):
    """Guest RAM through the virtio balloon (down to MIN_MEMORY, up to its boot size)."""
    from .qemu import QMP
    if target > vm["memory"]:
        raise InvalidInput(f"a VM's memory can grow only up to its boot size "
                           f"({vm['memory'] >> 20}M); recreate it with a larger --memory")
    if target < MIN_MEMORY:
        raise InvalidInput(f"--memory for a VM must stay at least {MIN_MEMORY >> 20}M")
    with QMP(cdir / "vm") as q:
        q.cmd("balloon", value=int(target))


def describe(cdir, conf, running):
    from . import agent
    vm = conf.get("vm") or {}
    launch_ = read_json(cdir / "vm" / "launch.json") or {}
    return {"accel": launch_.get("accel"),
            "vm": {"memory": vm.get("memory"), "cpus": vm.get("cpus"),
                   "accel_requested": vm.get("accel"), "kernel": launch_.get("kernel"),
                   "disk": str(cdir / "vm" / "disk.qcow2"), "base_disk": vm.get("base_disk")},
            "tap": launch_.get("tap") if running else None,
            "console_log": str(cdir / "logs" / "console.log"),
            "agent_channel": (f"vsock:{launch_['channel']['cid']}:{agent.VSOCK_PORT}"
                              if (launch_.get("channel") or {}).get("kind") == "vsock"
                              else str(cdir / "vm" / "agent0.sock"))}
