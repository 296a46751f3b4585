"""Density: idle instances started one after another; host memory and start time per
instance at each count, extrapolated to how many fit in 1 GiB.

VMs under TCG on a small host cannot reach the container counts: their count is capped by
a memory budget and a time budget, both estimated from the one VM already measured, and
the cap and its reason are recorded (never a silently shorter list)."""

import time

from ..errors import CtrunError

GIB_KB = 1 << 20


def plan(counts, per_instance_kb, start_s, memory_budget_kb, time_budget_s):
    """(counts to visit, cap or None): the largest count both budgets allow."""
    by_mem = int(memory_budget_kb // per_instance_kb) if per_instance_kb else max(counts)
    by_time = int(time_budget_s // start_s) if start_s else max(counts)
    limit = min(by_mem, by_time, max(counts))
    if limit >= max(counts):
        return list(counts), None
    limit = max(1, limit)
    kept = [c for c in counts if c <= limit]
    if not kept or kept[-1] != limit:
        kept.append(limit)
    reason = (f"capped at {limit}: memory budget {int(memory_budget_kb) >> 10} MiB / "
              f"{int(per_instance_kb) >> 10} MiB per instance allows {by_mem}; time budget "
              f"{time_budget_s:.0f} s / {start_s:.1f} s per start allows {by_time}")
    return kept, {"count": limit, "reason": reason}


def fit_in_1gib(per_instance_kb):
    return int(GIB_KB // per_instance_kb) if per_instance_kb else None


def run(lab, mode, counts, cap, tick, time_budget_s=None):
    """Start instances up to each count; returns the density record of this mode.  Starts
    that slow down with the count can overrun the estimate: past twice the time budget the
    run stops at the count it reached, and says so in the cap."""
    steps, live, i = [], [], 0
    t_end = time.monotonic() + 2 * time_budget_s if time_budget_s else None
    try:
        for c in counts:
            starts = []
            while len(live) < c:
                if t_end and time.monotonic() > t_end and live:
                    cap = {"count": len(live), "reason": (
                        f"stopped at {len(live)} of {c}: starts took longer than twice the "
                        f"time budget of {time_budget_s:.0f} s")}
                    c = len(live)
                    break
                i += 1
                inst = None
                try:  # (an interrupted start is destroyed with the lab's store)
                    inst = mode.create(f"d{i}")
                    t0 = time.perf_counter()
                    inst.start()
                except CtrunError as e:  # keep what was measured up to here
                    if inst is not None:
                        inst.destroy()
                    if not live:
                        raise
                    cap = {"count": len(live), "reason": f"stopped at {len(live)} of {c}: "
                                                         f"start {i} failed: {e}"}
                    c = len(live)
                    break
                starts.append(time.perf_counter() - t0)
                live.append(inst)
            if not starts and steps and steps[-1]["count"] == c:
                break
            time.sleep(lab.settle_s)
            share = mode.monitor_share_kb()  # the same for every instance of the step
            mems = [inst.memory(share) for inst in live]
            # the monitor's share is counted once in all (each instance holds 1/n of it)
            total = sum(m["total_kb"] for m in mems)
            steps.append({"count": c, "total_kb": total, "per_instance_kb": total // c,
                          "start_s": starts,
                          "start_median_s": sorted(starts)[len(starts) // 2] if starts
                          else None})
            tick(f"{mode.name}: density {c}")
            if cap and cap["count"] == c:
                break
    finally:
        for inst in live:
            inst.destroy()
    last = steps[-1] if steps else None
    return {"accel": mode.accel, "steps": steps, "cap": cap,
            "fit_in_1gib": fit_in_1gib(last["per_instance_kb"]) if last else None,
            "unmeasured": None}
