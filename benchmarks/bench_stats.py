#!/usr/bin/python3
"""Accounting at scale: wall time of `ctrun stats --format json` with 100 running
containers, and of `ctrun list` alongside it.

The containers (`sleep 100000` in busybox, detached, no network) are started in-process
through the Python API (start-up speed is not measured here).  Each command is timed
through the CLI, median of --runs runs after --warmup discarded ones, interleaved with the
same commands against an empty store.  Target: `ctrun stats` < 500 ms.  ctrun stats samples every
container twice, 0.25 s apart, to compute CPU percentages: that interval is in the figure
by design.  Run as root:  benchmarks/bench_stats.py [--count 100] [--runs 10]
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_MS = 500.0


def check_stats_output(ws, names):
    """One untimed `ctrun stats --format json`: every container, with a CPU percentage."""
    p = subprocess.run(ws.ctrun_cmd("stats", "--format", "json"), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"`ctrun stats --format json` failed ({p.returncode}): "
                           f"{p.stderr.strip()}")
    data = json.loads(p.stdout)
    missing = sorted(set(names) - set(data))
    if missing:
        raise RuntimeError(f"ctrun stats left out {len(missing)} running containers, e.g. "
                           f"{', '.join(missing[:5])}")
    no_cpu = [n for n in names if "percent" not in data[n].get("cpu", {})]
    if no_cpu:
        raise RuntimeError(f"ctrun stats has no cpu percent for {', '.join(no_cpu[:5])}")
    return len(p.stdout)


def measure(b):
    a = b.args
    from ctrun.api import Ctrun
    from ctrun.stats import INTERVAL

    with common.Workspace("stats") as ws:
        ws.build_image()
        ct = Ctrun(str(ws.store))
        cmds = {"ctrun stats --format json": ws.ctrun_cmd("stats", "--format", "json"),
                "ctrun stats": ws.ctrun_cmd("stats"),
                "ctrun list": ws.ctrun_cmd("list")}
        full = f"{a.count} running"
        timed_cmds = common.against_empty(cmds, full, ws.empty_store())

        print(f"bench_stats: starting {a.count} detached containers through the Python API",
              flush=True)
        names = [f"s{i}" for i in range(a.count)]
        t0 = time.perf_counter()
        for i, n in enumerate(names):
            ct.run(image="busybox", cmd=["sleep", "100000"], name=n, detach=True, net="none")
            if (i + 1) % 25 == 0:
                print(f"  {i + 1}/{a.count}", flush=True)
        start_s = time.perf_counter() - t0

        running = [r for r in ct.list() if r.get("state") == "running"]
        if len(running) != a.count:
            raise RuntimeError(f"{len(running)} containers are running, expected {a.count}")
        out_bytes = check_stats_output(ws, names)

        print(f"bench_stats: timing {a.runs} runs (+{a.warmup} warm-up) of each command, "
              "full and empty store interleaved", flush=True)
        samples, failed, _ = common.interleave(timed_cmds, a.runs, a.warmup)

        # what one pass over every container costs, without the CLI and the sleep
        api_pass = []
        for _ in range(a.runs):
            t = time.perf_counter()
            ct.stats()
            api_pass.append(time.perf_counter() - t)

        print(f"bench_stats: destroying {a.count} containers through the Python API",
              flush=True)
        t0 = time.perf_counter()
        for n in names:
            ct.destroy(n, force=True)
        destroy_s = time.perf_counter() - t0
        ws.check_clean("after destroying every container")

    stats = common.scale_report(
        timed_cmds, samples, failed,
        lambda label, store: label == "ctrun stats --format json" and store == full, TARGET_MS)
    full_ms = stats[f"ctrun stats --format json [{full}]"]["median_ms"]
    empty_ms = stats["ctrun stats --format json [empty store]"]["median_ms"]
    api = common.summary_ms(api_pass)
    interval_ms = INTERVAL * 1000
    print(f"\n  ctrun stats samples every container twice, {interval_ms:.0f} ms apart (CPU % "
          f"needs two readings): {interval_ms:.0f} ms of every stats figure is that interval, "
          "by design")
    print(f"  ctrun stats --format json at {a.count}: {full_ms:.1f} ms = "
          f"{full_ms / TARGET_MS:.2f}x the {TARGET_MS:.0f} ms target; "
          f"{full_ms - interval_ms:.1f} ms without the interval")
    print(f"  what {a.count} containers add (full - empty store): {full_ms - empty_ms:.1f} ms, "
          f"~{(full_ms - empty_ms) / a.count * 1000:.0f} us per container (two readings each)")
    print(f"  one in-process pass, Ctrun.stats() over {a.count}: median {api['median_ms']:.1f} "
          f"ms (p10 {api['p10_ms']:.1f}, p90 {api['p90_ms']:.1f})")
    print(f"  ctrun list with {a.count} running: "
          f"{stats[f'ctrun list [{full}]']['median_ms']:.1f} ms (context, no target)")
    print(f"\n(informational) API run -d of {a.count}: {start_s:.1f} s "
          f"({start_s / a.count * 1000:.0f} ms each); API destroy --force: {destroy_s:.1f} s "
          f"({destroy_s / a.count * 1000:.0f} ms each); stats JSON output {out_bytes} bytes")

    notes = ["page cache warm (warm-up runs discarded)",
             f"ctrun stats reads every container, sleeps {INTERVAL} s and reads them again "
             "(ctrun/stats.py INTERVAL): the sleep is in every stats figure, empty store too",
             "the empty-store rows are the same commands with --root pointing at an empty "
             "store, timed in the same interleaved rounds",
             "the containers run `sleep 100000` in busybox, idle, with no network; started "
             "with Ctrun.run(detach=True, net='none') in-process and destroyed with "
             "Ctrun.destroy(force=True)"]
    result = {"params": {"count": a.count, "runs": a.runs, "warmup": a.warmup},
              "target_ms": TARGET_MS, "sampling_interval_ms": interval_ms, "stats": stats,
              "commands": {f"{k[0]} [{k[1]}]": " ".join(v) for k, v in timed_cmds.items()},
              "api_stats_pass_ms": api,
              "samples_ms": common.samples_ms({f"{k[0]} [{k[1]}]": v
                                               for k, v in samples.items()}),
              "api_run_detach_s": start_s, "api_destroy_s": destroy_s,
              "stats_json_bytes": out_bytes, "notes": notes,
              "ctrun_imported_from": os.path.dirname(sys.modules["ctrun"].__file__)}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    common.scale_bench("bench_stats", __doc__, 100, "running containers").main(measure)
