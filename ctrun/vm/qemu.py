"""QEMU: the command line of a ctrun VM, and QMP for power-down, quit and the balloon.

One machine type, microvm (QEMU's minimal machine: no PCI, no firmware, virtio-mmio
devices, the kernel entered through PVH), for the shortest boot and the smallest QEMU.
ACPI stays on: the guest finds its virtio-mmio devices through it and powers down with it;
the RTC too, or the guest's clock starts in 1970.
"""

import os
import shutil
import subprocess

from ..errors import HostUnsupported

BINARY = "qemu-system-x86_64"
PORTS = 8                     # agent channels: concurrent exec/stats/stop sessions
TCG_TB_MB = 64                # TCG's translation cache (QEMU's default is 1 GiB of RSS)
# QEMU's own memory above guest RAM, measured idle at 256 MiB guests (README, VM mode):
# the cgroup limit is guest RAM plus this, so a runaway QEMU is stopped, the guest is not
OVERHEAD = {"kvm": 64 << 20, "tcg": (64 + TCG_TB_MB * 2) << 20}
# QEMU's seccomp filter: no obsolete system calls, no setuid/setgid/capset, no fork or exec
# (the tap is handed over as an fd, no helper script runs), no scheduler or priority games;
# a guest that takes over its QEMU is left with little more than it already had
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# systemd.mask: the serial console is QEMU's stdout, logged and never read from (stdin is
# /dev/null), so a login prompt there helps no one; and without udev in the image (Debian's
# systemd does not pull it in) dev-ttyS0.device never appears and the getty would hold
# the boot in `starting` for 90 s.  Other inits ignore the parameter.
CMDLINE = ("console=ttyS0 reboot=t panic=-1 cryptomgr.notests lsm=capability quiet "
           "8250.nr_uarts=1 random.trust_cpu=on systemd.mask=serial-getty@ttyS0.service")


def binary():
    path = shutil.which(BINARY)
    if not path:
        raise HostUnsupported(f"--vm needs {BINARY}; run: apt-get install qemu-system-x86")
    return path


def version(path=None):
    out = subprocess.run([path or binary(), "--version"], capture_output=True, text=True)
    return out.stdout.split("\n", 1)[0].strip()


def tsc_khz():
    """The host TSC rate: under TCG a guest sometimes hangs calibrating its TSC (about one
    boot in 8 measured here) unless told the rate with tsc_early_khz."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def agent_channel():
    """vsock where the host has vhost-vsock (one connection per session, no port limit),
    else virtio-serial ports served as unix sockets: checked, not assumed."""
    return "vsock" if os.path.exists("/dev/vhost-vsock") else "serial"


def argv(accel, vmlinux, initrd, memory_mb, cpus, disk=None, tap_fd=None, mac=None,
         agent_ports=PORTS, qmp="qmp.sock", vsock_cid=None):
    """QEMU's argv; socket paths are relative to QEMU's working directory (the VM's run
    directory), which keeps them under the 108-byte limit of a unix socket path.  With
    vsock_cid the agent is reached over vsock instead of virtio-serial ports."""
    cmdline = CMDLINE
    if accel == "tcg" and (khz := tsc_khz()):  # KVM guests read the TSC rate themselves
        cmdline += f" tsc_early_khz={khz}"
    a = [BINARY, "-name", "ctrun-vm", "-M", "microvm,acpi=on,x-option-roms=off,rtc=on",
         "-accel", "kvm" if accel == "kvm" else f"tcg,tb-size={TCG_TB_MB}",
         "-cpu", "host" if accel == "kvm" else "max",
         "-m", f"{memory_mb}M", "-smp", str(cpus), "-nodefaults", "-no-user-config",
         "-display", "none", "-monitor", "none", "-no-reboot", "-serial", "stdio",
         "-sandbox", SANDBOX,
         "-kernel", str(vmlinux), "-initrd", str(initrd), "-append", cmdline,
         "-qmp", f"unix:{qmp},server=on,wait=off",
         "-device", "virtio-balloon-device"]
    if disk:
        a += ["-drive", f"id=root,file={disk},format=qcow2,if=none,discard=unmap",
              "-device", "virtio-blk-device,drive=root"]
    if vsock_cid is not None:
        a += ["-device", f"vhost-vsock-device,guest-cid={vsock_cid}"]
    elif agent_ports:
        a += ["-device", "virtio-serial-device,max_ports=" + str(agent_ports + 1)]
        for i in range(agent_ports):
            a += ["-chardev", f"socket,id=agent{i},path=agent{i}.sock,server=on,wait=off",
                  "-device", f"virtserialport,chardev=agent{i},name=ctrun.agent.{i}"]
    if tap_fd is not None:
        # vhost=on only where the host has vhost-net: QEMU 7.2 aborts otherwise
        vhost = ",vhost=on" if os.path.exists("/dev/vhost-net") else ""
        a += ["-netdev", f"tap,id=net0,fd={tap_fd}{vhost}",
              "-device", f"virtio-net-device,netdev=net0,mac={mac}"]
    return a


class QMP:
    """A QMP session (QEMU's own Python client, qemu.qmp, used synchronously)."""

    def __init__(self, vmdir):
        from qemu.qmp.legacy import QEMUMonitorProtocol
        self._dirfd = os.open(vmdir, os.O_PATH | os.O_DIRECTORY)
        # connect through /proc/self/fd: the full path may exceed a socket path's limit
        self.q = QEMUMonitorProtocol(f"/proc/self/fd/{self._dirfd}/qmp.sock")
        try:
            self.q.connect()
        except BaseException:
            os.close(self._dirfd)
            raise

    def cmd(self, name, **args):
        return self.q.cmd(name, **args)

    def close(self):
        try:
            self.q.close()
        finally:
            os.close(self._dirfd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
