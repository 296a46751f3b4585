#!/usr/bin/python3
"""VM mode: boot to agent-ready with `ctrun start`, side by side with a hand-written minimal
QEMU command line booting the same kernel, initramfs and disk to the same marker (the guest
agent answering its hello on the first channel), and host memory per idle VM.

Both arms boot the same guest (QEMU microvm, the cached vmlinux, the VM's initramfs, a
qcow2 overlay of the image's ext4 disk) on the same accelerator (KVM where ctrun's probe
proves it boots, else TCG); the hand-written line has only what that boot needs (no QMP,
no balloon, one agent channel, no cgroup, no monitor), so the difference is what ctrun
adds: its CLI, checks, initramfs settings, cgroup, monitor and readiness wait.  Rounds are
interleaved; each VM is created untimed and destroyed untimed.  Target: ctrun <= 1.10x.
Under KVM the target is <= 300 ms to agent-ready (reported only where KVM can boot).

Memory per idle VM (the lab's definition): PSS of QEMU plus the kernel memory charged to its
cgroup, after --settle seconds; next to it the same for an idle busybox container (its
processes' PSS, its cgroup's kernel memory, and its share of the shared monitor).
Run as root:  benchmarks/bench_vm.py [--runs 5] [--warmup 1] [--settle 5]
"""

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_RATIO = 1.10
KVM_TARGET_MS = 300


def hello(path, deadline):
    """Connect to the agent socket and wait for the reply to a hello (the marker)."""
    nonce = os.urandom(8).hex().encode()
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.sendall(b"H" + struct.pack("<I", len(nonce)) + nonce)
            buf = b""
            while True:
                data = s.recv(4096)
                if not data:
                    break
                buf += data
                if nonce in buf:
                    return True
        except OSError:
            time.sleep(0.005)
        finally:
            s.close()
    return False


def hand_written_boot(vmdir, accel, vmlinux, initrd, disk, timeout=180):
    """Boot QEMU with the minimal line; seconds to the agent's hello, then power off."""
    from ctrun.vm import qemu
    cmdline = qemu.CMDLINE + (f" tsc_early_khz={qemu.tsc_khz()}" if accel == "tcg" else "")
    sock = os.path.join(vmdir, "hand.sock")
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=on,x-option-roms=off,rtc=on",
            "-accel", "kvm" if accel == "kvm" else f"tcg,tb-size={qemu.TCG_TB_MB}",
            "-cpu", "host" if accel == "kvm" else "max", "-m", "256M", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", vmlinux, "-initrd", initrd, "-append", cmdline,
            "-drive", f"id=root,file={disk},format=qcow2,if=none",
            "-device", "virtio-blk-device,drive=root",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=a0,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=a0,name=ctrun.agent.0"]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        ok = hello(sock, time.monotonic() + timeout)
        dt = time.perf_counter() - t0
    finally:
        p.kill()
        p.wait()
    return dt if ok else None


def instance_memory(ws, name):
    """(PSS kB of the instance's processes, kernel memory kB of its cgroup)."""
    info = json.loads(ws.ctrun_check("inspect", name))
    dirs = list((info.get("cgroup") or {}).values())
    procs = set()
    for d in dirs:
        procs |= set(common.cgroup_procs(Path(d) / "ct"))
    pss = sum((common.mem_kb(p) or {}).get("pss", 0) for p in procs)
    from ctrun.lab.modes import kmem_kb
    return pss, kmem_kb(dirs) or 0


def measure(b):
    a = b.args
    from ctrun.vm import accel as accelmod, initramfs, kernel
    k = kernel.find()
    accel, _ = accelmod.choose("auto", k)
    vmlinux = str(kernel.vmlinux(k))

    with common.Workspace("vm") as ws:
        ws.build_image()
        # the hand-written arm boots what ctrun boots: that VM's initramfs and disk
        ws.ctrun_check("create", "ref", "--vm", "--net", "none")
        conf = json.loads(ws.ctrun_check("inspect", "ref"))["config"]
        hand = ws.tmp / "hand"
        hand.mkdir()
        # the agent answers nothing without its start's key in the initramfs (a guest
        # agent with no /ctrun/key exits): the hand-written boot gets one as ctrun's does
        from ctrun.vm import agent
        initrd = initramfs.for_vm(k, str(hand / "initrd.img"),
                                  {"name": "ref", "argv": ["/sbin/init"]},
                                  key=agent.new_key(hand))
        base = conf["vm"]["base_disk"]

        def ctrun_boot(rnd):
            ws.ctrun_check("create", f"b{rnd}", "--vm", "--net", "none")
            dt, rc = common.timed(ws.ctrun_cmd("start", f"b{rnd}"), timeout=300)
            ws.ctrun_check("destroy", "-f", f"b{rnd}")
            return dt if rc == 0 else None

        def hand_boot(rnd):
            disk = hand / "disk.qcow2"
            disk.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", base, str(disk)], check=True)
            return hand_written_boot(str(hand), accel, vmlinux, initrd, str(disk))

        samples, failures, _ = common.rounds(
            {"ctrun start": ctrun_boot, "hand-written qemu": hand_boot}, a.runs, a.warmup,
            order=common.alternate, progress=1)

        # memory of one idle VM and one idle container
        ws.ctrun_check("start", "ref", timeout=300)
        ws.ctrun_check("run", "-d", "--name", "idle-ct", "--net", "none", "busybox")
        time.sleep(a.settle)
        vm_pss, vm_kmem = instance_memory(ws, "ref")
        ct_pss, ct_kmem = instance_memory(ws, "idle-ct")
        mon = sum((common.mem_kb(p) or {}).get("pss", 0) for p in common.monitor_pids(ws.store))
        ws.ctrun_check("destroy", "-f", "ref", "idle-ct")

    med = {n: common.percentile(v, 50) for n, v in samples.items() if v}
    ratio = med["ctrun start"] / med["hand-written qemu"] if len(med) == 2 else None
    rows = [[n, len(samples[n]), f"{med[n] * 1000:.0f}" if n in med else "-",
             f"{min(samples[n]) * 1000:.0f}" if samples[n] else "-", failures[n]]
            for n in samples]
    print(f"\nboot to agent-ready, accel={accel}, guest 256M/1 vCPU, kernel {k.release}")
    print(common.table(["arm", "runs", "median ms", "min ms", "failed"], rows))
    if ratio is not None:
        common.print_ratio("ctrun / hand-written", ratio, TARGET_RATIO)
    if accel == "kvm":
        ms = med["ctrun start"] * 1000
        print(f"KVM agent-ready: {ms:.0f} ms (target <= {KVM_TARGET_MS} ms: "
              f"{common.verdict(ms <= KVM_TARGET_MS)})")
    else:
        print(f"KVM target (<= {KVM_TARGET_MS} ms) not measurable here: KVM cannot boot a guest")
    mem_rows = [["vm (QEMU)", vm_pss, vm_kmem, 0, vm_pss + vm_kmem],
                ["container", ct_pss, ct_kmem, mon, ct_pss + ct_kmem + mon]]
    print(f"\nhost memory per idle instance after {a.settle:.0f} s (kB)")
    print(common.table(["mode", "PSS", "kernel (cgroup)", "monitor share", "total"], mem_rows))
    result = {"accel": accel, "kernel": k.release, "samples_s": samples, "failures": failures,
              "median_s": med, "ratio": ratio, "target_ratio": TARGET_RATIO,
              "memory_kb": {"vm": {"pss": vm_pss, "kmem": vm_kmem},
                            "container": {"pss": ct_pss, "kmem": ct_kmem, "monitor": mon}},
              "host": common.host_info()}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("vm", __doc__, runs=(5, "timed boots per arm"), warmup=1,
                     imports_ctrun=True, tools=("qemu-system-x86_64", "qemu-img"))
    b.option("--settle", type=float, default=5.0,
             help="seconds an idle instance settles before its memory is read")
    b.main(measure)
