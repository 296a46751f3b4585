"""The VM's initramfs: busybox, the virtio modules, the guest agent and a small init.

Debian's cloud kernel builds its virtio drivers as modules, so the init loads them (in
dependency order from modules.dep), mounts the root disk, configures the network and the
hostname, starts the agent (which chroots into the root) and hands over to the image's
init with switch_root.  The common part is built once per kernel and agent and cached; each
start appends a tiny second cpio archive with that VM's settings (the kernel unpacks
concatenated archives in order).
"""

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import HostUnsupported
from . import cache

MODULES = ("virtio_mmio", "virtio_pci", "virtio_blk", "virtio_console", "virtio_net",
           "virtio_balloon", "vmw_vsock_virtio_transport", "vsock_loopback")
# loaded when the kernel has them as modules: the image has no modules of the guest's
# kernel, so systemd could not load autofs4 itself (its binfmt_misc automount needs it)
OPTIONAL = ("autofs4",)
BUSYBOX = "/bin/busybox"
AGENT_SRC = Path(__file__).with_name("agent.c")

INIT = r"""#!/bin/busybox sh
# ctrun VM init (initramfs): settings come from /ctrun/config, appended per start.
B=/bin/busybox
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
fail() { echo "ctrun-init: $*"; $B sync; $B poweroff -f; }
for m in $($B cat /modules.order); do $B insmod /lib/modules/$m 2>/dev/null; done
. /ctrun/config
if [ -n "$CTRUN_PROBE" ]; then echo CTRUN-PROBE-OK; $B poweroff -f; fi
i=0; while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do $B usleep 10000; i=$((i+1)); done
$B mount -t ext4 -o noatime /dev/vda /newroot || fail "cannot mount the root disk /dev/vda"
for d in dev proc sys; do $B mkdir -p /newroot/$d; $B mount --move /$d /newroot/$d; done
$B mkdir -p /newroot/dev/pts /newroot/dev/shm
$B mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
$B mount -t tmpfs -o mode=1777,nosuid,nodev shm /newroot/dev/shm
# a pure cgroup v2 system, as systemd would mount it (whatever init the image has)
$B mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup
$B hostname "$CTRUN_HOSTNAME"
$B ip link set lo up
if [ -n "$CTRUN_IP" ]; then
  $B ip link set eth0 up && $B ip addr add "$CTRUN_IP" dev eth0 &&
    $B ip route add default via "$CTRUN_GATEWAY" || fail "cannot configure eth0"
fi
if [ -d /newroot/etc ]; then
  echo "$CTRUN_HOSTNAME" > /newroot/etc/hostname
  printf "$CTRUN_HOSTS" > /newroot/etc/hosts
  [ -n "$CTRUN_RESOLV" ] && printf "$CTRUN_RESOLV" > /newroot/etc/resolv.conf
fi
if [ -z "$CTRUN_CMD" ]; then  # no image init (ctrun-oci) mounts what a runc container has
  $B mkdir -p /newroot/dev/mqueue && $B mount -t mqueue -o nosuid,nodev,noexec mqueue \
    /newroot/dev/mqueue
fi
# files of the host's (ctrun-oci's bind mounts), copied in /ctrun/binds/N: "N ro|rw DEST"
$B mount -t proc proc /proc  # again (moved): for sysctls, and a remount reads /proc/mounts
echo "$CTRUN_SYSCTL" | while read -r k v; do  # ctrun-oci's linux.sysctl: "key value"
  [ -n "$k" ] || continue
  echo "$v" > "/proc/sys/$(echo "$k" | $B tr . /)" || fail "cannot set sysctl $k"
done
echo "$CTRUN_BINDS" | while read -r i mode dest; do
  [ -n "$i" ] || continue
  t="/newroot$dest" s=/ctrun/binds/$i
  if [ -d $s ]; then $B mkdir -p "$t"; else $B mkdir -p "${t%/*}" && $B touch "$t"; fi
  $B mount --bind $s "$t" || fail "cannot bind-mount $dest"
  [ "$mode" = rw ] || $B mount -o remount,bind,ro "$t" || fail "cannot make $dest read-only"
done
[ -z "$CTRUN_ROOT_RO" ] || $B mount -o remount,ro /newroot || fail "cannot make / read-only"
$B umount /proc
/ctrun-agent /newroot || fail "the guest agent did not start"
eval "set -- $CTRUN_CMD"
if [ $# = 0 ]; then
  # no init of the image's (ctrun-oci): the agent runs the workload; this shell stays
  # PID 1 and reaps what the agent's commands orphan
  echo "ctrun-init: agent only"
  $B mount -t devtmpfs dev /dev  # moved to the new root; a background job needs /dev/null
  while :; do $B sleep 3600 & wait; done
fi
case "$1" in
  /*) [ -x "/newroot$1" ] || [ -L "/newroot$1" ] || fail "the image has no init $1" ;;
esac
echo "ctrun-init: starting $1"
cd /newroot
exec $B switch_root /newroot "$@"
"""


def _agent(cc="gcc"):
    """The guest agent, compiled static once per source and cached."""
    src = AGENT_SRC.read_bytes()
    out = cache.path(f"ctrun-agent-{hashlib.sha256(src).hexdigest()[:16]}")
    if out.exists():
        return out
    if not shutil.which(cc):
        raise HostUnsupported("building the VM guest agent needs a C compiler; run: "
                              "apt-get install gcc libc6-dev")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    r = subprocess.run([cc, "-static", "-O2", "-o", str(tmp), str(AGENT_SRC)],
                       capture_output=True, text=True)
    if r.returncode:
        raise HostUnsupported("cannot build the VM guest agent (static glibc missing?); run: "
                              "apt-get install libc6-dev: " + r.stderr.strip().splitlines()[-1])
    return cache.publish(tmp, out)


def module_order(modules_dir, names=MODULES, optional=OPTIONAL):
    """Module files (relative to modules_dir) with every dependency before its user; the
    optional ones only where the kernel has them as modules."""
    deps = {}
    for line in (Path(modules_dir) / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[_modname(mod)] = (mod, [_modname(d) for d in rest.split()])
    order, seen = [], set()

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        if n not in deps:
            raise HostUnsupported(f"guest kernel module {n} is missing from {modules_dir}; "
                                  "the guest cannot see its disk without it")
        for d in deps[n][1]:
            visit(d)
        order.append(deps[n][0])
    for n in list(names) + [n for n in optional if n in deps]:
        visit(n)
    return order


def _modname(path):
    base = os.path.basename(path)
    return base.split(".ko", 1)[0].replace("-", "_")


def _cpio(tree, out):
    """A newc archive of tree (cpio from Debian, as the kernel's initramfs tools use)."""
    if not shutil.which("cpio"):
        raise HostUnsupported("building a VM initramfs needs cpio; run: apt-get install cpio")
    names = []
    for d, dirs, files in os.walk(tree):
        dirs.sort()
        for n in sorted(dirs + files):
            names.append(os.path.relpath(os.path.join(d, n), tree))
    with open(out, "wb") as f:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                       input="\n".join(names).encode(), stdout=f, check=True)


def base(kernel):
    """The cached common initramfs for this kernel and agent."""
    agent = _agent()
    if not os.path.exists(BUSYBOX):
        raise HostUnsupported("the VM initramfs needs busybox; run: apt-get install "
                              "busybox-static")
    out = cache.path(f"initrd-{kernel.release}-"
                     f"{cache.key(kernel.modules / 'modules.dep', agent, BUSYBOX, INIT)}.cpio")
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        t = Path(tmp) / "root"
        for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules", "ctrun"):
            (t / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, t / "bin/busybox")
        shutil.copy2(agent, t / "ctrun-agent")
        (t / "init").write_text(INIT)
        os.chmod(t / "init", 0o755)
        names = []
        for rel in module_order(kernel.modules):
            name = _modname(rel) + ".ko"
            src = kernel.modules / rel
            data = src.read_bytes()
            for ext, cmd in ((".xz", ["xz", "-dc"]), (".zst", ["zstd", "-dcq"]),
                             (".gz", ["gzip", "-dc"])):
                if src.name.endswith(ext):  # busybox insmod takes plain modules only
                    data = subprocess.run(cmd, input=data, capture_output=True,
                                          check=True).stdout
            (t / "lib/modules" / name).write_bytes(data)
            names.append(name)
        (t / "modules.order").write_text("\n".join(names) + "\n")
        tmpout = Path(tmp) / "initrd.cpio"
        _cpio(t, tmpout)
        return cache.publish(tmpout, out)


def settings(conf, net=None, probe=False):
    """The shell-quoted /ctrun/config of one VM."""
    net = net or {}
    hostname = conf.get("hostname") or conf["name"]
    v = {"CTRUN_HOSTNAME": hostname, "CTRUN_CMD": " ".join(map(shlex.quote, conf["argv"])),
         "CTRUN_PROBE": "1" if probe else "",
         "CTRUN_ROOT_RO": "1" if conf.get("readonly") else "",
         "CTRUN_SYSCTL": "".join(f"{k} {v}\n" for k, v in (conf.get("sysctl") or {}).items()),
         "CTRUN_BINDS": "".join(f"{i} {'ro' if ro else 'rw'} {dest}\n"
                                for i, (_, dest, ro) in enumerate(conf.get("binds") or [])),
         "CTRUN_HOSTS": "127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost\\n"}
    if net.get("ip"):
        v["CTRUN_IP"] = f"{net['ip']}/{net['prefix']}"
        v["CTRUN_GATEWAY"] = net["gateway"]
        v["CTRUN_HOSTS"] += f"{net['ip']}\\t{hostname}\\n"
        v["CTRUN_RESOLV"] = conf.get("resolv", "").replace("\n", "\\n")
    return "".join(f"{k}={shlex.quote(val)}\n" for k, val in v.items())


def for_vm(kernel, dest, conf, net=None, probe=False, key=None):
    """dest := the cached base + this VM's settings archive, holding the agent's key of
    this start as /ctrun/key (the agent reads and unlinks it before the image runs).  The
    result is root's alone (0600): it holds the key."""
    b = base(kernel)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as tmp:
        t = Path(tmp) / "root"
        (t / "ctrun").mkdir(parents=True)
        (t / "ctrun/config").write_text(settings(conf, net, probe))
        if key is not None:
            _write_private(t / "ctrun/key", key)
        for i, (src, _, _) in enumerate(conf.get("binds") or []):
            (t / "ctrun/binds").mkdir(exist_ok=True)
            if os.path.isdir(src):  # symlinks as they are (a secret's ..data link)
                shutil.copytree(src, t / "ctrun/binds" / str(i), symlinks=True,
                                ignore=_special_files)
            else:
                shutil.copy2(src, t / "ctrun/binds" / str(i))
        _cpio(t, Path(tmp) / "vm.cpio")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)  # a file of its own, created 0600, not an older one's mode
        with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600),
                  "wb") as out, open(b, "rb") as f1, open(Path(tmp) / "vm.cpio", "rb") as f2:
            shutil.copyfileobj(f1, out)
            shutil.copyfileobj(f2, out)
    return dest


def _special_files(d, names):
    """Devices, fifos and sockets in a copied directory: never opened, never copied."""
    import stat
    return [n for n in names
            if not stat.S_ISREG(m := os.lstat(os.path.join(d, n)).st_mode)
            and not stat.S_ISDIR(m) and not stat.S_ISLNK(m)]


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
