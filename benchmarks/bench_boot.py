#!/usr/bin/python3
"""Boot to running of the Debian server image (debian-server: systemd, sshd, cron, rsyslog):
a ctrun container against `systemd-nspawn --boot` and `lxc-start` on the same root file
system, and host memory per idle booted server for the three, side by side.

The image comes from the store given by --source-root (default: the user's store) when it
holds debian-server, its layers hard-linked into the benchmark's own store; otherwise it is
built there once (`ctrun image build debian-server`: debootstrap, minutes, Debian's
archive).  Its layers are merged once into a plain rootfs directory for the peers.  Every
boot starts from the same state: ctrun mounts its own overlay over the image; each peer
boot gets a fresh overlay (untimed) over the merged copy.  All three get a network
namespace with only lo (ctrun --net none, nspawn --private-network, lxc net type empty).

"Booted" is the same test for all three: `nsenter -t PID1 -a systemctl is-system-running`
answering running or degraded, polled every 50 ms from the moment the tool is started; the
time reported is then read from systemd itself, so the polling's granularity is not in it:
its FinishTimestampMonotonic (the boot's end) and UserspaceTimestampMonotonic (its own
start, the "systemd starts" column: what the runtime took before the guest's init ran) on
the host's CLOCK_MONOTONIC, which the container shares (no time namespace), minus the
tool's start;
PID1 is the container's init as the host sees it (ctrun: its live.json; the peers: the
descendant of the tool that is PID 1 of its own PID namespace).  ctrun's container is
created untimed and its time runs from `ctrun start`; the peers' from their command; every
tool's timed start comes QUIET_S after its untimed set-up, so what that left running (ctrun's
warm server preparing its next worker after the create) is not in the time.  Each
server is then stopped cleanly (ctrun stop; SIGTERM to nspawn, which halts its systemd with
SIGRTMIN+3; lxc-stop with lxc.signal.halt = SIGRTMIN+3) and that stop is timed too.
Rounds rotate the tools' order.  Target: ctrun's median <= 1.0x the faster peer's.

Host memory per idle booted server, after --settle seconds: PSS of the container's
processes, PSS of its supervisor (ctrun's shared monitor, whole, as it serves one server
here; the systemd-nspawn process; LXC's monitor, lxc-start), and the kernel memory charged
to its memory cgroup (ctrun's container cgroup; a cgroup of the benchmark's own that each
peer is started in, so it holds the peer's tool as well).

This host: PID 1 is not systemd and there is no machined, so nspawn runs with
--register=no --keep-unit; LXC's cgroups go below the benchmark's cgroup parent
(lxc.cgroup.dir.*).  What nspawn leaves of its cgroups on such a host is removed after each
of its boots.  ctrun's shared monitor is its warm server's parent and stays while the
server does (30 s after its last call), so each timed `ctrun start` finds both up, as the
rounds come seconds apart; --warm-monitor also keeps an idle busybox container running
through the rounds, as on a host already serving servers.
Run as root:  benchmarks/bench_boot.py [--runs 10] [--warmup 1] [--settle 5] [--warm-monitor]
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

IMAGE = "debian-server"
TARGET_RATIO = 1.0
POLL_S = 0.05
# after each tool's untimed set-up (ctrun's create; a peer's overlay and config), before its
# timed start: what the set-up left running (ctrun's server preparing its next worker) is
# over when the clock starts, for every tool alike
QUIET_S = 0.3
BOOT_TIMEOUT_S = 120
BOOTED = ("running", "degraded")
TOOLS = ("ctrun", "systemd-nspawn", "lxc-start")


def system_state(pid):
    """What systemd inside says, entered from the host into every namespace of PID1."""
    try:
        p = subprocess.run(["nsenter", "-t", str(pid), "-a", "systemctl",
                            "is-system-running"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "no answer"
    return p.stdout.strip() or "no answer"


def wait_booted(find_pid1, gone, deadline):
    """Poll until systemd says its boot is over, or the server is gone(); (state, PID1)."""
    state, pid = "not started", None
    while time.monotonic() < deadline:
        pid = find_pid1() or pid
        if pid:
            state = system_state(pid)
            if state in BOOTED:
                return state, pid
        if gone(pid):
            return "exited before it had booted", pid
        time.sleep(POLL_S)
    return state, pid


def systemd_marks(pid):
    """(userspace start, boot finished) of the systemd that is PID1, in seconds of
    CLOCK_MONOTONIC (time.monotonic()'s clock), or None."""
    try:
        p = subprocess.run(["nsenter", "-t", str(pid), "-a", "systemctl", "show", "-p",
                            "UserspaceTimestampMonotonic", "-p", "FinishTimestampMonotonic"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    vals = dict(line.partition("=")[::2] for line in p.stdout.split())
    try:
        start, end = (int(vals[k]) / 1e6 for k in ("UserspaceTimestampMonotonic",
                                                   "FinishTimestampMonotonic"))
    except (KeyError, ValueError):
        return None
    return (start, end) if start and end else None


POLLED = []  # the polled time of the last boot (for the table's check column)


def booted_after(t0, state, pid):
    """(seconds from t0 to the end of the boot, to systemd's start): systemd's own
    timestamps, or the polled time (and None) where it gave none."""
    polled = time.monotonic() - t0
    marks = systemd_marks(pid) if state in BOOTED else None
    POLLED.append(polled)
    if marks is None:
        return polled, None
    return marks[1] - t0, marks[0] - t0


def ns_init_below(root_pid):
    """The descendant of root_pid that is PID 1 of a PID namespace of its own."""
    for p in common.descendants(root_pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("NSpid:") and len(line.split()) > 2 \
                        and line.split()[-1] == "1":
                    return p
        except OSError:
            pass
    return None


def tree_pss(root_pid):
    """(PSS kB of root_pid, PSS kB of its descendants)."""
    own = (common.mem_kb(root_pid) or {}).get("pss", 0)
    return own, sum((common.mem_kb(p) or {}).get("pss", 0)
                    for p in common.descendants(root_pid))


def wait_exit(p, timeout):
    """Whether p exits within timeout; woken by a pidfd at once (Popen.wait polls)."""
    import select
    try:
        fd = os.pidfd_open(p.pid)
    except ProcessLookupError:
        p.wait()
        return True
    try:
        if not select.select([fd], [], [], timeout)[0]:
            return False
    finally:
        os.close(fd)
    p.wait()
    return True


class CtrunArm:
    name = "ctrun"

    def __init__(self, ws):
        self.ws = ws

    def boot(self, tag):
        """(boot seconds, state, PID1, seconds to systemd's start) of a server created
        untimed as `tag`."""
        self.ws.ctrun_check("create", tag, "--image", IMAGE, "--net", "none")
        live = self.ws.store / "containers" / tag / "live.json"

        def pid1():
            try:
                return json.loads(live.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                return None
        time.sleep(QUIET_S)
        t0 = time.monotonic()
        dt, rc = common.timed(self.ws.ctrun_cmd("start", tag), timeout=BOOT_TIMEOUT_S)
        if rc != 0:
            raise RuntimeError(f"ctrun start {tag} failed ({rc})")
        state, pid = wait_booted(pid1, lambda pid: pid and not os.path.exists(f"/proc/{pid}"),
                                 time.monotonic() + BOOT_TIMEOUT_S)
        return (*booted_after(t0, state, pid), state, pid)

    def memory(self, tag, pid):
        from ctrun.api import Ctrun
        from ctrun.lab.modes import kmem_kb
        mgr = Ctrun(str(self.ws.store)).cgroup_manager(tag)
        pss = sum((common.mem_kb(p) or {}).get("pss", 0) for p in mgr.pids())
        mon = sum((common.mem_kb(p) or {}).get("pss", 0)
                  for p in common.monitor_pids(self.ws.store))
        return pss, mon, kmem_kb([str(d) for d in mgr.dirs().values()])

    def stop(self, tag):
        if not (self.ws.store / "containers" / tag).is_dir():
            return None  # its create failed
        dt, rc = common.timed(self.ws.ctrun_cmd("stop", tag), timeout=60)
        self.ws.ctrun_check("destroy", "-f", tag)
        return dt if rc == 0 else None


class PeerArm:
    """A peer tool started as one process whose descendant is the container's init."""

    def __init__(self, host):
        self.host = host
        self.live = {}

    def boot(self, tag):
        root = self.host.overlay(tag)
        cg = self.host.cgroup(f"{self.name}-{tag}")
        argv = self.argv(tag, root, cg)
        time.sleep(QUIET_S)
        t0 = time.monotonic()
        p = self.host.spawn(argv, cg)
        self.live[tag] = (p, root, cg)
        state, pid = wait_booted(lambda: ns_init_below(p.pid), lambda pid: p.poll() is not None,
                                 time.monotonic() + BOOT_TIMEOUT_S)
        return (*booted_after(t0, state, pid), state, pid)

    def memory(self, tag, pid):
        from ctrun.lab.modes import kmem_kb
        p, _, cg = self.live[tag]
        own, below = tree_pss(p.pid)
        return below, own, kmem_kb(self.host.memory_dir(cg))

    def stop(self, tag):
        if tag not in self.live:
            return None  # it never started
        p, root, cg = self.live.pop(tag)
        t0 = time.perf_counter()
        # asked again every second: a PID 1 ignores the halt signal until systemd has set
        # its handlers, early in a boot (a Ctrl-C can stop the benchmark there)
        for _ in range(60):
            self.request_stop(tag, p)
            if ok := wait_exit(p, 1.0):
                break
        dt = time.perf_counter() - t0
        if not ok:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.after(tag)
        self.host.release(root, cg)
        return dt if ok and p.returncode == 0 else None

    def after(self, tag):
        pass


class NspawnArm(PeerArm):
    name = "systemd-nspawn"

    def argv(self, tag, root, cg):
        # no systemd as the host's PID 1 and no machined: no registration, no scope unit
        return common.nspawn_argv(tag, root, ["--boot", "--console=read-only"])

    def request_stop(self, tag, p):
        p.send_signal(signal.SIGTERM)  # nspawn sends its --boot PID 1 SIGRTMIN+3

    def after(self, tag):
        common.nspawn_forget(tag)


class LxcArm(PeerArm):
    name = "lxc-start"

    def __init__(self, host):
        super().__init__(host)
        self.path = host.ws.tmp / "lxc"
        host.ws.on_cleanup(common.lxc_forget, self.path)

    def argv(self, tag, root, cg):
        common.lxc_config(
            self.path, tag, root, f"{common.CGROUP_PARENT}/{self.name}-{tag}",
            "lxc.include = /usr/share/lxc/config/common.conf", f"lxc.uts.name = {tag}",
            "lxc.init.cmd = /sbin/init", "lxc.signal.halt = SIGRTMIN+3",
            f"lxc.log.file = {self.path / tag}/log", "lxc.log.level = WARN")
        return ["lxc-start", "-F", "-n", tag, "-P", str(self.path)]

    def request_stop(self, tag, p):
        subprocess.run(["lxc-stop", "-n", tag, "-P", str(self.path), "--nowait"],
                       capture_output=True, timeout=30)

    def after(self, tag):
        shutil.rmtree(self.path / tag, ignore_errors=True)
        common.lxc_forget(self.path, tag)
        common.rm_cgroup_tree(common.LXC_PIVOT)  # where LXC's monitor waits out its end


def server_image(ws, source_root):
    """debian-server in the benchmark's store: from source_root, else built (minutes)."""
    from ctrun.api import Ctrun
    from ctrun.errors import NotFound
    from ctrun.images import store as images
    from ctrun.state import Store
    try:
        images.copy_image(Store(source_root), Ctrun(str(ws.store)).store, IMAGE)
        return f"copied from {source_root}"
    except NotFound:
        print(f"{IMAGE} is not in {source_root}: building it (debootstrap, minutes)",
              flush=True)
        ws.ctrun_check("image", "build", IMAGE, timeout=1800)
        return "built by debootstrap"


def merged_rootfs(ws):
    """The image's layers merged into one plain directory, once (a read-only overlay of
    them, copied out in a mount namespace of its own; one layer is copied as it is)."""
    info = json.loads(ws.ctrun_check("image", "inspect", IMAGE))
    dest, mnt = ws.tmp / "rootfs", ws.tmp / "merge"
    dest.mkdir()
    mnt.mkdir()
    if len(info["layer_dirs"]) == 1:  # overlayfs wants two lower layers without an upper
        subprocess.run(["cp", "-a", info["layer_dirs"][0] + "/.", str(dest)], check=True)
        return dest
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-ec",
                    'mount -t overlay overlay -o ro,lowerdir="$1" "$2"; cp -a "$2/." "$3"',
                    "sh", ":".join(info["layer_dirs"]), str(mnt), str(dest)], check=True)
    return dest


def measure(b):
    a = b.args
    with common.Workspace("boot") as ws:
        source = server_image(ws, a.source_root)
        rootfs = merged_rootfs(ws)
        host = common.PeerHost(ws, rootfs)
        ws.on_cleanup(host.cleanup)
        arms = {"ctrun": CtrunArm(ws)}
        if b.peers.need("systemd-nspawn", "systemd-nspawn", "nsenter"):
            arms["systemd-nspawn"] = NspawnArm(host)
        if b.peers.need("lxc-start", "lxc-start", "lxc-stop"):
            arms["lxc-start"] = LxcArm(host)
        states, stops, problems = {n: [] for n in arms}, {n: [] for n in arms}, []
        starts = {n: [] for n in arms}   # seconds to systemd's own start
        polled = {n: [] for n in arms}   # the same boots, as the polling saw them

        def arm_fn(name):
            arm = arms[name]

            def run(rnd):
                tag = f"b{rnd}{name[:2]}"
                try:
                    dt, to_init, state, _ = arm.boot(tag)
                    states[name].append(state)
                    if to_init is not None and state in BOOTED:
                        starts[name].append(to_init)
                        polled[name].append(POLLED[-1])
                    if state not in BOOTED:
                        problems.append(f"{name} round {rnd}: not booted after "
                                        f"{BOOT_TIMEOUT_S} s ({state})")
                        dt = None
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    problems.append(f"{name} round {rnd}: {e}")
                    dt = None
                finally:
                    s = arm.stop(tag)
                if s is not None and dt is not None:
                    stops[name].append(s)
                return dt
            return run

        # a peer that cannot boot this image here is left out, said once, loudly
        for name in [n for n in arms if n != "ctrun"]:
            try:
                _, _, state, _ = arms[name].boot("probe")
            except (OSError, subprocess.SubprocessError, RuntimeError) as e:
                state = str(e)
            arms[name].stop("probe")
            if state not in BOOTED:
                b.peers.fail(name, f"its server did not boot here ({state})")
                del arms[name]
        if a.warm_monitor:  # an idle container keeps the store's monitor up between boots
            ws.ctrun_check("run", "-d", "--name", "keep", "--net", "none", "busybox", "--",
                           "sleep", "1000000")
        samples, failed, kept = common.rounds({n: arm_fn(n) for n in arms}, a.runs,
                                              a.warmup, progress=1)
        if a.warm_monitor:
            ws.ctrun_check("destroy", "-f", "keep")

        memory = {}
        for name, arm in arms.items():
            tag = f"m{name[:2]}"
            try:
                _, _, state, pid = arm.boot(tag)
                if state in BOOTED:
                    time.sleep(a.settle)
                    procs, sup, kmem = arm.memory(tag, pid)
                    memory[name] = {"processes_pss_kb": procs, "supervisor_pss_kb": sup,
                                    "kmem_kb": kmem, "total_kb": procs + sup + (kmem or 0)}
            finally:
                arm.stop(tag)
        ws.check_clean("after the last server")
    report(b, a, samples, failed, kept, states, stops, memory, problems, source, starts,
           polled)
    return ws.finish(b.name, {"warm_monitor": a.warm_monitor,
                              "samples_ms": common.samples_ms(samples), "failures": failed,
                              "systemd_start_samples_ms": common.samples_ms(starts),
                              "polled_samples_ms": common.samples_ms(polled),
                              "states": states, "stop_samples_ms": common.samples_ms(stops),
                              "memory_kb": memory, "problems": problems, "image": IMAGE,
                              "image_source": source, "target_ratio": TARGET_RATIO,
                              "peers_unavailable": b.peers.unavailable})


def report(b, a, samples, failed, kept, states, stops, memory, problems, source, starts,
           polled):
    print(f"\nboot to `systemctl is-system-running` = running/degraded, {IMAGE} "
          f"({source}), {a.runs} rounds; ctrun's monitor "
          + ("kept up by an idle container too" if a.warm_monitor else
             "and warm server up at each start (the server leaves 30 s after its last "
             "call, the monitor with it)"))
    rows = []
    for n in samples:
        s = common.summary_ms(samples[n]) if samples[n] else None
        st = common.summary_ms(stops[n]) if stops[n] else None
        init = common.summary_ms(starts[n]) if starts[n] else None
        seen = common.summary_ms(polled[n]) if polled[n] else None
        rows.append([n, *(common.fmt_ms(s) if s else ["-"] * 3), failed[n],
                     f"{init['median_ms']:.1f}" if init else "-",
                     f"{seen['median_ms']:.1f}" if seen else "-",
                     f"{st['median_ms']:.0f}" if st else "-",
                     ",".join(sorted(set(states[n]))) or "-"])
    print(common.table(["tool", "median ms", "p10 ms", "p90 ms", "failed", "systemd starts",
                        "polled", "stop ms", "states"], rows))
    med = {n: common.percentile(v, 50) for n, v in samples.items() if v}
    peers = {n: m for n, m in med.items() if n != "ctrun"}
    if "ctrun" in med and peers:
        best = min(peers, key=peers.get)
        common.print_ratio(f"ctrun / {best} (the faster peer)", med["ctrun"] / peers[best],
                           TARGET_RATIO)
        for n in peers:
            d = common.paired(kept, "ctrun", n)
            if d:
                print(f"  ctrun - {n}, paired per round: median {common.percentile(d, 50):+.0f}"
                      f" ms (p10 {common.percentile(d, 10):+.0f}, p90 "
                      f"{common.percentile(d, 90):+.0f})")
    else:
        print("  no ratio: ctrun or every peer has no successful boot")
    mib = lambda kb: f"{kb / 1024:.1f}" if kb is not None else "-"  # noqa: E731
    print(f"\nhost memory per idle booted server after {a.settle:.0f} s (MiB)")
    print(common.table(["tool", "its processes (PSS)", "supervisor (PSS)",
                        "kernel (its memory cgroup)", "total"],
                       [[n, mib(m["processes_pss_kb"]), mib(m["supervisor_pss_kb"]),
                         mib(m["kmem_kb"]), mib(m["total_kb"])] for n, m in memory.items()]))
    common.print_notes([
        "supervisor: ctrun's shared monitor (whole: it serves this one server; its share "
        "falls with the count, see bench_monitor_memory), the systemd-nspawn process, "
        "LXC's monitor (lxc-start -F)",
        "peers boot on a fresh overlay over the merged rootfs, mounted untimed; ctrun "
        "mounts its own overlay inside its timed start",
        "timings are wall-clock on a shared machine: compare within one run",
        "median: to the boot's end by systemd's own clock; systemd starts: to its own start "
        "(the runtime's part); polled: when the 50 ms polling first saw the state (a check: "
        "it lags the end by up to one poll and the poll's own cost)"])
    common.print_list("PROBLEMS seen while booting:", problems)


if __name__ == "__main__":
    b = common.Bench("bench_boot", __doc__, runs=(10, "timed boots per tool"), warmup=1,
                     imports_ctrun=True, tools=("nsenter",))
    b.option("--settle", type=float, default=5.0,
             help="seconds an idle server settles before its memory is read (default 5)")
    b.option("--source-root", default=os.environ.get("CTRUN_ROOT") or "/var/lib/ctrun",
             help="store to take the debian-server image from (default: $CTRUN_ROOT or "
                  "/var/lib/ctrun); built in the benchmark's store when it is not there")
    b.option("--warm-monitor", action="store_true",
             help="also keep an idle busybox container running through the rounds (a "
                  "host already serving servers); the monitor is up at each start anyway, "
                  "as the warm server's parent")
    b.main(measure)
