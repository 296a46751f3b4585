#!/usr/bin/python3
"""Start-up latency: `ctrun run --rm --net none busybox -- true` against `runc run`, `crun run`,
`lxc-execute` and `systemd-nspawn` of the same busybox rootfs (the image ctrun builds, its one
layer), wall time of the whole command.

Runs are interleaved (ctrun, runc, crun, lxc-execute, systemd-nspawn, ctrun, ...) so drift on
the host hits every tool alike; the first --warmup rounds are discarded.  Target: ctrun median
<= 1.0x runc's and < 1.0x systemd-nspawn's; stretch: <= 2.0x lxc-execute's.
lxc-execute runs a minimal config in a private lxcpath (the layer read-only as its root, as
runc's; network type empty; its cgroups below the benchmark's parent).  systemd-nspawn writes
into its root, so each of its runs gets a fresh overlay over the layer (mounted and removed
untimed); it runs with --register=no --keep-unit --private-network, started in a cgroup of
the benchmark's (joined untimed, before its exec).  What either leaves (cgroups, LXC's lock file, nspawn's
propagation dir) is removed after each run, untimed, and counted in the notes.
Run as root:  benchmarks/bench_run.py [--runs 30] [--warmup 3]
"""

import json
import os
import shutil
import subprocess
import sys
from typing import Callable, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_VS_RUNC = 1.0
TARGET_VS_NSPAWN = 1.0      # ctrun < nspawn
STRETCH_VS_LXC = 2.0        # ctrun <= 2x lxc-execute
PEERS = ("lxc-execute", "systemd-nspawn")


class Launch(NamedTuple):
    """One run of an arm: its command, and what goes around it untimed."""
    argv: list
    env: dict = None
    before: Callable = None   # before(pid): the child held before its exec (common.timed)
    done: Callable = None     # done(ok): clean-up after it


class Peer:
    """A system-container tool running /bin/true on the rootfs: read-only as it is, or,
    for a tool that writes into its root, on a fresh overlay of it per run (mounted
    untimed); after each run, untimed, what it left is counted and removed."""
    writable = True

    def __init__(self, host):
        self.host, self.seq = host, 0
        self.left = {}       # what the tool left after a run: in how many runs
        self.wrote = set()   # what it wrote into its root (the overlay's upper dir)

    def launch(self):
        self.seq += 1
        tag = f"{self.name}-{self.seq}"
        root = self.host.overlay(tag) if self.writable else self.host.rootfs
        argv, before = self.prepare(tag, root)

        def done(ok):
            if self.writable:
                up = root.parent / "up"
                self.wrote.update("/" + os.path.relpath(os.path.join(d, f), up)
                                  for d, dirs, files in os.walk(up) for f in dirs + files)
                self.host.unmount(root)
            for what in self.leftovers(tag):
                self.left[what] = self.left.get(what, 0) + 1
            self.forget(tag)
            self.host.rm_cgroup(tag)
        return Launch(argv, before=before, done=done)

    def cgroups_left(self, tag, ours=(), also=()):
        """Cgroups of the run's name (and `also`) that the tool left, the run's name shown
        as RUN; `ours`: those the benchmark made."""
        tree = {}
        for name in (tag, *also):
            tree.update(common.cgroup_tree(name))
        return [f"cgroup {common.CGROUP_PARENT}/{rel.replace(tag, 'RUN', 1)} "
                f"({n} hierarch{'y' if n == 1 else 'ies'})"
                for rel, n in sorted(tree.items()) if rel not in ours]

    def notes(self):
        out = []
        if self.wrote:
            shown = sorted(self.wrote)
            out.append(f"{self.name} wrote into its root (so it gets a writable overlay): "
                       + ", ".join(shown[:8]) + (" ..." if len(shown) > 8 else ""))
        if self.left:
            out.append(f"{self.name} left after its runs (removed untimed by the "
                       "benchmark): " + "; ".join(f"{w} after {n} of {self.seq} runs"
                                                  for w, n in sorted(self.left.items()))
                       + " (its probe counted)")
        return out


class LxcExecute(Peer):
    name = "lxc-execute"
    shown = "lxc-execute -n NAME -P LXCPATH -- /bin/true (minimal config)"
    writable = False   # LXC execs its init (the host's init.lxc.static) by fd: no file in
    #                    the root, which it mounts read-only here (lxc.rootfs.options)

    def __init__(self, host):
        super().__init__(host)
        self.path = host.ws.tmp / "lxc"
        host.ws.on_cleanup(common.lxc_forget, self.path)

    def prepare(self, tag, root):
        common.lxc_config(self.path, tag, root, f"{common.CGROUP_PARENT}/{tag}",
                          "lxc.rootfs.options = ro")   # read-only, as runc's
        return ["lxc-execute", "-n", tag, "-P", str(self.path), "--", "/bin/true"], None

    def leftovers(self, tag):
        return self.cgroups_left(tag, also=(common.LXC_PIVOT,)) + (
            ["its lock file in " + str(common.LXC_LOCKS)]
            if common.lxc_lock(self.path, tag).exists() else [])

    def forget(self, tag):
        shutil.rmtree(self.path / tag, ignore_errors=True)
        common.lxc_forget(self.path, tag)
        common.rm_cgroup_tree(common.LXC_PIVOT)


class Nspawn(Peer):
    name = "systemd-nspawn"
    shown = ("systemd-nspawn --register=no --keep-unit --quiet --private-network -M NAME "
             "-D ROOT /bin/true")

    def machine(self, tag):
        return f"ctrun-bench-{os.getpid()}-{tag.rsplit('-', 1)[1]}"

    def prepare(self, tag, root):
        # --keep-unit: it stays in the cgroup it starts in, which a unit manager would have
        # made; here one of the benchmark's, joined before the clock starts
        dirs = self.host.cgroup(tag)
        return (common.nspawn_argv(self.machine(tag), root, cmd=["/bin/true"]),
                lambda pid: self.host.join(dirs, pid))

    def leftovers(self, tag):
        return self.cgroups_left(tag, ours=(tag,)) + (
            [f"its dir in {common.NSPAWN_PROPAGATE}"]
            if (common.NSPAWN_PROPAGATE / self.machine(tag)).exists() else [])

    def forget(self, tag):
        common.nspawn_forget(self.machine(tag))


# one Python process running the same `run` again and again: every module already loaded,
# its time is the work alone (what a warm command server would leave), as seconds per run
WARM = """
import json, sys, time
from ctrun import cli
args, n = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for i in range(n):
    t = time.perf_counter()
    if cli.main(args) != 0:
        sys.exit("ctrun run failed in-process")
    out.append(time.perf_counter() - t)
print(json.dumps(out))
"""


def warm_runs(args, runs, warmup):
    """Seconds of each in-process run (WARM), the first `warmup` dropped."""
    p = subprocess.run([common.ctrun_python()[0], "-c", WARM, json.dumps(args),
                        str(runs + warmup)], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else
                           f"exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])[warmup:]


def print_ratios(stats, hybrid):
    """The ratios of the medians to ctrun's, and the target's verdict."""
    ratios = {}
    med = {n: s["median_ms"] for n, s in stats.items()}
    print("\nratios of medians:")
    if "ctrun" in med and "runc" in med:
        r = med["ctrun"] / med["runc"]
        ratios["ctrun/runc"] = r
        common.print_ratio("ctrun/runc", r, TARGET_VS_RUNC, of="runc")
    if "ctrun" in med and "crun" in med:
        r = med["ctrun"] / med["crun"]
        ratios["ctrun/crun"] = r
        common.print_ratio("ctrun/crun", r, note=" (crun timed inside its unshare "
                           "wrapper)" if hybrid else "")
        if "unshare wrapper" in med and med["crun"] > med["unshare wrapper"]:
            bare = med["crun"] - med["unshare wrapper"]
            ratios["ctrun/crun_minus_wrapper"] = med["ctrun"] / bare
            print(f"  ctrun/crun = {med['ctrun'] / bare:.2f}x if the wrapper's median "
                  f"({med['unshare wrapper']:.1f} ms) is subtracted from crun's "
                  f"(estimate: {bare:.1f} ms)")
    if "ctrun" in med and "lxc-execute" in med:
        r = ratios["ctrun/lxc-execute"] = med["ctrun"] / med["lxc-execute"]
        common.print_ratio("ctrun/lxc-execute", r, STRETCH_VS_LXC, of="lxc-execute, stretch")
    if "ctrun" in med and "systemd-nspawn" in med:
        r = ratios["ctrun/systemd-nspawn"] = med["ctrun"] / med["systemd-nspawn"]
        common.print_ratio("ctrun/systemd-nspawn", r, TARGET_VS_NSPAWN, op="<",
                           of="systemd-nspawn")
    for floor in ("python floor", "ctrun CLI floor", "ctrun, warm in-process"):
        if "ctrun" in med and floor in med:
            print(f"  {floor}: {med[floor]:.1f} ms = {med[floor] / med['ctrun']:.0%} of "
                  f"ctrun run's {med['ctrun']:.1f} ms")
    return ratios


def measure(b):
    a = b.args
    peers = b.peers
    oci_tools = [t for t in ("runc", "crun") if peers.need(t, t)]
    hybrid = common.cgroup_layout() == "hybrid"
    peer_kinds = [k for k in (LxcExecute, Nspawn) if peers.need(k.name, k.name)]

    with common.Workspace("run") as ws:
        rootfs = ws.build_image()
        bundle, spec = (common.oci_bundle(ws, rootfs, ["/bin/true"], oci_tools[0])
                        if oci_tools else (None, None))
        seq = [0]
        host = common.PeerHost(ws, rootfs)
        ws.on_cleanup(host.cleanup)
        sys_peers = {k.name: k(host) for k in peer_kinds}

        def oci(tool, root):
            def launch():
                seq[0] += 1
                cid = f"bench-{tool}-{os.getpid()}-{seq[0]}"
                common.oci_config(bundle, spec, cid)
                cmd = [tool, "--root", str(root), "run", "--bundle", str(bundle), cid]
                return Launch(common.crun_wrap(cmd) if tool == "crun" else cmd,
                              done=lambda ok: ok or cleanup_oci(tool, cid))
            return launch

        def fixed(cmd, env=None):
            return lambda: Launch(cmd, env)

        ctrun_cmd = ws.ctrun_cmd("run", "--rm", "--net", "none", "busybox", "--", "true")
        tools = {  # name -> (argv factory, shown command)
            "ctrun": (fixed(ctrun_cmd), "ctrun run --rm --net none busybox -- true"),
            "runc": (oci("runc", ws.runc_root), "runc run --bundle B ID"),
            "crun": (oci("crun", ws.crun_root),
                     ("unshare -m sh -c 'umount /sys/fs/cgroup/unified; exec crun run "
                      "--bundle B ID'") if hybrid else "crun run --bundle B ID"),
            **{k.name: (k.name in sys_peers and sys_peers[k.name].launch, k.shown)
               for k in (LxcExecute, Nspawn)},
        }
        if hybrid:
            tools["unshare wrapper"] = (fixed(common.crun_wrap(["/bin/true"])),
                                        "unshare -m sh -c 'umount ...; exec /bin/true'")
        py = common.ctrun_python()
        tools["python floor"] = (fixed([*py, "-c", "pass"]), f"{' '.join(py)} -c pass")
        empty = ws.tmp / "empty-store"
        empty.mkdir()
        # (a run --rm with bytecode caching off is no longer an arm: the compiled client's
        # calls are served by a warm server, which loaded its bytecode once)
        tools["ctrun CLI floor"] = (fixed(ws.ctrun_cmd("--root", str(empty), "list")),
                                    "ctrun --root EMPTY list")

        def cleanup_oci(name, cid):
            root = ws.runc_root if name == "runc" else ws.crun_root
            cmd = [name, "--root", str(root), "delete", "-f", cid]
            subprocess.run(common.crun_wrap(cmd) if name == "crun" else cmd,
                           capture_output=True, timeout=30)

        # one untimed probe each: a tool that cannot run here is reported, not timed
        skipped = {}
        for name, (factory, _) in tools.items():
            if name in ("runc", "crun", *PEERS) and not peers.ok(name):
                skipped[name] = peers.unavailable[name]
                continue
            launch = factory()
            ok = False
            try:
                ok, msg = common.probe(launch.argv, env=launch.env, before=launch.before)
            finally:
                if launch.done:
                    launch.done(ok)
            if not ok:
                if name == "ctrun":
                    raise RuntimeError(f"ctrun run failed: {msg}")
                skipped[name] = msg
                if name in ("runc", "crun", *PEERS):
                    peers.fail(name, msg)
        if "crun" in skipped and "unshare wrapper" in tools:
            skipped["unshare wrapper"] = "crun's wrapper: measured only with crun"

        def arm(name):
            def run_once(rnd):
                launch = tools[name][0]()
                rc = None
                try:
                    dt, rc = common.timed(launch.argv, env=launch.env, before=launch.before)
                finally:
                    if launch.done:
                        launch.done(rc == 0)
                return dt if rc == 0 else None
            return run_once

        active = [n for n in tools if n not in skipped]
        print(f"bench_run: {a.runs} runs + {a.warmup} warm-up rounds of {', '.join(active)} "
              f"(interleaved)", flush=True)
        samples, failures, _ = common.rounds({n: arm(n) for n in active}, a.runs, a.warmup,
                                             order=common.shuffled, progress=10)

        print("  ctrun in-process (every module loaded), "
              f"{a.runs} runs after {a.warmup}", flush=True)
        warm_shown = "ctrun.cli.main(['run', '--rm', '--net', 'none', 'busybox', '--', " \
                     "'true']) in one process"
        try:
            samples["ctrun, warm in-process"] = warm_runs(
                ["run", "--rm", "--net", "none", "busybox", "--", "true"], a.runs, a.warmup)
            failures["ctrun, warm in-process"] = 0
        except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
            skipped["ctrun, warm in-process"] = str(e)
        tools["ctrun, warm in-process"] = (None, warm_shown)
        ws.check_clean("after the runs")
        shown = {n: t[1] for n, t in tools.items()}
        stats = common.report_arms("tool", list(tools), samples, failures, shown, skipped)

        ratios = print_ratios(stats, hybrid)

        notes = [
            "all tools run the same busybox rootfs (ctrun's image): runc/crun mount it "
            "read-only as their root; ctrun mounts a per-container writable overlay over it",
            "runc/crun use runc's default spec (default namespaces, no seccomp profile); "
            "ctrun applies its own seccomp filter, capability set and /etc files",
            "ctrun's time covers create + start + wait + destroy (--rm); runc/crun run "
            "likewise create, start, wait and delete",
            "context rows (not targets): 'python floor' is the interpreter ctrun runs on "
            "starting and exiting; 'ctrun CLI floor' is the compiled client handing a call "
            "it does not serve (a store not made yet) to the Python one, which lists it; "
            "'ctrun, warm in-process' is one Python process running the same run again and "
            "again with every module loaded: the work alone, without interpreter start-up "
            "or imports (the floor of any warm-server design)",
            "the arms run in a new random order every round (seeded by the round): each arm "
            "follows every other alike (a run right after another of the same runtime meets "
            "the kernel's deferred clean-up of the last one)",
            "ctrun runs with its .pyc files cached (a private PYTHONPYCACHEPREFIX), as on a "
            "user's host" + (f"; PYTHONDONTWRITEBYTECODE={common.ENV_DONTWRITEBYTECODE} from "
                             "this environment was overridden for it"
                             if common.ENV_DONTWRITEBYTECODE else ""),
            "each runc/crun container gets its own cgroup under /" + common.CGROUP_PARENT
            + ", as ctrun's do",
        ]
        measured = [n for n in sys_peers if n not in skipped]
        if measured:
            notes.append(" and ".join(measured) + " get" + ("s" if len(measured) == 1 else "")
                         + " a network namespace with only lo, like ctrun --net none")
        if "lxc-execute" in measured:
            notes.append(
                "lxc-execute: a minimal config in a private lxcpath (the layer read-only as "
                "its root, as runc's; network type empty; AppArmor unconfined; its cgroups "
                "below /" + common.CGROUP_PARENT + "); the host's init.lxc.static, exec'd by "
                "fd, is PID 1")
        if "systemd-nspawn" in measured:
            notes += [
                "systemd-nspawn writes into its root (listed below), so each of its runs gets "
                "a fresh writable overlay over the layer, mounted and unmounted untimed "
                "(ctrun's overlay is inside its time)",
                "systemd-nspawn: no machined here (PID 1 is not systemd), so --register=no "
                "--keep-unit; it is started in a cgroup of the benchmark's below /"
                + common.CGROUP_PARENT + ", joined untimed while a shell holds it before its "
                "exec (a unit manager would have placed it), so its time starts at that exec"]
        for peer in sys_peers.values():
            notes += peer.notes()
        if hybrid:
            notes.append("hybrid cgroup host: crun 1.8 refuses it, so crun runs in a "
                         "private mount namespace with /sys/fs/cgroup/unified unmounted; its "
                         "time includes that wrapper, measured alone as 'unshare wrapper'")
        common.print_notes(notes)
        result = {
            "params": {"runs": a.runs, "warmup": a.warmup},
            "commands": shown,
            "stats": stats, "failures": failures, "not_measured": skipped,
            "peers_unavailable": peers.unavailable,
            "ratios": ratios, "target": {"ctrun/runc": f"<= {TARGET_VS_RUNC}",
                                         "ctrun/systemd-nspawn": f"< {TARGET_VS_NSPAWN}",
                                         "ctrun/lxc-execute": f"<= {STRETCH_VS_LXC} "
                                                              "(stretch)"},
            "samples_ms": common.samples_ms(samples),
            "peers_left": {n: p.left for n, p in sys_peers.items()},
            "versions": {"runc": common.tool_version(["runc", "--version"]),
                         "crun": common.tool_version(["crun", "--version"]),
                         "lxc-execute": common.tool_version(["lxc-execute", "--version"]),
                         "systemd-nspawn": common.tool_version(["systemd-nspawn",
                                                                "--version"])},
            "notes": notes}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    common.Bench("bench_run", __doc__, runs=(30, "measured runs per tool"), warmup=3,
                 tools=("unshare",)).main(measure)
