#!/usr/bin/python3
"""Light verbs: `ctrun exec CT -- true` against `runc exec ID true`, and `ctrun list`,
`ctrun inspect Y` and `ctrun stop Y` of an already stopped container Y, wall time of each
command.

Set up untimed: the busybox image; one detached container running `sleep 1000`
(`ctrun run -d --net none --name CT busybox -- sleep 1000`); one runc container running
`sleep 1000` on the same rootfs (runc's default spec, the image's layer read-only, its cgroup
below the benchmark's parent, its state in a private --root); one stopped container Y
(`ctrun run --net none --name Y busybox -- true`, kept).  The five commands then run in
interleaved rounds, their order rotating every round; the first --warmup rounds are
discarded.  `ctrun stop` of a stopped container is refused (it is not running); that refusal
is what is timed, its exit code checked against the one an untimed probe gets.
Targets: ctrun exec <= 1.0x runc exec; list, inspect and stop each < 15 ms.
Run as root:  benchmarks/bench_verbs.py [--runs 20] [--warmup 3]
"""

import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_VS_RUNC = 1.0
TARGET_MS = 15.0
CT, STOPPED = "bench-exec", "bench-stopped"
RUNC_ID = f"bench-exec-{os.getpid()}"
ABSOLUTE = ("ctrun list", "ctrun inspect (stopped)", "ctrun stop (stopped)")


def runc_container(ws, rootfs):
    """Create and start the runc container running `sleep 1000` (untimed)."""
    bundle, spec = common.oci_bundle(ws, rootfs, ["sleep", "1000"])
    common.oci_config(bundle, spec, RUNC_ID)
    rc = ["runc", "--root", str(ws.runc_root)]
    # no pipe for its output: the container's init would inherit it and hold it open
    with open(ws.tmp / "runc.err", "w+") as err:
        for verb in (["create", "--bundle", str(bundle), RUNC_ID], ["start", RUNC_ID]):
            p = subprocess.run(rc + verb, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=err, timeout=60)
            if p.returncode != 0:
                err.seek(0)
                return f"runc {verb[0]} exited {p.returncode}: {err.read().strip()[-300:]}"
    return None


def stop_refusal(ws):
    """(exit code, message) of `ctrun stop` of the stopped container, untimed: 0, or the
    refusal of a container that is not running; anything else is an error."""
    p = subprocess.run(ws.ctrun_cmd("stop", STOPPED), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
    msg = msg[-1] if msg else ""
    if p.returncode != 0 and "not running" not in msg:
        raise RuntimeError(f"ctrun stop {STOPPED} (stopped) failed ({p.returncode}): {msg}")
    return p.returncode, msg


def measure(b):
    a = b.args
    peers = b.peers
    with common.Workspace("verbs") as ws:
        rootfs = ws.build_image()
        ws.ctrun_check("run", "-d", "--net", "none", "--name", CT, "busybox", "--",
                       "sleep", "1000")
        ws.ctrun_check("run", "--net", "none", "--name", STOPPED, "busybox", "--", "true")
        state = json.loads(ws.ctrun_check("inspect", STOPPED))["state"]
        if state != "stopped":
            raise RuntimeError(f"container {STOPPED} is {state}, not stopped")
        stop_rc, stop_msg = stop_refusal(ws)

        cmds = {  # arm -> (argv, exit code it must give, command shown)
            "ctrun exec": (ws.ctrun_cmd("exec", CT, "--", "true"), 0,
                           f"ctrun exec {CT} -- true"),
            "runc exec": (["runc", "--root", str(ws.runc_root), "exec", RUNC_ID, "true"], 0,
                          "runc exec ID true (runc container running sleep 1000)"),
            "ctrun list": (ws.ctrun_cmd("list"), 0, "ctrun list (1 running, 1 stopped)"),
            "ctrun inspect (stopped)": (ws.ctrun_cmd("inspect", STOPPED), 0,
                                        f"ctrun inspect {STOPPED}"),
            "ctrun stop (stopped)": (ws.ctrun_cmd("stop", STOPPED), stop_rc,
                                     f"ctrun stop {STOPPED} (exit {stop_rc})"),
        }
        skipped = {}
        if peers.need("runc", "runc"):
            why = runc_container(ws, rootfs)
            if why is None:
                ok, msg = common.probe(cmds["runc exec"][0])
                why = None if ok else msg
            if why:
                peers.fail("runc", why)
        if not peers.ok("runc"):
            skipped["runc exec"] = peers.unavailable["runc"]
        ok, msg = common.probe(cmds["ctrun exec"][0])
        if not ok:
            raise RuntimeError(f"ctrun exec {CT} -- true failed: {msg}")

        def arm(argv, code):
            def run(rnd):
                dt, rc = common.timed(argv)
                return dt if rc == code else None
            return run

        active = [n for n in cmds if n not in skipped]
        print(f"bench_verbs: {a.runs} rounds + {a.warmup} warm-up of {', '.join(active)} "
              "(interleaved, order rotating)", flush=True)
        samples, failed, kept = common.rounds(
            {n: arm(cmds[n][0], cmds[n][1]) for n in active}, a.runs, a.warmup, progress=10)

        ws.destroy_all([CT, STOPPED])
        if shutil.which("runc"):
            subprocess.run(["runc", "--root", str(ws.runc_root), "delete", "-f", RUNC_ID],
                           capture_output=True, timeout=60)
        ws.check_clean("after the runs")

        shown = {n: c[2] for n, c in cmds.items()}
        stats = common.report_arms("arm", list(cmds), samples, failed, shown, skipped)
        ratios, verdicts = report(stats, kept)
        notes = [
            "ctrun: " + common.ctrun_bin() + ", as users run it: through the store's warm "
            "server" + (f" (CTRUN_SERVER={os.environ['CTRUN_SERVER']} here)"
                        if os.environ.get("CTRUN_SERVER") else "")
            + "; its .pyc files cached",
            f"{CT} runs `sleep 1000` detached (--net none); runc's container runs the same "
            "on the same rootfs, read-only, runc's default spec; both exec with stdin from "
            "/dev/null and their output discarded",
            f"{STOPPED} ran `true` to its end (ctrun run, no --rm) and stays stopped; ctrun "
            f"stop of it exits {stop_rc}" + (f" ({stop_msg})" if stop_msg else "")
            + ", which is what each timed run must give",
            "ctrun list lists the running containers: one here",
            "arms rotate their order every round; warm-up rounds are discarded",
        ]
        common.print_notes(notes)
        result = {
            "params": {"runs": a.runs, "warmup": a.warmup},
            "commands": shown, "stats": stats, "failures": failed, "not_measured": skipped,
            "peers_unavailable": peers.unavailable, "ratios": ratios, "verdicts": verdicts,
            "targets": {"ctrun exec / runc exec": f"<= {TARGET_VS_RUNC}",
                        **{n: f"< {TARGET_MS:.0f} ms" for n in ABSOLUTE}},
            "stop_of_stopped": {"exit_code": stop_rc, "message": stop_msg},
            "samples_ms": common.samples_ms(samples),
            "versions": {"runc": common.tool_version(["runc", "--version"])},
            "notes": notes}
    return ws.finish(b.name, result)


def report(stats, kept):
    """The ratio and the absolute targets, with their verdicts."""
    ratios, verdicts = {}, {}
    med = {n: s["median_ms"] for n, s in stats.items()}
    print("\nratios of medians:")
    if "ctrun exec" in med and "runc exec" in med:
        r = ratios["ctrun exec / runc exec"] = med["ctrun exec"] / med["runc exec"]
        verdicts["ctrun exec / runc exec"] = common.print_ratio(
            "ctrun exec / runc exec", r, TARGET_VS_RUNC, of="runc exec")
        d = common.spread(common.paired(kept, "ctrun exec", "runc exec"))
        print(f"  per-round paired difference: median {d['median']:+.1f} ms, p10 "
              f"{d['p10']:+.1f}, p90 {d['p90']:+.1f}")
    else:
        print("  ctrun exec / runc exec: not measured (an arm had no successful run)")
    print("\nabsolute targets (median):")
    for n in ABSOLUTE:
        if n in med:
            v = verdicts[n] = common.verdict(med[n] < TARGET_MS)
            print(f"  {n} = {med[n]:.1f} ms   (target < {TARGET_MS:.0f} ms: {v})")
        else:
            print(f"  {n}: every run failed")
    return ratios, verdicts


if __name__ == "__main__":
    common.Bench("bench_verbs", __doc__, runs=(20, "measured rounds per command"),
                 warmup=3).main(measure)
