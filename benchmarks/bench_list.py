#!/usr/bin/python3
"""Listing at scale: wall time of `ctrun list --all` and `ctrun list` with 500 containers.

The containers are created in-process through the Python API (creation speed is not what
is measured) and never started, so they are all in state "created".  Each listing is timed
through the CLI, median of --runs runs after --warmup discarded ones, interleaved.
Target: < 300 ms.  Run as root:  benchmarks/bench_list.py [--count 500] [--runs 10]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_MS = 300.0


def measure(b):
    a = b.args
    from ctrun.api import Ctrun

    with common.Workspace("list") as ws:
        ws.build_image()
        ct = Ctrun(str(ws.store))
        cmds = {"ctrun list --all": ws.ctrun_cmd("list", "--all"),
                "ctrun list": ws.ctrun_cmd("list")}
        full = f"{a.count} created"
        timed_cmds = common.against_empty(cmds, full, ws.empty_store())

        print(f"bench_list: creating {a.count} containers through the Python API", flush=True)
        names = [f"c{i}" for i in range(a.count)]
        t0 = time.perf_counter()
        for i, n in enumerate(names):
            ct.create(n, net="none")  # the listing is measured, not the network
            if (i + 1) % 100 == 0:
                print(f"  {i + 1}/{a.count}", flush=True)
        create_s = time.perf_counter() - t0

        out = ws.ctrun_check("list", "--all")
        listed = len(out.strip().splitlines()) - 1  # minus the header
        if listed != a.count:
            raise RuntimeError(f"ctrun list --all shows {listed} containers, expected {a.count}")

        print(f"bench_list: timing {a.runs} runs (+{a.warmup} warm-up) of each listing, "
              "full and empty store interleaved", flush=True)
        samples, failed, _ = common.interleave(timed_cmds, a.runs, a.warmup)

        print(f"bench_list: destroying {a.count} containers through the Python API", flush=True)
        t0 = time.perf_counter()
        for n in names:
            ct.destroy(n)
        destroy_s = time.perf_counter() - t0
        ws.check_clean("after destroying every container")

        stats = common.scale_report(timed_cmds, samples, failed,
                                    lambda label, store: store == full, TARGET_MS, sort=True)
        print("\nratios of medians (full / empty store):")
        ratios = {}
        for label in cmds:
            m_full = stats[f"{label} [{full}]"]["median_ms"]
            m_empty = stats[f"{label} [empty store]"]["median_ms"]
            ratios[label] = m_full / m_empty
            print(f"  {label}: {ratios[label]:.2f}x  "
                  f"(~{(m_full - m_empty) / a.count * 1000:.0f} us per container)")
        for label in cmds:
            m = stats[f"{label} [{full}]"]["median_ms"]
            print(f"  {label} at {a.count}: {m / TARGET_MS:.2f}x the {TARGET_MS:.0f} ms target")
        print(f"\n(informational) API create of {a.count}: {create_s:.1f} s "
              f"({create_s / a.count * 1000:.1f} ms each); API destroy: {destroy_s:.1f} s "
              f"({destroy_s / a.count * 1000:.1f} ms each)")
        result = {"params": {"count": a.count, "runs": a.runs, "warmup": a.warmup},
                  "target_ms": TARGET_MS, "stats": stats, "ratios_full_over_empty": ratios,
                  "samples_ms": common.samples_ms({f"{k[0]} [{k[1]}]": v
                                                   for k, v in samples.items()}),
                  "api_create_s": create_s, "api_destroy_s": destroy_s,
                  "notes": ["page cache warm (warm-up runs discarded)",
                            "the empty-store rows are the same commands with --root pointing "
                            "at an empty store, timed in the same interleaved rounds",
                            "all containers are in state 'created'; `ctrun list` still "
                            "reads every container to find the running ones"]}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    common.scale_bench("bench_list", __doc__, 500, "containers").main(measure)
