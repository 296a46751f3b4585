#!/usr/bin/python3
"""Start-up at scale: N containers started one after another, and N started 10 at a time,
by ctrun, runc and podman; the total time until all N run, at N = 10, 25 and 50.

Every tool starts the same long-running container, `sleep 1000` in the busybox root file
system ctrun builds, with no network:
  ctrun   `ctrun run -d --net none busybox -- sleep 1000`, the ctrun users run (its warm
          server is brought up by an untimed `ctrun list` before each of ctrun's
          measurements; the store's monitor is not running: the first container starts it)
  runc    `runc run -d --bundle B ID`, detached with no terminal, stdio /dev/null; a bundle
          per container: runc's default spec (common.oci_bundle, as bench_run.py's), the rootfs read-only, a
          cgroup of its own below the benchmark's parent
  podman  `podman run -d --network none IMAGE sleep 1000` on runc, in a private store (the
          isolation bench_oci.py uses), IMAGE ctrun's busybox as an OCI archive, loaded
Sequential: a command starts when the one before it has returned.  Concurrent: --parallel
(10) commands in flight at all times (as xargs -P 10), the next one starting as soon as any
returns.  The time runs from the first command's start until the last one has returned
(each returns once its container runs).  After each measurement, untimed, every container
is removed and the tool is checked to have left none.

Growth: the time per container (total / N) at each N, and its ratio at the largest N to
the smallest: about 1 is linear, above 1 worse than linear.  Ratios ctrun/runc and
ctrun/podman of the median totals.  Each round measures every count and mode, the tools'
order rotating from round to round.
Run as root:  benchmarks/bench_scale.py [--counts 10,25,50] [--parallel 10] [--runs 3]
"""

import os
import select
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SLEEP = ["sleep", "1000"]
TOOLS = ("ctrun", "runc", "podman")
LINEAR = (0.8, 1.25)   # growth (per-container time, largest N / smallest N) called linear
START_TIMEOUT = 120


def start_all(argvs, parallel, env=None):
    """Run the commands, at most `parallel` at once, the next starting as soon as one
    returns: (seconds from the first start until the last returned, {index: exit code or
    "timeout"} of those that failed)."""
    todo = list(enumerate(argvs))[::-1]
    running = {}   # pidfd -> (index, Popen)
    failed = {}
    t0 = time.perf_counter()
    try:
        while todo or running:
            while todo and len(running) < parallel:
                i, argv = todo.pop()
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env)
                running[os.pidfd_open(p.pid)] = (i, p)
            # a pidfd wakes us the moment a command exits (no polling in the timed path)
            ready = select.select(list(running), [], [], START_TIMEOUT)[0]
            if not ready:
                for i, p in running.values():
                    p.kill()
                    failed[i] = "timeout"
                ready = list(running)
            for fd in ready:
                i, p = running.pop(fd)
                os.close(fd)
                if p.wait() != 0 and i not in failed:
                    failed[i] = p.returncode
        return time.perf_counter() - t0, failed
    finally:
        # interrupted: the starts in flight finish (or fail) before the clean-up runs
        for fd, (_, p) in running.items():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            os.close(fd)


def probe(argv, env=None):
    """One untimed start, its error kept: (ok, the last line of its stderr).  Not
    common.probe: a detached runc container keeps its stdio, and a pipe would not reach
    EOF until it exits; a file does not wait."""
    with tempfile.TemporaryFile() as err:
        try:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, timeout=START_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            return False, f"timed out after {START_TIMEOUT} s"
        except OSError as e:
            return False, f"{argv[0]}: {e.strerror}"
        err.seek(0)
        msg = err.read().decode(errors="replace").strip().splitlines()
    return rc == 0, (msg[-1] if msg else f"exit code {rc}")


# ------------------------------------------------------------------ the tools
class Ctrun:
    shown = "ctrun run -d --net none busybox -- sleep 1000"
    env = None

    def __init__(self, ws):
        self.ws = ws

    def argv(self, i):
        return self.ws.ctrun_cmd("run", "-d", "--net", "none", "busybox", "--", *SLEEP)

    def prepare(self):
        """The warm server up (it leaves after 30 s without a call), as when ctrun is in
        use; the monitor stays down: it starts with the first container, as from idle."""
        self.ws.ctrun_check("list")

    def clean(self):
        ws = self.ws
        problems = [f"ctrun destroy --force: {(e.splitlines() or ['?'])[-1][:200]}"
                    for e in ws.destroy_all()]
        left = ws.container_names()
        if left:
            problems.append(f"{len(left)} ctrun container(s) left after destroy --force")
        # the monitor exits ~1.5 s after the last container goes, unless the store's warm
        # server (its child) still runs: then it stays, up for the next measurement too
        mons = [] if common.server_pids(ws.store) else \
            common.wait_gone(common.monitor_pids(ws.store), 10)
        if mons:
            problems.append(f"ctrun monitor {mons} alive 10 s after the last destroy")
        return problems


class Runc:
    env = None

    def __init__(self, ws, rootfs, n):
        """Bundles for containers 0..n (the last for a probe after a failed start)."""
        self.ws = ws
        self.root = str(ws.runc_root)
        _, spec = common.oci_bundle(ws, rootfs, SLEEP)
        self.cids = [f"bench-scale-{os.getpid()}-{i}" for i in range(n + 1)]
        for cid in self.cids:
            d = ws.tmp / "bundles" / cid
            d.mkdir(parents=True)
            common.oci_config(d, spec, cid)
        self.shown = "runc run -d --bundle B ID (B: runc spec, sleep 1000, rootfs read-only)"

    def argv(self, i):
        cid = self.cids[i]
        return ["runc", "--root", self.root, "run", "-d", "--bundle",
                str(self.ws.tmp / "bundles" / cid), cid]

    def prepare(self):
        pass

    def clean(self):
        for cid in sorted(common.runtime_ids("runc", self.root)):
            subprocess.run(["runc", "--root", self.root, "delete", "-f", cid],
                           capture_output=True, timeout=60)
        left = common.runtime_ids("runc", self.root)
        return [f"runc containers left after delete -f: {', '.join(sorted(left)[:5])}"] \
            if left else []


class Podman:
    def __init__(self, ws, rootfs, runc):
        self.pm = common.private_podman(ws, {"runc": runc}, rootfs)
        self.env = self.pm.env
        self.image = self.pm.images[-1]   # the one private_podman loaded
        self.shown = f"podman run -d --network none {self.image} sleep 1000 (runc)"

    def argv(self, i):
        return self.pm.cmd("run", "-d", *self.pm.create_args(), "--network", "none",
                           self.image, *SLEEP)

    def prepare(self):
        pass

    def clean(self):
        pm = self.pm
        problems = []
        r = pm("rm", "-af", "-t", "0", timeout=300)
        if r.returncode != 0:
            problems.append(f"podman rm -af: {r.stderr.strip()[-200:]}")
        busy = pm.settle()   # conmon's exit commands (podman container cleanup)
        if busy:
            problems.append(f"podman processes {busy} still running 20 s after rm -af")
        left = pm("ps", "-aq").stdout.split()
        if left:
            problems.append(f"{len(left)} podman container(s) left after rm -af")
        return problems


# ------------------------------------------------------------------ measuring
def by_group(names, rnd):
    """rounds() order: every (mode, N) in turn, its tools' order rotating each round."""
    out = []
    for mode, n in dict.fromkeys((m, n) for _, m, n in names):
        tools = [t for t, m, k in names if (m, k) == (mode, n)]
        out += [(t, mode, n) for t in common.rotate(tools, rnd)]
    return out


def label(arm):
    return ", ".join(map(str, arm))


def arm_fn(ws, tool, name, mode, n, parallel, messages):
    def arm(rnd):
        tool.prepare()
        try:
            dt, failed = start_all([tool.argv(i) for i in range(n)], parallel, tool.env)
            if failed:   # once more, untimed, for its error
                ok, msg = probe(tool.argv(n), tool.env)
                messages.append(f"round {rnd}: {len(failed)} of {n} starts failed (exit "
                                f"{sorted(set(map(str, failed.values())))}); a rerun "
                                + ("succeeded" if ok else f"failed: {msg}"))
        finally:
            for p in tool.clean():
                ws.leaks.append(f"{name}, {mode}, {n}, round {rnd}: {p}")
        print(f"  round {rnd + 1}: {name:6} {mode:10} N={n:<3} "
              + ("failed" if failed else f"{dt * 1000:8.0f} ms"), flush=True)
        return None if failed else dt
    return arm


def probe_tool(ws, peers, name, tool):
    """One untimed container: the tool works here (a peer that does not is left out)."""
    tool.prepare()
    ok, msg = probe(tool.argv(0), tool.env)
    for p in tool.clean():
        ws.leaks.append(f"{name}, probe: {p}")
    if not ok and name == "ctrun":
        raise RuntimeError(f"`{tool.shown}` failed: {msg}")
    return ok or peers.fail(name, msg)


def measure(b):
    a = b.args
    counts, modes = a.counts, {"sequential": 1, "concurrent": a.parallel}
    peers = b.peers
    load0 = os.getloadavg()
    with common.Workspace("scale") as ws:
        rootfs = ws.build_image()
        tools = {"ctrun": Ctrun(ws)}
        if peers.need("runc", "runc"):
            tools["runc"] = Runc(ws, rootfs, counts[-1])
        if peers.need("podman", "podman", "conmon", "runc"):
            try:
                tools["podman"] = Podman(ws, rootfs, common.require_tool("runc"))
            except Exception as e:  # noqa: BLE001 - oci_clients' HarnessError, a failed load
                peers.fail("podman", e)
        tools = {n: t for n, t in tools.items() if probe_tool(ws, peers, n, t)}
        messages = {}
        arms = {(n, mode, k): arm_fn(ws, t, n, mode, k, par,
                                     messages.setdefault(label((n, mode, k)), []))
                for mode, par in modes.items() for k in counts for n, t in tools.items()}
        print(f"bench_scale: {', '.join(tools)}; {a.runs} round(s) + {a.warmup} warm-up "
              f"of N = {', '.join(map(str, counts))} started one after another and "
              f"{a.parallel} at a time", flush=True)
        samples, failed, _ = common.rounds(arms, a.runs, a.warmup, order=by_group)
        ws.check_clean("after the runs")
        shown = {n: t.shown for n, t in tools.items()}
    return report(b, ws, list(tools), counts, modes, samples, failed, messages, shown, load0)


def report(b, ws, tools, counts, modes, samples, failed, messages, shown, load0):
    a = b.args
    med = {arm: common.percentile(s, 50) for arm, s in samples.items() if s}
    stats = {label(arm): {**common.summary_ms(s), "failed": failed[arm],
                          "per_container_ms": med[arm] * 1000 / arm[2]}
             for arm, s in samples.items() if s}

    def cell(arm, per=False):
        return f"{med[arm] * 1000 / (arm[2] if per else 1):.{1 if per else 0}f}" \
            if arm in med else "-"

    print("\ntotal time until all N containers run, median ms "
          f"(sequential: one after another; concurrent: {a.parallel} at a time)")
    ratios, rows = {}, []
    for mode in modes:
        for n in counts:
            row = [mode, n, *(cell((t, mode, n)) for t in tools)]
            for peer in ("runc", "podman"):
                if peer not in tools:
                    continue
                c, p = med.get(("ctrun", mode, n)), med.get((peer, mode, n))
                r = c / p if c and p else None
                if r is not None:
                    ratios[f"ctrun/{peer}, {mode}, {n}"] = r
                row.append(f"{r:.2f}x" if r is not None else "-")
            rows.append(row)
    print(common.table(["mode", "N", *(f"{t} ms" for t in tools),
                        *(f"ctrun/{p}" for p in ("runc", "podman") if p in tools)], rows))

    lo, hi = counts[0], counts[-1]
    print(f"\ngrowth: ms per container (total / N); growth = per container at N={hi} / at "
          f"N={lo} (linear: {LINEAR[0]}..{LINEAR[1]}); marginal = extra ms per extra "
          "container")
    growth, rows = {}, []
    for t in tools:
        for mode in modes:
            row = [t, mode, *(cell((t, mode, n), per=True) for n in counts)]
            first, last = med.get((t, mode, lo)), med.get((t, mode, hi))
            if first and last and hi > lo:
                g = (last / hi) / (first / lo)
                marginal = (last - first) * 1000 / (hi - lo)
                shape = ("linear" if LINEAR[0] <= g <= LINEAR[1] else
                         "worse than linear" if g > LINEAR[1] else
                         "better than linear (fixed costs spread)")
                growth[f"{t}, {mode}"] = {"growth": g, "marginal_ms_per_container": marginal,
                                          "shape": shape}
                row += [f"{g:.2f}x", f"{marginal:.1f}", shape]
            else:
                row += ["-", "-", "-"]
            rows.append(row)
    print(common.table(["tool", "mode", *(f"ms/ct N={n}" for n in counts), "growth",
                        "marginal ms/ct", "shape"], rows))

    common.print_not_measured(b.peers.unavailable)
    for arm, msgs in messages.items():
        for m in msgs[:5]:
            print(f"{arm}: {m}")
    notes = [f"commands: {'; '.join(f'{n}: {s}' for n, s in shown.items())}",
             "each measurement starts with no container of the tool running and ends, "
             "untimed, with all of them removed",
             "ctrun's warm server is up at the start of each of its measurements (an "
             "untimed `ctrun list`), and so is its monitor (the server's parent)",
             f"concurrent: {a.parallel} commands in flight at all times (a sliding window, "
             "not batches)",
             f"medians over {a.runs} round(s); rounds interleave the tools, order rotating"]
    common.print_notes(notes)
    result = {"params": {"counts": counts, "parallel": a.parallel, "runs": a.runs,
                         "warmup": a.warmup, "loadavg_at_start": load0},
              "commands": shown, "stats": stats,
              "samples_ms": common.samples_ms({label(k): v for k, v in samples.items()}),
              "failures": {label(k): v for k, v in failed.items()},
              "failure_messages": messages, "ratios": ratios, "growth": growth,
              "peers_unavailable": b.peers.unavailable,
              "versions": {"runc": common.tool_version(["runc", "--version"]),
                           "podman": common.tool_version(["podman", "--version"]),
                           "conmon": common.tool_version(["conmon", "--version"])},
              "notes": notes}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("bench_scale", __doc__, runs=(3, "timed rounds"), warmup=0)
    b.counts_option("10,25,50", "numbers of containers to start")
    b.option("--parallel", type=int, default=10,
             help="commands in flight at once in the concurrent mode (default 10)", min=1)
    b.main(measure)
