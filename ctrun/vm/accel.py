"""KVM or TCG: prove that KVM can boot a guest before trusting it.

/dev/kvm existing is not enough: on some hosts it is a paravirtual module (PVM) that
cannot run an unmodified kernel (QEMU's -cpu host fails to set MSR 0x10a there, and a
Debian kernel dies on emulation failures).  So `auto` boots the guest kernel and initramfs
once under KVM to a marker, and the verdict is cached per host kernel, QEMU and guest
kernel, so a start pays nothing; TCG (software emulation) is used otherwise, and said.
"""

import json
import os
import platform
import subprocess
import tempfile

from ..errors import HostUnsupported, InvalidInput
from . import cache, initramfs, kernel, qemu

ACCELS = ("auto", "kvm", "tcg")
PROBE_TIMEOUT = 30


def check(requested):
    if requested not in ACCELS:
        raise InvalidInput(f"--accel {requested!r} is not one of {', '.join(ACCELS)}")
    return requested


def verdict(k):
    """{"kvm": bool, "why": str}: can KVM boot guest kernel k on this host?"""
    if not os.path.exists("/dev/kvm"):
        return {"kvm": False, "why": "no /dev/kvm"}
    path = cache.path("accel-" + cache.key(platform.release(), qemu.binary(), k.vmlinuz,
                                           "/dev/kvm") + ".json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    v = _probe(k)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(v))
    cache.publish(tmp, path)
    return v


def _probe(k):
    with tempfile.TemporaryDirectory() as d:
        initrd = initramfs.for_vm(k, os.path.join(d, "initrd"), {"name": "probe", "argv": []},
                                  probe=True)
        argv = qemu.argv("kvm", kernel.vmlinux(k), initrd, 128, 1, agent_ports=0,
                         qmp=os.path.join(d, "qmp.sock"))
        try:
            r = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, cwd=d,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"kvm": False, "why": f"a KVM guest did not boot in {PROBE_TIMEOUT} s"}
    out = (r.stdout + r.stderr).decode(errors="replace")
    if "CTRUN-PROBE-OK" in out:
        return {"kvm": True, "why": "a KVM guest booted"}
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return {"kvm": False, "why": "KVM cannot boot the guest: " +
            (lines[-1] if lines else f"QEMU exited {r.returncode}")[:200]}


def choose(requested, k):
    """(accel, note): the accelerator a start uses, and why when it is not what was asked."""
    if requested == "tcg":
        return "tcg", None
    v = verdict(k)
    if v["kvm"]:
        return "kvm", None
    if requested == "kvm":
        raise HostUnsupported(f"--accel kvm: {v['why']}; use --accel tcg or auto")
    return "tcg", f"KVM unusable ({v['why']}); using TCG software emulation (slower)"
