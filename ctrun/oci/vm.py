"""ctrun-oci's VM mode: a bundle whose config.json annotations say `ctrun.mode: vm` runs as
a QEMU guest of ctrun's VM machinery (ctrun.vm) instead of in namespaces, so a Kubernetes
RuntimeClass can ask for a kernel of the workload's own.

The client (containerd's shim, conmon) waits on the pid `create` reports and takes its exit
status as the container's, so that pid is the "VM init": a ctrun-oci process, forked twice
by `create` (so it is reparented to the client, its subreaper), in the container's cgroup.
It starts QEMU as its child (killed with it), waits until the guest agent answers (the boot
happens in `create`), then blocks on the exec fifo as a container's init does.  Once
`start` takes the fifo's byte it runs config.json's process in the guest through the agent
with the guest's stdout and stderr relayed to its own (the client's pipes), sends on every
signal it gets (`kill`), powers the guest off and exits with the workload's code.  `exec`
is a host process of the same kind for one guest command.

The guest's disk is an ext4 copy of the bundle's rootfs in the container's state dir (the
guest's writes stay there: the rootfs is not changed); bind mounts are copies taken at
create, carried in the initramfs; linux.sysctl is set by the guest's init.  A network
namespace joined by path (a CNI plugin's, netavark's) lends the guest its interface: the
guest takes its address, MAC and gateway, and a tap in that namespace carries the traffic
(tc mirred both ways); no such path, no network.  With process.terminal the VM init's stdio is a pty (its
master sent to the console socket) and the guest process gets a pty of its own.  What a VM
cannot do is refused by field; the container-level confinement of config.json
(capabilities, rlimits, seccomp, noNewPrivileges, masked and read-only paths, the device
cgroup's rules) is not applied inside the guest, whose kernel is the boundary, while QEMU
runs with no capability under its own seccomp sandbox in the container's cgroup, whose
memory limit is the guest's RAM plus QEMU's overhead.
"""

import contextlib
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

from .. import errors
from ..errors import InvalidInput, quote
from .bundle import MODE_KEY as KEY

# kernel file systems the guest's init mounts itself, where a runc container has them
GUEST_MOUNTS = {"/proc": "proc", "/sys": "sysfs", "/dev": "tmpfs", "/dev/pts": "devpts",
                "/dev/shm": "tmpfs", "/dev/mqueue": "mqueue", "/sys/fs/cgroup": "cgroup"}
BINDS_MAX = 16 << 20   # bytes of bind-mounted files copied into the guest's initramfs
CONSOLE_MAX = 1 << 20  # bytes of the guest's serial console kept in vm/console.log
# signals the VM init cannot pass on (or that are its own business)
NOT_RELAYED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGPIPE,
               signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP,
               signal.SIGSYS, signal.SIGWINCH}  # a resize reaches a guest pty as one
DEFAULT_UMASK = 0o022
SYSCTL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_vm(ct):
    return ct.rec.get("mode") == "vm"


def available():
    """Whether this host can boot ctrun's VMs at all (QEMU and a guest kernel)."""
    from ..vm import kernel, qemu
    try:
        qemu.binary()
        kernel.find()
    except errors.CtrunError:
        return False
    return True


# ---------------------------------------------------------------------- config.json
def _refuse(cond, field, why):
    if cond:
        raise InvalidInput(f"config.json {field} {why} in VM mode ({KEY}=vm); remove it or "
                           "run the bundle as a container")


def check(conf):
    """Refuse, by field, what a guest cannot honour; the bind mounts (binds_of)."""
    proc, linux = conf["process"], conf["linux"]
    umask = (proc.get("user") or {}).get("umask")
    _refuse(umask not in (None, DEFAULT_UMASK), "process.user.umask",
            f"other than {DEFAULT_UMASK:04o} is not supported")
    for i, ns in enumerate(linux.get("namespaces") or []):
        _refuse(ns.get("path") and ns.get("type") != "network",
                f"linux.namespaces[{i}] ({ns.get('type')}) path",
                "cannot be joined by a guest kernel (a network namespace can)")
    for k in ("uidMappings", "gidMappings", "devices", "intelRdt", "personality"):
        _refuse(linux.get(k), f"linux.{k}", "is not supported")
    for k, v in (linux.get("sysctl") or {}).items():  # set by the guest's init
        _refuse(not SYSCTL.fullmatch(str(k)) or ".." in k or "\n" in str(v),
                f"linux.sysctl {quote(k)}", "is not a sysctl name and one-line value")
    for phase in ("createContainer", "startContainer"):
        _refuse((conf.get("hooks") or {}).get(phase), f"hooks.{phase}",
                "cannot run inside a guest")
    return binds_of(conf.get("mounts") or [])


def binds_of(mounts):
    """[(source, destination, read-only)] of the bind mounts: copies of their files go to
    the guest in its initramfs (a snapshot taken at create, as small as BINDS_MAX), and are
    bind-mounted there.  Kernel file systems are the guest's own, where it has them."""
    binds, total = [], 0
    for i, m in enumerate(mounts):
        dest = os.path.normpath(m["destination"])
        opts = m.get("options") or []
        field = f"mounts[{i}] ({quote(m['destination'])}, type {quote(m.get('type'))})"
        kind = {"cgroup2": "cgroup"}.get(m.get("type"), m.get("type"))
        if dest in GUEST_MOUNTS and (kind == GUEST_MOUNTS[dest] or kind == "bind"):
            continue  # the guest's own /dev/shm stands for a bind of the host's
        _refuse(kind != "bind" and "bind" not in opts and "rbind" not in opts, field,
                "is not supported (the guest mounts its own /proc, /sys, /dev, /dev/pts, "
                "/dev/shm, /dev/mqueue and /sys/fs/cgroup; other mounts must be binds)")
        _refuse("\n" in dest, field, "has a newline in its destination")
        src = m.get("source") or ""
        _refuse(not os.path.isfile(src) and not os.path.isdir(src), field + " source",
                "must be a regular file or a directory")
        from ..images import layers
        total += layers.du(src) if os.path.isdir(src) else os.path.getsize(src)
        _refuse(total > BINDS_MAX, field, f"passes the {BINDS_MAX >> 20} MiB that binds may "
                "copy into a guest (a shared directory is not implemented yet)")
        binds.append((src, dest, "ro" in opts))
    return binds


def machine_of(conf):
    """The guest's memory and vCPUs: linux.resources' memory limit and CPU quota, else
    ctrun's VM defaults."""
    from ..vm import machine
    res = conf["linux"].get("resources") or {}
    mem = (res.get("memory") or {}).get("limit")
    memory = machine.DEFAULT_MEMORY if mem in (None, -1) or int(mem) <= 0 else int(mem)
    if memory < machine.MIN_MEMORY:
        raise InvalidInput(f"config.json linux.resources.memory.limit {mem} is below what a "
                           f"VM guest needs; give at least {machine.MIN_MEMORY >> 20} MiB")
    cpu = res.get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period") or 100000
    cpus = max(1, math.ceil(int(quota) / int(period))) if quota and int(quota) > 0 else 1
    return {"memory": memory & ~((1 << 20) - 1), "cpus": min(cpus, 255), "accel": "auto"}


TAP = "ctrun-tap0"


def guest_net(netns):
    """The network of a joined namespace, for the guest: the address, MAC and gateway of
    the interface of its default route, which the guest takes over (a tap next to it
    carries its traffic both ways, tc mirred: see _mirror); {} when it has no default
    route (the guest has only its loopback)."""
    import json
    import subprocess

    def ip(*args):
        r = subprocess.run(["nsenter", f"--net={netns}", "ip", "-j", *args],
                           capture_output=True, text=True)
        if r.returncode:
            raise InvalidInput(f"config.json linux.namespaces network path {quote(netns)}: "
                               f"cannot read it ({r.stderr.strip() or 'ip failed'})")
        return json.loads(r.stdout or "[]")
    route = next((r for r in ip("-4", "route", "show", "default") if r.get("gateway")), None)
    if not route:
        return {}
    dev = route["dev"]
    link = (ip("addr", "show", "dev", dev) or [{}])[0]
    addr = next((a for a in link.get("addr_info") or [] if a.get("family") == "inet"), None)
    if not addr or not link.get("address"):
        return {}
    return {"network": "oci-netns", "ip": addr["local"], "prefix": addr["prefixlen"],
            "gateway": route["gateway"], "mac": link["address"], "veth": TAP, "dev": dev,
            "mtu": link.get("mtu")}


def _enter_netns(path):
    from .. import libc
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd, libc.CLONE_NEWNET)  # the tap is made, and plumbed, there
    finally:
        os.close(fd)


def _mirror(dev, tap, mtu=None):
    """The tap's frames leave by dev and dev's arrive at the tap (in our network namespace):
    the guest, with dev's address and MAC, stands where dev's owner would."""
    import subprocess
    cmds = [["ip", "link", "set", tap, "up"] + (["mtu", str(mtu)] if mtu else [])]
    for a, b in ((dev, tap), (tap, dev)):
        cmds += [["tc", "qdisc", "add", "dev", a, "ingress"],
                 ["tc", "filter", "add", "dev", a, "parent", "ffff:", "protocol", "all", "u32",
                  "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", b]]
    for c in cmds:
        r = subprocess.run(c, capture_output=True, text=True)
        if r.returncode:
            if c[:3] != ["tc", "qdisc", "add"] or c[4] != dev:
                _unmirror(dev)  # ours: taken back (the tap goes with QEMU)
            raise errors.ContainerFailed(f"cannot connect the VM to {dev} ({' '.join(c)}: "
                                         f"{r.stderr.strip()}); is another VM in this "
                                         "network namespace?")


def _unmirror(dev):
    import subprocess
    subprocess.run(["tc", "qdisc", "del", "dev", dev, "ingress"], capture_output=True)


def _host_limits(fields, memory_limit):
    """The cgroup's limits: QEMU holds the guest's RAM plus its own overhead."""
    out = {k: v for k, v in fields.items() if k not in ("memory", "memory_reservation")}
    out["memory"] = memory_limit
    if "memory_swap" in out:
        out["memory_swap"] = max(int(out["memory_swap"]), memory_limit)
    return out


def _user(proc):
    u = proc.get("user") or {}
    groups = ",".join(str(int(g)) for g in u.get("additionalGids") or [])
    return f"{int(u.get('uid', 0))}:{int(u.get('gid', 0))}" + (f":{groups}" if groups else "")


# ---------------------------------------------------------------------- create
def create(rt, cid, bdir, conf, pid_file=None, console_socket=None, keep_master=False):
    """`ctrun-oci create` of a VM bundle: disk, cgroup, QEMU booted to the agent, the VM init
    waiting on the exec fifo.  With process.terminal the VM init's stdio is a pty whose
    master goes to the console socket (or is returned, with keep_master)."""
    from .. import cgroups
    from ..cgroups.limits import Limits
    from ..vm import disk, kernel, machine, qemu
    from . import bundle as bundlemod, hooks as hookmod, store
    from .store import atomic_write as _atomic_write, now as _now, rmtree as _rmtree
    from .store import self_start as _self_start
    store.check_id(cid)
    binds = check(conf)
    vm = machine_of(conf)
    netns = next((ns["path"] for ns in conf["linux"].get("namespaces") or []
                  if ns.get("type") == "network" and ns.get("path")), None)
    net = guest_net(netns) if netns else {}
    fields, _rules, unified = bundlemod.limits_of(conf["linux"].get("resources"))
    _refuse(unified, "linux.resources.unified", "is not supported")
    hooks = conf.get("hooks") or {}
    hookmod.validate(hooks)
    rootfs = bundlemod.rootfs_path(bdir, conf["root"]["path"])
    proc = bundlemod.process_for(conf["process"])
    qemu.binary()
    kernel.find()
    parent, name = bundlemod.cgroup_of(conf, cid, rt.systemd_cgroup)
    mgr = cgroups.manager(name, parent=parent)

    lock = rt.root.lock(cid)
    d = pid = master = slave = None
    made = False
    try:
        master, slave = _pty(proc, console_socket, keep_master)
        d = rt.root.make(cid)
        ct = store.Container(d, {
            "id": cid, "pid": 0, "pid_start": None, "bundle": bdir, "rootfs": rootfs,
            "created": _now(), "annotations": dict(conf.get("annotations") or {}),
            "cgroup": [parent, name], "hooks": hooks, "creating": True, "mode": "vm",
            "vm": vm, "netns": netns, "net": net,
            "creator": os.getpid(), "creator_start": _self_start(),
            "process": {k: proc.get(k) for k in ("args", "env", "cwd", "user", "terminal")}})
        ct.save()
        # what exec's flags start from, as for a container
        store.write_json(ct.path("spec.json"), {"process": proc})
        vmdir = Path(d) / "vm"
        vmdir.mkdir(mode=0o700)
        # the rootfs's own ext4 copy, and the qcow2 QEMU writes through (a private pair)
        disk.overlay(disk.from_tree(rootfs, vmdir / "root.ext4"), vmdir / "disk.qcow2")
        accel, note = machine.prepare_start(None, Path(d), {
            "name": cid, "hostname": conf.get("hostname") or cid, "vm": vm, "net": net,
            "readonly": bool(conf["root"].get("readonly")), "binds": binds,
            "sysctl": conf["linux"].get("sysctl")}, {}, argv=[])
        if note:
            rt.warn(f"VM {cid}: {note}")
        mgr.create(device_rules=None)
        made = True
        mgr.apply(Limits.from_dict(_host_limits(fields, machine.memory_limit(vm, accel))))
        os.mkfifo(ct.path("exec.fifo"), 0o600)
        pid = _spawn(lambda w: _vm_init(ct, w), mgr.procs_files(), machine.BOOT_TIMEOUT + 30,
                     slave)
        _close(slave)
        slave = None
        if master is not None and not keep_master:
            master = _hand_over(master, console_socket)
        ct.rec.update(pid=pid, pid_start=_start_time(pid))
        del ct.rec["creating"]
        rt._hooks(ct, "prestart", "created")
        rt._hooks(ct, "createRuntime", "created")
        ct.save()
        if pid_file:
            _atomic_write(os.path.abspath(pid_file), str(pid))
    except BaseException:
        _close(master)
        _close(slave)
        if pid:
            _kill(pid)
        if made:
            with contextlib.suppress(errors.CtrunError, OSError):
                mgr.discard()
        if d is not None:
            _rmtree(d)
        rt.root.unlock(cid, lock, remove=True)
        raise
    rt.root.unlock(cid, lock)
    return master


def _close(fd):
    if fd is not None:
        os.close(fd)


def _pty(proc, console_socket, keep_master=False):
    """(master, slave) of the process's terminal, sized as config.json asks, or Nones."""
    if not (proc.get("terminal") and (console_socket or keep_master)):
        return None, None
    from . import console
    master, slave = os.openpty()
    os.set_inheritable(slave, False)
    size = proc.get("consoleSize")
    if size:
        console.set_size(master, size.get("height", 0), size.get("width", 0))
    return master, slave


def _hand_over(master, console_socket):
    """The master to the client's console socket, and closed here; None."""
    from . import console
    try:
        console.send_master(console_socket, master)
    finally:
        os.close(master)


def _start_time(pid):
    from ..state import proc_start_time
    return proc_start_time(pid)


def _kill(pid):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _spawn(main, procs_files, timeout, tty=None):
    """Fork main(report) twice, in the container's cgroup, so it is reparented to our
    caller's subreaper; wait for its report: "ok" (returns its pid) or an error message.
    tty: a pty slave that becomes its stdio and controlling terminal."""
    r, w = os.pipe2(os.O_CLOEXEC)
    mid = os.fork()
    if mid == 0:
        code = 1
        try:
            os.close(r)
            for p in procs_files:  # born in the cgroup: QEMU inherits it
                with open(p, "w") as f:
                    f.write("0")
            pid = os.fork()
            if pid == 0:
                try:
                    _detach(w, tty)
                    main(w)
                finally:
                    os._exit(1)
            os.write(w, f"pid {pid}\n".encode())
            code = 0
        except BaseException as e:  # noqa: BLE001
            with contextlib.suppress(OSError):
                os.write(w, f"error {errors.one_line(str(e))}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(mid, 0)
    pid, ok, buf = None, False, b""
    deadline = time.monotonic() + timeout
    import select
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise errors.ContainerFailed(f"the VM did not become ready in {timeout:.0f} s")
            data = os.read(r, 4096)
            buf += data
            lines = buf.split(b"\n")
            for line in lines[:-1]:
                word, _, rest = line.decode(errors="replace").partition(" ")
                if word == "error":
                    raise errors.ContainerFailed(rest)
                pid = int(rest) if word == "pid" else pid
                ok = ok or word == "ok"
                if pid and ok:
                    return pid
            buf = lines[-1]
            if not data:
                raise errors.ContainerFailed("the VM's host process exited during set-up")
    except BaseException:
        if pid:
            _kill(pid)
        raise
    finally:
        os.close(r)


def _detach(keep, tty=None):
    """The VM init's own session, and no descriptor of the caller's beyond stdio and the
    report pipe (the state root's lock among them)."""
    os.setsid()
    if tty is not None:
        import fcntl
        import termios
        fcntl.ioctl(tty, termios.TIOCSCTTY, 0)  # a resize signals us: SIGWINCH
        for fd in (0, 1, 2):
            os.dup2(tty, fd)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _report(w, text):
    with contextlib.suppress(OSError):
        os.write(w, (text.replace("\n", " ") + "\n").encode())


def _vm_init(ct, w):
    """The VM init (see the module's docstring); never returns."""
    try:
        q = _boot(ct, w)
    except BaseException as e:  # noqa: BLE001 - told to create, which cleans up
        _report(w, "error " + (errors.one_line(str(e)) or type(e).__name__))
        os._exit(1)
    try:
        code = _run(ct, q)
    except BaseException as e:  # noqa: BLE001 - the client's log shows our stderr
        with contextlib.suppress(OSError):
            os.write(2, f"ctrun-oci: VM {ct.id}: {errors.one_line(str(e))}\n".encode())
        code = 255
    os._exit(code)


class _Qemu:
    """QEMU, the VM init's child: started, watched, ended."""

    def __init__(self, ct):
        from ..vm import machine
        self.vmdir = Path(ct.dir) / "vm"
        net = ct.rec.get("net") or {}
        self.mirrored = None
        if ct.rec.get("netns"):
            _enter_netns(ct.rec["netns"])

        def plumb(tap):
            _mirror(net["dev"], tap, net.get("mtu"))
            self.mirrored = net["dev"]
        cr, cw = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid, _ = machine.launch(None, ct.id, Path(ct.dir), {}, [], cw, cw,
                                         parent_death=True, plumb=plumb)
        finally:
            os.close(cw)
        self.status = None
        threading.Thread(target=_drain, args=(cr, self.vmdir / "console.log"),
                         daemon=True).start()

    def alive(self):
        if self.status is None:
            p, st = os.waitpid(self.pid, os.WNOHANG)
            if p:
                self.status = st
        return self.status is None

    def end(self, timeout=10.0):
        """Wait for the powered-off guest's QEMU to exit; kill it after timeout."""
        end = time.monotonic() + timeout
        while self.alive() and time.monotonic() < end:
            time.sleep(0.05)
        if self.alive():
            _kill(self.pid)
            os.waitpid(self.pid, 0)
        if self.mirrored:  # the namespace's interface is its owner's again
            _unmirror(self.mirrored)
            self.mirrored = None


def _drain(fd, path):
    """The serial console into a bounded log (a guest may write to it without end)."""
    kept = 0
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600),
              "wb", buffering=0) as log:
        while data := os.read(fd, 65536):
            if kept < CONSOLE_MAX:
                log.write(data[:CONSOLE_MAX - kept])
                kept += len(data)


def _console_tail(vmdir):
    try:
        lines = (vmdir / "console.log").read_bytes().decode(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [ln.strip() for ln in lines if ln.strip()][-3:]
    return "; console: " + " | ".join(lines) if lines else ""


_QEMU = []


def _boot(ct, w):
    from ..vm import agent, machine
    q = _Qemu(ct)
    _QEMU.append(q)
    try:
        agent.wait_ready(q.vmdir, q.alive, machine.BOOT_TIMEOUT)
    except errors.CtrunError as e:
        q.end(0)
        raise errors.ContainerFailed(f"the VM did not boot: {e}{_console_tail(q.vmdir)}")
    fd = os.open(q.vmdir / "qemu.pid", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:  # for kill --all, which spares QEMU
        f.write(f"{q.pid} {_start_time(q.pid)}")
    _report(w, "ok")
    os.close(w)
    return q


def _run(ct, q):
    """Wait for `start`, run the process in the guest, power it off; the exit code."""
    fd = os.open(ct.path("exec.fifo"), os.O_WRONLY | os.O_CLOEXEC)  # blocks until start
    try:
        with _relayed_signals() as sigs:  # from the moment start returns
            os.write(fd, b"0")
            os.close(fd)
            fd = None
            return _guest_exec(q.vmdir, ct.rec["process"], sigs, init=True)
    finally:
        if fd is not None:
            os.close(fd)
        _poweroff(q.vmdir)
        q.end()


def _poweroff(vmdir):
    from ..vm import agent
    with contextlib.suppress(errors.CtrunError, OSError):
        with agent.Agent(vmdir, timeout=5) as a:
            a.poweroff()


@contextlib.contextmanager
def _relayed_signals():
    """Every signal we can catch, caught: its number lands in the pipe yielded (for the
    agent's relay, which sends it on to the guest process)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = {}
    for s in range(1, signal.SIGRTMAX + 1):
        if s not in NOT_RELAYED:
            with contextlib.suppress(OSError, ValueError):
                old[s] = signal.signal(s, lambda *_: None)
    prev = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield r
    finally:
        signal.set_wakeup_fd(prev)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(r)
        os.close(w)


def _guest_exec(vmdir, proc, signals, agent_=None, init=False):
    """proc (args, env, cwd, user, terminal) in the guest with our stdio (a terminal: in raw
    mode, its size followed), the signals read from the pipe `signals` sent on to it; its
    exit code."""
    from ..vm import agent
    with agent_ or agent.Agent(vmdir, timeout=10) as a:
        return a.exec(proc["args"], env=proc["env"], cwd=proc.get("cwd") or "/",
                      user=_user(proc), tty=bool(proc.get("terminal")), stdin=_has_stdin(),
                      out=1, err=2, inp=0, signals=signals, init=init)


def _has_stdin():
    try:
        os.fstat(0)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------- exec, kill, delete
def exec(ct, proc, detach=False, pid_file=None, console_socket=None):
    """A command in the running guest.  Attached with our own stdio (a terminal too), this
    process relays it; else a relay forked twice into the container's cgroup, reparented to
    the client (to us when attached), exits with the command's code, its stdio the pty
    whose master goes to the console socket.  Returns the code, or 0 when detached."""
    from ..vm import agent
    from .. import cgroups
    from .store import atomic_write as _atomic_write
    vmdir = Path(ct.dir) / "vm"
    if not detach and not console_socket:
        with _relayed_signals() as sigs:
            return _guest_exec(vmdir, proc, sigs)
    parent, name = ct.cgroup
    procs = cgroups.manager(name, parent=parent).procs_files()

    def relay(w):
        a = agent.Agent(vmdir, timeout=10)  # a VM that does not answer fails the exec
        try:
            with _relayed_signals() as sigs:
                _report(w, "ok")
                os.close(w)
                code = _guest_exec(vmdir, proc, sigs, agent_=a)
        except BaseException as e:  # noqa: BLE001
            with contextlib.suppress(OSError):
                os.write(2, f"ctrun-oci: exec in VM {ct.id}: {errors.one_line(str(e))}\n"
                         .encode())
            code = 255
        os._exit(code)
    if not detach:
        import prctl
        prctl.set_child_subreaper(True)  # the relay is ours to wait for
    master, slave = _pty(proc, console_socket)
    try:
        pid = _spawn(relay, procs, 30, slave)
    except BaseException:
        _close(master)
        raise
    finally:
        _close(slave)
    try:
        if master is not None:
            _hand_over(master, console_socket)
    except BaseException:
        _kill(pid)
        raise
    if pid_file:
        _atomic_write(os.path.abspath(pid_file), str(pid))
    if detach:
        return 0
    from ..runtime import process
    return process.exit_code(process._wait_forwarding(pid))


def update(ct, fields):
    """`update` of a VM: a memory limit sets the guest's RAM through its balloon (up to its
    boot size); QEMU's cgroup keeps its limit.  The other fields go to the cgroup."""
    from ..vm import machine
    fields = dict(fields)
    memory = fields.pop("memory", None)
    fields.pop("memory_swap", None)
    fields.pop("memory_reservation", None)
    if memory is not None and memory > 0:
        machine.balloon(Path(ct.dir), ct.rec["vm"], memory)
    return fields


def _qemu_of(ct):
    try:
        with open(os.path.join(ct.dir, "vm", "qemu.pid")) as f:
            pid, start = f.read().split()
        return int(pid), int(start)
    except (OSError, ValueError):
        return None


def kill_all(ct, mgr, signum):
    """kill --all: every process of the container but QEMU (the VM init and the exec
    relays pass the signal on to their guest processes); SIGKILL ends QEMU too."""
    q = _qemu_of(ct)
    for pid in mgr.pids():
        if signum != signal.SIGKILL and q and q[0] == pid and _start_time(pid) == q[1]:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def end(mgr):
    """delete: QEMU dies with the VM init, but not at once; nor do the exec relays."""
    mgr.kill_all()

