"""`ctrun stats`: usage of running containers, and OpenVZ-style beancounters.

CPU percentage needs two samples: every container is read, then read again after a short
interval, so 100 containers cost two passes over a few cgroup files each, not 100 sleeps.
"""

import json
import sys
import time

INTERVAL = 0.25


def _human(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


def sample(ct, names):
    """{name: stats} with cpu_percent measured over INTERVAL seconds."""
    t0 = time.monotonic()
    first = ct.stats(names)
    time.sleep(INTERVAL)
    # only the CPU counter again; a container that stopped meanwhile just drops out
    second = ct.stats(list(first), strict=False, only=("cpu",))
    dt = time.monotonic() - t0
    out = {}
    for n, st in first.items():
        if n in second:
            used = second[n]["cpu"]["usage_ns"] - st["cpu"]["usage_ns"]
            st["cpu"]["percent"] = round(100.0 * used / (dt * 1e9), 1)
            out[n] = st
    return out


def table(stats):
    cols = ("NAME", "CPU %", "MEM USAGE / LIMIT", "MEM MAX", "PIDS", "BLOCK I/O")
    rows = []
    for n, st in sorted(stats.items()):
        m, p, b = st.get("memory", {}), st.get("pids", {}), st.get("blkio", {})
        rows.append((n, f"{st['cpu'].get('percent', 0):.1f}",
                     f"{_human(m.get('usage'))} / {_human(m.get('limit'))}",
                     _human(m.get("max_usage")),
                     f"{p.get('current', '-')}" + (f"/{p['limit']}" if p.get("limit") else ""),
                     f"{_human(b.get('read_bytes'))} / {_human(b.get('write_bytes'))}"))
    out = [cols] + rows
    widths = [max(len(r[i]) for r in out) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in out]
    bean = [("NAME", "RESOURCE", "HELD", "MAXHELD", "BARRIER", "LIMIT", "FAILCNT")]
    for n, st in sorted(stats.items()):
        for b in st.get("beancounters", []):
            bean.append((n, b["resource"], *(str(b.get(k)) if b.get(k) is not None else "-"
                                              for k in ("held", "maxheld", "barrier", "limit",
                                                        "failcnt"))))
    if len(bean) > 1:
        widths = [max(len(r[i]) for r in bean) for i in range(len(bean[0]))]
        lines.append("")
        lines += ["  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in bean]
    return "\n".join(lines)


def show(ct, names, fmt="table", watch=False):
    while True:
        stats = sample(ct, names)
        if fmt == "json":
            print(json.dumps(stats, indent=1, sort_keys=True))
        else:
            if watch:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(table(stats))
        sys.stdout.flush()
        if not watch:
            return 0
        time.sleep(max(0.0, 1.0 - INTERVAL))
