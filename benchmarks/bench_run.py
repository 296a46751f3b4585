#!/usr/bin/python3
"""Start-up latency: `ctrun run --rm --net none busybox -- true` against `runc run` and
`crun run` of the same busybox rootfs (the image ctrun builds), wall time of the whole command.

Runs are interleaved (ctrun, runc, crun, ctrun, ...) so drift on the host hits every tool
alike; the first --warmup rounds are discarded.  Target: ctrun median <= 1.0x runc's.
Run as root:  benchmarks/bench_run.py [--runs 30] [--warmup 3]
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_VS_RUNC = 1.0


def make_bundle(ws, rootfs, tool):
    """An OCI bundle whose config is `tool spec`'s default (runc's where it is installed),
    edited to run /bin/true."""
    bundle = ws.tmp / "bundle"
    bundle.mkdir()
    subprocess.run([tool, "spec", "--bundle", str(bundle)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["root"] = {"path": str(rootfs), "readonly": True}
    return bundle, spec


def write_spec(bundle, spec, cid):
    # a cgroup per container under the benchmark parent, like ctrun's ctrun-bench/NAME
    spec["linux"]["cgroupsPath"] = f"/{common.CGROUP_PARENT}/{cid}"
    (bundle / "config.json").write_text(json.dumps(spec))


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
    if "ctrun" in med and "ctrun, no .pyc" in med:
        print(f"  ctrun without cached bytecode: {med['ctrun, no .pyc']:.1f} ms "
              f"(+{med['ctrun, no .pyc'] - med['ctrun']:.1f} ms)")
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

    with common.Workspace("run") as ws:
        rootfs = ws.build_image()
        bundle, spec = make_bundle(ws, rootfs, oci_tools[0]) if oci_tools else (None, None)
        seq = [0]

        def oci(tool, root):
            def argv():
                seq[0] += 1
                cid = f"bench-{tool}-{os.getpid()}-{seq[0]}"
                write_spec(bundle, spec, cid)
                cmd = [tool, "--root", str(root), "run", "--bundle", str(bundle), cid]
                return cid, (common.crun_wrap(cmd) if tool == "crun" else cmd), None
            return argv

        def fixed(cmd, env=None):
            return lambda: (None, cmd, env)

        ctrun_cmd = ws.ctrun_cmd("run", "--rm", "--net", "none", "busybox", "--", "true")
        tools = {  # name -> (argv factory, shown command)
            "ctrun": (fixed(ctrun_cmd), "ctrun run --rm --net none busybox -- true"),
            "runc": (oci("runc", ws.runc_root), "runc run --bundle B ID"),
            "crun": (oci("crun", ws.crun_root),
                     ("unshare -m sh -c 'umount /sys/fs/cgroup/unified; exec crun run "
                      "--bundle B ID'") if hybrid else "crun run --bundle B ID"),
        }
        if hybrid:
            tools["unshare wrapper"] = (fixed(common.crun_wrap(["/bin/true"])),
                                        "unshare -m sh -c 'umount ...; exec /bin/true'")
        py = common.ctrun_python()
        tools["python floor"] = (fixed([*py, "-c", "pass"]), f"{' '.join(py)} -c pass")
        empty = ws.tmp / "empty-store"
        empty.mkdir()
        tools["ctrun CLI floor"] = (fixed(ws.ctrun_cmd("--root", str(empty), "list")),
                                    "ctrun --root EMPTY list")
        # what ctrun costs when Python may not cache its bytecode (PYTHONDONTWRITEBYTECODE)
        # (no PYTHONPYCACHEPREFIX: the standard library's own __pycache__ is still used)
        nopyc = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
        nopyc["PYTHONDONTWRITEBYTECODE"] = "1"
        tools["ctrun, no .pyc"] = (
            fixed(ctrun_cmd, nopyc),
            "PYTHONDONTWRITEBYTECODE=1 ctrun run --rm --net none busybox -- true")

        def cleanup_oci(name, cid):
            root = ws.runc_root if name == "runc" else ws.crun_root
            cmd = [name, "--root", str(root), "delete", "-f", cid]
            subprocess.run(common.crun_wrap(cmd) if name == "crun" else cmd,
                           capture_output=True, timeout=30)

        # one untimed probe each: a tool that cannot run here is reported, not timed
        skipped = {}
        for name, (factory, _) in tools.items():
            if name in ("runc", "crun") and not peers.ok(name):
                skipped[name] = peers.unavailable[name]
                continue
            cid, argv, env = factory()
            ok, msg = common.probe(argv, env=env)
            if not ok:
                if cid:
                    cleanup_oci(name, cid)
                if name == "ctrun":
                    raise RuntimeError(f"ctrun run failed: {msg}")
                skipped[name] = msg
                if name in ("runc", "crun"):
                    peers.fail(name, msg)
        if "crun" in skipped and "unshare wrapper" in tools:
            skipped["unshare wrapper"] = "crun's wrapper: measured only with crun"

        def arm(name):
            def run_once(rnd):
                cid, argv, env = tools[name][0]()
                dt, rc = common.timed(argv, env=env)
                if rc != 0 and cid:
                    cleanup_oci(name, cid)
                return dt if rc == 0 else None
            return run_once

        active = [n for n in tools if n not in skipped]
        print(f"bench_run: {a.runs} runs + {a.warmup} warm-up rounds of {', '.join(active)} "
              f"(interleaved)", flush=True)
        samples, failures, _ = common.rounds({n: arm(n) for n in active}, a.runs, a.warmup,
                                             order=common.fixed, progress=10)

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
        stats = {n: common.summary_ms(s) for n, s in samples.items() if s}
        shown = {n: t[1] for n, t in tools.items()}
        print()
        common.arm_table("tool", list(tools), stats, failures, shown, skipped)
        common.print_not_measured(skipped)

        ratios = print_ratios(stats, hybrid)

        notes = [
            "all tools run the same busybox rootfs (ctrun's image): runc/crun mount it "
            "read-only as their root; ctrun mounts a per-container writable overlay over it",
            "runc/crun use runc's default spec (default namespaces, no seccomp profile); "
            "ctrun applies its own seccomp filter, capability set and /etc files",
            "ctrun's time covers create + start + wait + destroy (--rm); runc/crun run "
            "likewise create, start, wait and delete",
            "context rows (not targets): 'python floor' is the interpreter ctrun runs on "
            "starting and exiting; 'ctrun CLI floor' is ctrun's start-up plus a listing of "
            "an empty store; 'ctrun, no .pyc' is ctrun run with Python bytecode caching off; "
            "'ctrun, warm in-process' is one Python process running the same run again and "
            "again with every module loaded: the work alone, without interpreter start-up "
            "or imports (the floor of any warm-server design)",
            "ctrun runs with its .pyc files cached (a private PYTHONPYCACHEPREFIX), as on a "
            "user's host" + (f"; PYTHONDONTWRITEBYTECODE={common.ENV_DONTWRITEBYTECODE} from "
                             "this environment was overridden for it"
                             if common.ENV_DONTWRITEBYTECODE else ""),
            "each runc/crun container gets its own cgroup under /" + common.CGROUP_PARENT
            + ", as ctrun's do",
        ]
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
            "ratios": ratios, "target": {"ctrun/runc": f"<= {TARGET_VS_RUNC}"},
            "samples_ms": common.samples_ms(samples),
            "versions": {"runc": common.tool_version(["runc", "--version"]),
                         "crun": common.tool_version(["crun", "--version"])},
            "notes": notes}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    common.Bench("bench_run", __doc__, runs=(30, "measured runs per tool"), warmup=3,
                 tools=("unshare",)).main(measure)
