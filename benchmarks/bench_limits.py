#!/usr/bin/python3
"""Cost of resource limits at start: `ctrun run --rm --net none busybox -- true` with every
limit vs with none, and the cgroup work alone (create + apply + remove) timed in-process.

(a) End to end, wall time of the CLI as bench_run.py takes it: no limits, all limits, and
a second no-limits arm (an A/A control: how far two identical arms drift apart here).
The arms are interleaved and their order rotates every round.  Target: the difference of
the medians (limits - none) <= 5 ms.
(b) In-process through ctrun.cgroups, microsecond timer: manager.create() + apply(all
limits) + remove() against create() + remove(), alternating, to show where the cost is.
Run as root:  benchmarks/bench_limits.py [--runs 30] [--warmup 3] [--api-runs 200]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_MS = 5.0

# every limit ctrun has except --blkio-weight, which only acts where the disk's I/O
# scheduler is bfq (ctrun refuses it elsewhere, e.g. on mq-deadline)
BASE_LIMITS = {"memory": "64M", "memory_swap": "64M", "memory_reservation": "32M",
               "cpus": "0.5", "cpu_shares": "512", "cpuset_cpus": "0", "cpuset_mems": "0",
               "pids_limit": "64"}
DEVICE_LIMITS = {"device_read_bps": "10mb", "device_write_bps": "10mb",
                 "device_read_iops": "1000", "device_write_iops": "1000"}


def first_disk():
    """/dev/NAME of the host's first real disk (not loop, zram, dm: those are virtual)."""
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return None
    for n in names:
        try:
            virtual = "/virtual/" in os.readlink(f"/sys/block/{n}")
        except OSError:
            virtual = True
        if not virtual and os.path.exists(f"/dev/{n}"):
            return f"/dev/{n}"
    return None


def limit_options(disk):
    """{field: value} as Ctrun.create(limits=...) and from_options() take them."""
    opts = dict(BASE_LIMITS)
    if disk:
        opts.update({f: [f"{disk}:{rate}"] for f, rate in DEVICE_LIMITS.items()})
    return opts


def cli_args(opts):
    out = []
    for field, value in opts.items():
        for v in value if isinstance(value, list) else [value]:
            out += ["--" + field.replace("_", "-"), v]
    return out


def check_applied(ws, args, lim):
    """One detached container with the limits; the kernel's values (inspect) must match."""
    import json
    ws.ctrun_check("run", "-d", "--name", "limits-probe", "--net", "none", *args, "busybox",
                   "--", "sleep", "1000")
    try:
        got = json.loads(ws.ctrun_check("inspect", "limits-probe")).get("limits") or {}
    finally:
        ws.ctrun_check("destroy", "--force", "limits-probe")
    wrong = []
    for field, want in lim.to_dict().items():
        have = got.get(field)
        if field == "cpus":
            ok = have is not None and abs(have - want) < 1e-6
        else:
            ok = have == want
        if not ok:
            wrong.append(f"{field}: wanted {want!r}, the kernel has {have!r}")
    if wrong:
        raise RuntimeError("ctrun run did not apply the limits: " + "; ".join(wrong))


def time_cgroups(lim, runs, warmup):
    """{step: [µs]} of create/apply/remove with the limits and create/remove without."""
    from ctrun import cgroups
    from ctrun.api import DEVICE_ALLOW
    ns = time.perf_counter_ns
    steps = {k: [] for k in ("create [none]", "remove [none]", "total [none]",
                             "create [limits]", "apply [limits]", "remove [limits]",
                             "total [limits]")}
    current = [None]

    def one(i, with_limits):
        m = cgroups.manager(f"cg{i}-{'l' if with_limits else 'n'}", parent=common.CGROUP_PARENT)
        current[0] = m
        # device rules as `ctrun start` passes them (v1 devices controller), in both arms
        rules = DEVICE_ALLOW if m.supports_device_rules() else None
        t0 = ns()
        m.create(device_rules=rules)
        t1 = ns()
        if with_limits:
            m.apply(lim)
        t2 = ns()
        m.remove()
        t3 = ns()
        current[0] = None
        return (t1 - t0) / 1000, (t2 - t1) / 1000, (t3 - t2) / 1000, (t3 - t0) / 1000

    try:
        for i in range(warmup + runs):
            for with_limits in ((False, True) if i % 2 == 0 else (True, False)):
                c, a, r, t = one(i, with_limits)
                if i < warmup:
                    continue
                tag = "limits" if with_limits else "none"
                steps[f"create [{tag}]"].append(c)
                steps[f"remove [{tag}]"].append(r)
                steps[f"total [{tag}]"].append(t)
                if with_limits:
                    steps["apply [limits]"].append(a)
    finally:
        if current[0] is not None:   # interrupted mid-iteration: our cgroup, our cleanup
            current[0].remove()
    return steps


def time_parse(opts, runs):
    """µs of what `ctrun create` does with the options before any cgroup exists: parse
    them and ask which this host cannot apply."""
    from ctrun.cgroups import detect
    from ctrun.cgroups.limits import from_options, unsupported
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        unsupported(from_options(**opts), detect())
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def report_cgroups(cg, parse_us, lim, api_runs):
    """(b)'s table: where the cgroup work's time goes."""
    from ctrun.cgroups import detect
    cgs = {k: common.spread(v, extremes=True) for k, v in cg.items()}
    cgs["parse + host check [limits]"] = common.spread(parse_us, extremes=True)
    order = ["create [none]", "remove [none]", "total [none]", "create [limits]",
             "apply [limits]", "remove [limits]", "total [limits]",
             "parse + host check [limits]"]
    print(f"\n(b) cgroup work in-process (ctrun.cgroups, {detect().kind} layout), "
          f"{api_runs} cycles per arm")
    print(common.table(["step [arm]", "median us", "p10 us", "p90 us"],
                       [[k, f"{cgs[k]['median']:.0f}", f"{cgs[k]['p10']:.0f}",
                         f"{cgs[k]['p90']:.0f}"] for k in order]))
    cg_diff = cgs["total [limits]"]["median"] - cgs["total [none]"]["median"]
    print(f"\n  create + apply + remove minus create + remove: {cg_diff:+.0f} us "
          f"(difference of medians); apply alone {cgs['apply [limits]']['median']:.0f} us "
          f"for {len(lim.set_fields())} limits")
    print(f"  parsing the options and checking the host (`ctrun create`): "
          f"{cgs['parse + host check [limits]']['median']:.0f} us")
    return cgs, cg_diff


def measure(b):
    a = b.args
    from ctrun.cgroups import detect
    from ctrun.cgroups.limits import from_options, unsupported

    disk = a.device or first_disk()
    opts = limit_options(disk)
    lim = from_options(**opts)
    problems = unsupported(lim, detect())
    if problems:
        common.die("this host cannot apply every limit the benchmark sets: "
                   + "; ".join(problems), 1)
    args = cli_args(opts)

    with common.Workspace("limits") as ws:
        ws.build_image()
        check_applied(ws, args, lim)

        # --net none, as bench_run: a network (veth, address lease) is not what is measured
        run = ws.ctrun_cmd("run", "--rm", "--net", "none", "busybox", "--", "true")
        with_limits = ws.ctrun_cmd("run", "--rm", "--net", "none", *args, "busybox", "--",
                                   "true")
        arms = {"no limits": run, "all limits": with_limits, "no limits (A/A)": run}
        shown = {"no limits": "ctrun run --rm --net none busybox -- true",
                 "all limits": "ctrun run --rm --net none " + " ".join(args)
                 + " busybox -- true",
                 "no limits (A/A)": "ctrun run --rm --net none busybox -- true (same as "
                                    "'no limits')"}
        print(f"bench_limits: (a) {a.runs} runs + {a.warmup} warm-up rounds of "
              f"{', '.join(arms)} (interleaved, order rotating)", flush=True)
        samples, failed, kept = common.interleave(arms, a.runs, a.warmup, progress=True)
        ws.check_clean("after the CLI runs")

        print(f"bench_limits: (b) {a.api_runs} in-process cgroup cycles per arm "
              "(+10 warm-up)", flush=True)
        cg = time_cgroups(lim, a.api_runs, 10)
        parse_us = time_parse(opts, a.api_runs)
        ws.check_clean("after the in-process cgroup cycles")

    # ---- (a)
    for n in arms:
        if not samples[n]:
            raise RuntimeError(f"every run of `{shown[n]}` failed")
    stats = {n: {**common.summary_ms(s), "failed": failed[n]} for n, s in samples.items()}
    print("\n(a) end to end, CLI wall time")
    print(common.table(["arm", "median ms", "p10 ms", "p90 ms", "failed"],
                       [[n, *common.fmt_ms(s), s["failed"]] for n, s in stats.items()]))
    med = {n: s["median_ms"] for n, s in stats.items()}
    diff = med["all limits"] - med["no limits"]
    ratio = med["all limits"] / med["no limits"]
    d_pair = common.spread(common.paired(kept, "all limits", "no limits"))
    aa_pair = common.spread(common.paired(kept, "no limits (A/A)", "no limits"))
    verdict = common.verdict(diff <= TARGET_MS)
    print(f"\n  difference of medians (all limits - no limits): {diff:+.2f} ms   "
          f"ratio {ratio:.3f}x")
    print(f"  per-round paired differences (all limits - no limits), {d_pair['n']} rounds: "
          f"median {d_pair['median']:+.2f} ms, p10 {d_pair['p10']:+.2f}, p90 "
          f"{d_pair['p90']:+.2f}")
    print(f"  A/A control (no limits again - no limits): difference of medians "
          f"{med['no limits (A/A)'] - med['no limits']:+.2f} ms; paired p10 "
          f"{aa_pair['p10']:+.2f}, median {aa_pair['median']:+.2f}, p90 {aa_pair['p90']:+.2f} "
          "ms (the noise floor of one difference)")
    print(f"  target: limits add <= {TARGET_MS:.0f} ms to `ctrun run` (difference of medians): "
          f"{verdict}")
    aa_diff = abs(med["no limits (A/A)"] - med["no limits"])
    if aa_diff >= TARGET_MS / 2:
        print(f"  caution: the two identical arms' medians are {aa_diff:.1f} ms apart, so a "
              "difference of that size is noise here; more --runs narrows it")

    cgs, cg_diff = report_cgroups(cg, parse_us, lim, a.api_runs)

    notes = [
        "(a) times the whole CLI: create (parse + check the limits, write the config), "
        "start (cgroup, apply, spawn), wait and destroy (--rm); the cost of importing the "
        "limit code in the CLI is included",
        "(a) arms rotate their order every round; 'no limits (A/A)' is the same command as "
        "'no limits', so its distance from it is what noise alone produces on this host",
        "(b) creates the cgroup as `ctrun start` does (with the v1 devices allowlist where "
        "there is a devices controller) under /" + common.CGROUP_PARENT + ", with no process "
        "in it; remove() is the rmdir of every hierarchy's <parent>/<name>/ct and <name>",
        "--blkio-weight is left out: it only acts with the bfq I/O scheduler, and ctrun "
        "refuses it where the disk uses another (e.g. mq-deadline)",
    ]
    if not disk:
        notes.append("no real block device was found: the --device-* throttles were left out")
    common.print_notes(notes)

    result = {
        "params": {"runs": a.runs, "warmup": a.warmup, "api_runs": a.api_runs,
                   "api_warmup": 10, "device": disk},
        "limits": lim.to_dict(), "limit_args": args,
        "commands": shown, "target": f"difference of medians <= {TARGET_MS} ms",
        "cli": {"stats": stats, "difference_of_medians_ms": diff, "ratio": ratio,
                "paired_diff_ms": d_pair, "aa_paired_diff_ms": aa_pair, "verdict": verdict,
                "samples_ms": common.samples_ms(samples)},
        "cgroups_us": {"layout": detect().kind, "stats": cgs,
                       "difference_of_medians_us": cg_diff,
                       "samples_us": {k: [round(x, 1) for x in v] for k, v in cg.items()},
                       "parse_samples_us": [round(x, 1) for x in parse_us]},
        "notes": notes,
        "ctrun_imported_from": os.path.dirname(sys.modules["ctrun"].__file__)}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("bench_limits", __doc__, runs=(30, "CLI runs per arm"), warmup=3,
                     warmup_help="discarded CLI rounds", imports_ctrun=True)
    b.option("--api-runs", type=int, default=200, min=1,
             help="in-process cgroup cycles per arm (default 200)")
    b.option("--device", help="block device for the --device-* throttles "
             "(default: the first disk in /sys/block)")
    b.main(measure)
