"""Isolation probes: observe() gathers raw facts from inside an instance (and from the host
next to it), classify() turns them into isolated / shared / blocked with an evidence line.

Outcomes:  shared   - the instance sees or changes the host kernel's own object;
           isolated - it may act, but on a copy of its own (its own kernel, namespace);
           blocked  - the kernel refused (capability, seccomp, read-only mount, a limit).
A probe that is not run says why ("not run"); one that failed says so ("error").

Every probe is harmless on a host that is not isolated: it reads, writes back the value
it just read, or makes a call whose only effect is the permission check.  The fork bomb and
the memory hog run only under a limit set for them, never in host mode."""

import os
import random
import subprocess
import time
from pathlib import Path

from .. import mountinfo
from ..errors import CtrunError
from .workloads import parse

PROBES = {
    "kernel": "kernel version seen",
    "processes": "host processes visible",
    "mounts": "host mounts visible",
    "procsys": "/proc/sys writable",
    "module": "kernel module load",
    "rawdisk": "raw block device access",
    "clock": "system clock change",
    "dmesg": "kernel log (dmesg) read",
    "cgroup-escape": "cgroup limit escape",
    "forkbomb": "fork bomb contained",
    "memhog": "memory hog contained",
    "kernel-fault": "shared-kernel failure illustration",
}
DESTRUCTIVE = ("forkbomb", "memhog")
HOST_NOT_RUN = ("the host itself has no limit the lab could set around it; a fork bomb or "
                "memory hog there would disturb the machine")
# pseudo file systems every kernel mounts at the same places: a match there proves nothing
PSEUDO = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "mqueue", "cgroup", "cgroup2",
          "securityfs", "debugfs", "tracefs", "bpf", "pstore", "hugetlbfs", "fusectl",
          "configfs", "autofs", "binfmt_misc", "nsfs", "rpc_pipefs", "overlay"}
SYSCTL = "/proc/sys/vm/swappiness"   # a global (not namespaced) setting
FORKBOMB_LIMIT = 32
FORKBOMB_CAP = 200
HOG_LIMIT_MB = 48


def host_kernel():
    return {"release": os.uname().release,
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip()}


def mount_keys(text):
    """(major:minor, root, mount point, fs type, source) of real (non-pseudo) mounts, from
    mountinfo's text."""
    return {(m.dev, m.root, m.point, m.fstype, m.source)
            for m in mountinfo.parse(text.splitlines()) if m.fstype not in PSEUDO}


def _err_outcome(result, shared_kernel, what, allowed=("0",)):
    """The common rule: allowed on the host's kernel = shared; allowed on a kernel of its
    own = isolated; refused = blocked."""
    if result in allowed:
        if shared_kernel:
            return "shared", f"{what}: allowed ({result}) on the host's own kernel"
        return "isolated", f"{what}: allowed ({result}), but on the instance's own kernel"
    why = {"EPERM": "refused (EPERM: no capability, or seccomp)", "EACCES": "refused (EACCES)",
           "EROFS": "refused (read-only mount)", "ENOSYS": "refused (ENOSYS: not available "
           "to this caller, or the kernel lacks it)"}.get(result, f"refused ({result})")
    return "blocked", f"{what}: {why}"


def classify(name, obs):
    """(outcome, evidence) of probe `name` from its observations (a dict)."""
    shared = obs.get("shared_kernel")
    if obs.get("not_run"):
        return "not run", obs["not_run"]
    if name == "kernel":
        same = obs["boot_id"] == obs["host_boot_id"]
        ev = (f"uname -r {obs['release']} (host {obs['host_release']}); boot_id "
              f"{obs['boot_id'][:8]}... {'=' if same else '!='} host's")
        return ("shared" if same else "isolated"), ev
    if name == "processes":
        if obs["marker_seen"]:
            return "shared", (f"a host process (argv {obs['marker']}) is visible inside; "
                              f"{obs['visible']} processes in /proc")
        return "isolated", (f"the host marker process is not visible; only "
                            f"{obs['visible']} processes in /proc")
    if name == "mounts":
        n, total = len(obs["matched"]), obs["host_mounts"]
        if n and shared:
            return "shared", (f"{n} of the host's {total} real mounts visible inside "
                              f"(e.g. {obs['matched'][0]})")
        if n:
            return "isolated", (f"{n} mount(s) look alike (same device number and path, "
                                f"e.g. {obs['matched'][0]}), but the instance runs its own "
                                f"kernel: its mount table is its own")
        return "isolated", f"none of the host's {total} real mounts is visible inside"
    if name == "procsys":
        return _err_outcome(obs["write"], shared,
                            f"write back {obs['value']} to {SYSCTL}")
    if name == "module":
        # EBADF: every permission check passed and only the bogus fd stopped it
        return _err_outcome(obs["finit_module"], shared, "finit_module(-1) permission check",
                            allowed=("EBADF", "0"))
    if name == "clock":
        return _err_outcome(obs["settime"], shared,
                            "settimeofday(NULL, NULL) (CAP_SYS_TIME check, no change)")
    if name == "dmesg":
        return _err_outcome(obs["klog_read"], shared,
                            f"syslog(READ_ALL) ({obs.get('klog_bytes', 0)} bytes)")
    if name == "rawdisk":
        if obs.get("disk") == "none":
            return "isolated", "no block device listed in /proc/partitions"
        res = obs.get("open", obs.get("mknod"))
        what = (f"open /dev/{obs['disk']} ({obs.get('dev')}) read-only"
                if "open" in obs else f"mknod of {obs['disk']} ({obs.get('dev')})")
        return _err_outcome(res, shared, what)
    if name == "cgroup-escape":
        if obs["escaped"]:
            return ("shared" if shared else "isolated"), obs["evidence"]
        return ("blocked" if shared else "isolated"), obs["evidence"]
    if name in ("forkbomb", "memhog"):
        if not shared:
            return "isolated", obs["evidence"]
        return ("blocked" if obs["contained"] else "shared"), obs["evidence"]
    if name == "kernel-fault":
        if shared:
            return "shared", ("same kernel as the host (boot_id): a kernel fault (oops, "
                              "panic, a deadlocked driver) here takes down the host and "
                              "every container on it: OpenVZ's price for density")
        return "isolated", ("own kernel: a guest kernel fault ends this one QEMU process; "
                            "the host and the other VMs go on (nothing was crashed to show it)")
    raise KeyError(name)


# ------------------------------------------------------------------ observations
def _sh(inst, script, timeout=120):
    return inst.exec(["sh", "-c", script], timeout=timeout)


def kernel_facts(inst):
    code, out = _sh(inst, "uname -r; cat /proc/sys/kernel/random/boot_id")
    lines = out.split()
    if code != 0 or len(lines) < 2:
        raise CtrunError(f"could not read the kernel of {inst.name}: {out.strip()}")
    h = host_kernel()
    return {"release": lines[0], "boot_id": lines[1], "host_release": h["release"],
            "host_boot_id": h["boot_id"], "shared_kernel": lines[1] == h["boot_id"]}


def observe(name, inst, lab, kernel, cache=None):
    """Raw observations for probe `name` in `inst` (kernel: kernel_facts(inst)); cache: a
    dict kept across the probes of one instance, for what several of them read."""
    base = {"shared_kernel": kernel["shared_kernel"]}
    if name in ("kernel", "kernel-fault"):
        return {**base, **kernel}
    if name in DESTRUCTIVE and inst.kind == "host":
        return {**base, "not_run": HOST_NOT_RUN}
    if name == "processes":
        m = lab.marker
        code, out = _sh(inst, f"ls -d /proc/[0-9]* | wc -l; grep -l "
                              f"'{m[:-1]}[{m[-1]}]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l")
        v = out.split()
        return {**base, "visible": int(v[0]), "marker_seen": int(v[1]) > 0, "marker": m}
    if name == "mounts":
        code, out = _sh(inst, "cat /proc/self/mountinfo")
        host = mount_keys(Path("/proc/self/mountinfo").read_text())
        matched = sorted(k[2] for k in mount_keys(out) & host)
        return {**base, "host_mounts": len(host), "matched": matched}
    if name == "procsys":
        code, out = _sh(inst, f"v=$(cat {SYSCTL}) && echo value=$v && "
                              f"if (echo $v > {SYSCTL}) 2>/dev/null; then echo write=0; "
                              f"else echo write=failed; fi")
        kv = parse(out)
        write = kv.get("write", "failed")
        if write != "0":  # which refusal: a read-only /proc/sys or a missing capability
            ro = _sh(inst, "grep ' /proc/sys ' /proc/self/mounts")[1]
            write = "EROFS" if " ro," in ro else "EPERM" if ro or kernel["shared_kernel"] \
                else "EACCES"
        return {**base, "value": kv.get("value"), "write": write}
    if name in ("module", "clock", "dmesg"):  # one `helper probe` run answers all three
        cache = {} if cache is None else cache
        if "helper probe" not in cache:
            cache["helper probe"] = parse(inst.exec([inst.helper, "probe"])[1])
        return {**base, **cache["helper probe"]}
    if name == "rawdisk":
        code, out = inst.exec([inst.helper, "rawdisk", inst.root_dir.rstrip("/") or "/tmp"])
        return {**base, **parse(out)}
    if name == "cgroup-escape":
        return {**base, **_escape(inst, kernel["shared_kernel"])}
    if name == "forkbomb":
        return {**base, **_forkbomb(inst, lab, kernel["shared_kernel"])}
    if name == "memhog":
        return {**base, **_memhog(inst, lab, kernel["shared_kernel"])}
    raise KeyError(name)


def _find_marker(tag):
    """Host pids whose argv is `sleep TAG`."""
    from ..state import proc_cmdlines
    want = b"sleep\0" + tag.encode() + b"\0"
    return [pid for pid, cmd in proc_cmdlines() if cmd.endswith(want)]


def _cgroup_of(pid, controller="memory"):
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(",") or (not ctrls and controller == "memory"
                                                  and path):
                return path
    except OSError:
        pass
    return None


def _escape(inst, shared):
    """The instance moves itself into the top of every cgroup hierarchy it can see and
    tries to lift the memory limit there; a marker `sleep` inherits wherever it landed.
    The host then checks where that sleep is and whether the limit moved."""
    mgr = inst.cgroup()
    before = _limit(mgr)
    tag = str(3000000000 + random.randrange(10 ** 8))
    # only files that exist are written (never a new file on a tmpfs /sys/fs/cgroup)
    script = ("for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do "
              "[ -f $f ] && echo $$ > $f 2>/dev/null; done; "
              "for f in /sys/fs/cgroup/memory/memory.limit_in_bytes:-1 "
              "/sys/fs/cgroup/memory.max:max; do [ -f ${f%:*} ] && echo ${f##*:} > ${f%:*} "
              "2>/dev/null; done; "
              f"sleep {tag} </dev/null >/dev/null 2>&1 & sleep 0.3; echo started")
    _sh(inst, script)
    after = _limit(mgr)
    if not shared:  # the guest's processes are invisible: QEMU is what the host can check
        qemu_inside = set(mgr.pids())
        return {"escaped": False, "limit_before": before, "limit_after": after,
                "evidence": f"the guest moved within its own kernel's cgroups; QEMU "
                            f"({len(qemu_inside)} host process(es)) stays in {mgr.rel}, its "
                            f"memory limit {_fmt(before)} -> {_fmt(after)}"}
    deadline = time.monotonic() + 5
    pids = _find_marker(tag)
    while not pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = _find_marker(tag)
    if not pids:
        return {"escaped": False, "limit_before": before, "limit_after": after,
                "evidence": "error: the marker process never appeared"}
    where = _cgroup_of(pids[0])
    for p in pids:
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass
    inside = where is not None and (where == "/" + mgr.rel or
                                    where.startswith("/" + mgr.rel + "/"))
    escaped = not inside or after != before
    return {"escaped": escaped, "cgroup_after": where, "limit_before": before,
            "limit_after": after,
            "evidence": (f"after the attempt its process sits in memory cgroup {where} "
                         f"({'outside' if not inside else 'inside'} {mgr.rel}); limit "
                         f"{_fmt(before)} -> {_fmt(after)}")}


def _fmt(v):
    return "none" if v is None else f"{v >> 20}M"


def _limit(mgr):
    try:
        return mgr.read_limits().get("memory")
    except (CtrunError, OSError):
        return None


def _forkbomb(inst, lab, shared):
    """A bounded fork bomb (at most FORKBOMB_CAP children, all released at once) under a
    pids limit: ctrun's pids.max for a container, the guest's own pids cgroup in a VM."""
    if shared:
        inst.set_limits({"pids_limit": str(FORKBOMB_LIMIT)})
        try:
            code, out = inst.exec([inst.helper, "forkbomb", str(FORKBOMB_CAP)])
        finally:
            inst.set_limits({"pids_limit": "-1"})
        kv = parse(out)
        contained = kv.get("stopped_by") not in (None, "cap")
        return {"contained": contained, **kv,
                "evidence": f"pids.max={FORKBOMB_LIMIT}: {kv.get('forked', '?')} forks, then "
                            f"{kv.get('stopped_by', '?')}; {lab.sibling_check()}"}
    before = len(inst.cgroup().pids())
    script = ("mkdir -p /tmp/cg && (mount -t cgroup2 none /tmp/cg 2>/dev/null; true) && "
              "mkdir -p /tmp/cg/bomb && echo +pids > /tmp/cg/cgroup.subtree_control && "
              f"echo {FORKBOMB_LIMIT} > /tmp/cg/bomb/pids.max && echo $$ > "
              f"/tmp/cg/bomb/cgroup.procs && echo limit=guest; {inst.helper} forkbomb "
              f"{FORKBOMB_CAP}")
    code, out = _sh(inst, script)
    kv = parse(out)
    after = len(inst.cgroup().pids())
    limit = (f"the guest's own pids.max={FORKBOMB_LIMIT}" if kv.get("limit") == "guest" else
             "no pids cgroup in the guest: bounded by the helper's cap")
    return {"contained": True, **kv,
            "evidence": f"inside the guest ({limit}): {kv.get('forked', '?')} forks, then "
                        f"{kv.get('stopped_by', '?')}; host processes of the VM's cgroup "
                        f"{before} -> {after}"}


def _memhog(inst, lab, shared):
    """Touch memory past a limit: ctrun's memory limit for a container (the cgroup's OOM
    killer ends it), the guest's RAM for a VM (the guest's OOM killer ends it)."""
    if shared:
        inst.set_limits({"memory": f"{HOG_LIMIT_MB}M"})
        try:
            code, out = inst.exec([inst.helper, "hog", str(HOG_LIMIT_MB * 3)])
        finally:
            inst.set_limits({"memory": "-1"})
        target = HOG_LIMIT_MB * 3
        where = f"memory limit {HOG_LIMIT_MB}M"
    else:
        target = lab.vm_memory_mb + 64
        code, out = inst.exec([inst.helper, "hog", str(target)], timeout=300)
        where = f"guest RAM {lab.vm_memory_mb}M"
    kv = parse(out)
    touched = kv.get("touched_mb")
    progress = [int(v.split("=")[1]) for v in out.split() if v.startswith("progress=")]
    reached = touched is not None and kv.get("stopped_by") == "cap"
    contained = not reached
    how = (f"killed (exit {code}) after ~{max(progress or [0])} MiB" if touched is None
           else f"touched {touched} MiB, stopped by {kv.get('stopped_by')}")
    ev = f"{where}, target {target} MiB: {how}"
    if not shared:
        mem = inst.memory()
        ev += f"; QEMU's host memory now {mem['total_kb'] >> 10} MiB"
    else:
        ev += f"; {lab.sibling_check()}"
    return {"contained": contained, "exit_code": code, "touched_mb": touched,
            "evidence": ev}


def host_marker():
    """A host process the instances look for: `sleep <tag>` with a unique tag."""
    tag = f"ctrun-lab-marker-{os.getpid()}-{random.randrange(10 ** 6)}"
    p = subprocess.Popen([tag, "2147483647"], executable="/bin/sleep", stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tag, p
