#!/usr/bin/python3
"""Supervision memory: PSS of ctrun's own host processes per detached idle container.

Starts N detached `sleep` containers with `ctrun run -d` and sums the PSS (smaps_rollup) of
every process ctrun keeps on the host for them (the shared monitor and anything else ctrun
leaves running; not the containers' own workloads), at 1, 10 and 20 containers.  For
context the same is done with conmon (the C monitor podman uses, one per container)
supervising runc containers of the same rootfs.  Target: <= 0.5 MB per container at 20.
Run as root:  benchmarks/bench_monitor_memory.py [--counts 1,10,20] [--settle 1]
"""

import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_KB = 512
SLEEP = ["sleep", "100000"]


def memory(owned):
    """Sum PSS/RSS over pids; returns (total pss kB, total rss kB, per-process rows)."""
    rows = []
    for pid in sorted(owned):
        m = common.mem_kb(pid)
        if m:
            rows.append({"pid": pid, "comm": common.comm(pid), "pss_kb": m["pss"],
                         "rss_kb": m.get("rss"), "cmdline": " ".join(common.cmdline(pid))[:200]})
    return sum(r["pss_kb"] for r in rows), sum(r["rss_kb"] or 0 for r in rows), rows


def ctrun_processes(ws, init_pids):
    """ctrun's own host processes for this store, and the containers' processes apart."""
    host_ns = common.pid_ns(os.getpid())
    workload = set()
    for p in init_pids:
        workload.add(p)
        workload.update(common.descendants(p))
    monitors = common.monitor_pids(ws.store)
    owned = set(monitors)
    for m in monitors:
        owned.update(d for d in common.descendants(m)
                     if d not in workload and common.pid_ns(d) == host_ns)
    # anything else still running that names this store (a per-container helper, a CLI)
    root = str(ws.store)
    owned.update(p for p in common.pids() if p not in workload and p != os.getpid()
                 and any(root in a for a in common.cmdline(p)))
    return owned, workload, monitors


def ctrun_phase(ws, counts, settle):
    results = []
    n = 0
    names = []
    for target in counts:
        while n < target:
            n += 1
            names.append(f"c{n}")
            # --net none: the monitor is measured, and a network would leave the default
            # bridge and its nftables table behind on the host (they outlive the store)
            ws.ctrun_check("run", "-d", "--net", "none", "--name", f"c{n}", "busybox", "--",
                           *SLEEP)
        time.sleep(settle)
        rows = json.loads(ws.ctrun_check("list", "--format", "json"))
        running = [r for r in rows if r["state"] == "running"]
        if len(running) != n:
            raise RuntimeError(f"ctrun list shows {len(running)} running containers, "
                               f"expected {n}")
        owned, workload, monitors = ctrun_processes(ws, [r["pid"] for r in running])
        pss, rss, procs = memory(owned)
        wl_pss, _, _ = memory(workload)
        results.append({"containers": n, "pss_kb": pss, "rss_kb": rss,
                        "pss_kb_per_container": pss / n, "monitors": len(monitors),
                        "processes": procs, "workload_pss_kb": wl_pss})
        if len(monitors) != 1:
            ws.leaks.append(f"{len(monitors)} ctrun monitor processes for one store at "
                            f"{n} containers (expected exactly 1)")
    # tear the ctrun containers down before conmon is measured: no shared pages between
    # the two phases, and the monitor must exit by itself once idle
    for err in ws.destroy_all(names):  # a ctrun bug: report it, measure conmon anyway
        lines = err.splitlines() or ["(no message)"]
        print("\nctrun destroy --force failed (the benchmark retried one by one):\n"
              + "\n".join(lines), file=sys.stderr)
        ws.leaks.append(f"`ctrun destroy --force c1..c{n}` failed: {lines[-1][:200]}")
    ws.check_clean("after destroying the ctrun containers")
    return results


class Conmons:
    """N conmon processes, each supervising one runc container (sleep) of the same rootfs."""

    def __init__(self, ws, rootfs):
        self.ws = ws
        self.rootfs = rootfs
        self.base = ws.tmp / "conmon"
        self.base.mkdir()
        self.spec = None
        self.procs = {}  # cid -> Popen
        self.runc = ["runc", "--root", str(ws.runc_root)]

    def _spec(self):
        if self.spec is None:
            d = self.base / "spec"
            d.mkdir()
            subprocess.run(["runc", "spec", "--bundle", str(d)], check=True,
                           capture_output=True)
            spec = json.loads((d / "config.json").read_text())
            spec["process"]["terminal"] = False
            spec["process"]["args"] = ["/bin/" + SLEEP[0], *SLEEP[1:]]
            spec["root"] = {"path": str(self.rootfs), "readonly": True}
            self.spec = spec
        return self.spec

    def state(self, cid):
        p = subprocess.run([*self.runc, "state", cid], capture_output=True, text=True,
                           timeout=10)
        return json.loads(p.stdout).get("status") if p.returncode == 0 else None

    def start(self, i):
        cid = f"bench-conmon-{os.getpid()}-{i}"
        bundle = self.base / cid
        bundle.mkdir()
        spec = dict(self._spec())
        spec["linux"] = {**spec["linux"], "cgroupsPath": f"/{common.CGROUP_PARENT}/{cid}"}
        (bundle / "config.json").write_text(json.dumps(spec))
        for d in ("exit", "sock"):
            (self.base / d).mkdir(exist_ok=True)
        argv = ["conmon", "--api-version", "1", "-c", cid, "-u", cid, "-n", cid,
                "-r", shutil.which("runc"),
                "--runtime-arg", f"--root={self.ws.runc_root}", "-b", str(bundle),
                "-p", str(bundle / "pid"), "--exit-dir", str(self.base / "exit"),
                "-l", f"k8s-file:{bundle / 'console.log'}", "--log-size-max", "1000000",
                "--full-attach", "--socket-dir-path", str(self.base / "sock"), "--sync"]
        with open(bundle / "conmon.err", "wb") as err:
            self.procs[cid] = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=err,
                                               start_new_session=True)
        self._await(cid, "created", bundle)
        p = subprocess.run([*self.runc, "start", cid], capture_output=True, text=True,
                           timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"runc start {cid} failed: {p.stderr.strip()}")
        self._await(cid, "running", bundle)

    def _await(self, cid, want, bundle):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.state(cid) == want:
                return
            if self.procs[cid].poll() is not None:
                err = (bundle / "conmon.err").read_text(errors="replace").strip()
                raise RuntimeError(f"conmon for {cid} exited ({self.procs[cid].returncode}) "
                                   f"before the container was {want}: {err[-300:]}")
            time.sleep(0.02)
        raise RuntimeError(f"runc container {cid} not {want} after 15 s")

    def pids(self):
        """Every conmon process supervising one of ours (whatever forking it did)."""
        mark = str(self.base)
        return [p for p in common.pids()
                if common.comm(p) == "conmon" and any(mark in a for a in common.cmdline(p))]

    def stop_all(self):
        for cid in self.procs:
            subprocess.run([*self.runc, "kill", cid, "KILL"], capture_output=True, timeout=30)
        for cid, proc in self.procs.items():
            try:
                proc.wait(timeout=5)  # conmon exits once it has seen its container exit
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            subprocess.run([*self.runc, "delete", "-f", cid], capture_output=True, timeout=30)
        self.procs.clear()
        for p in self.pids():  # a conmon that forked away from our Popen
            common._kill(p)


def conmon_phase(ws, rootfs, counts, settle):
    cm = Conmons(ws, rootfs)
    ws.on_cleanup(cm.stop_all)
    results = []
    n = 0
    for target in counts:
        while n < target:
            n += 1
            cm.start(n)
        time.sleep(settle)
        pss, rss, procs = memory(cm.pids())
        results.append({"containers": n, "pss_kb": pss, "rss_kb": rss,
                        "pss_kb_per_container": pss / n, "processes": procs})
    cm.stop_all()
    return results


def measure(b):
    a = b.args
    try:
        counts = sorted({int(c) for c in a.counts.split(",")})
    except ValueError:
        common.die("--counts takes numbers separated by commas, e.g. 1,10,20")
    if counts[0] < 1:
        common.die("--counts must be >= 1")
    peers = b.peers
    have_conmon = peers.need("conmon + runc", "conmon", "runc")

    with common.Workspace("mem") as ws:
        rootfs = ws.build_image()
        print(f"bench_monitor_memory: ctrun at {counts} detached idle containers", flush=True)
        ct = ctrun_phase(ws, counts, a.settle)
        cm = None
        if have_conmon:
            print(f"bench_monitor_memory: conmon + runc at {counts} containers", flush=True)
            try:
                cm = conmon_phase(ws, rootfs, counts, a.settle)
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                peers.fail("conmon + runc", e)   # its containers go with the workspace

        print()
        hdr = ["containers", "ctrun PSS kB", "ctrun kB/ct"]
        if cm:
            hdr += ["conmon PSS kB", "conmon kB/ct", "ctrun/conmon"]
        rows = []
        for i, r in enumerate(ct):
            row = [r["containers"], r["pss_kb"], f"{r['pss_kb_per_container']:.0f}"]
            if cm:
                c = cm[i]
                row += [c["pss_kb"], f"{c['pss_kb_per_container']:.0f}",
                        f"{r['pss_kb'] / c['pss_kb']:.2f}x"]
            rows.append(row)
        print(common.table(hdr, rows))
        common.print_not_measured(peers.unavailable)

        last = ct[-1]
        verdict = common.verdict(last["pss_kb_per_container"] <= TARGET_KB)
        print(f"\nctrun at {last['containers']} containers: "
              f"{last['pss_kb_per_container']:.0f} kB PSS per container "
              f"(target <= {TARGET_KB} kB = 0.5 MB: {verdict})")
        if cm:
            c = cm[-1]
            print(f"conmon at {c['containers']} containers: "
                  f"{c['pss_kb_per_container']:.0f} kB PSS per container; "
                  f"ctrun/conmon = {last['pss_kb'] / c['pss_kb']:.2f}x")
        print(f"\nctrun processes counted at {last['containers']} containers "
              f"(the containers' own workloads, {last['workload_pss_kb']} kB PSS, excluded):")
        print(common.table(["pid", "comm", "PSS kB", "RSS kB", "cmdline"],
                           [[p["pid"], p["comm"], p["pss_kb"], p["rss_kb"], p["cmdline"][:70]]
                            for p in last["processes"]]))
        notes = ["PSS splits shared pages among every process mapping them, so the figures "
                 "shift a little with whatever else runs on the host (e.g. other Python "
                 "processes sharing libpython)",
                 "ctrun counts the shared monitor(s) of the store plus any other host "
                 "process of ctrun's (none besides the monitor were expected); conmon counts "
                 "every conmon process, one per container"]
        common.print_notes(notes)
        result = {"params": {"counts": counts, "settle_s": a.settle},
                  "target_kb_per_container": TARGET_KB, "ctrun": ct, "conmon": cm,
                  "conmon_installed": have_conmon, "peers_unavailable": peers.unavailable,
                  "versions": {"runc": common.tool_version(["runc", "--version"]),
                               "conmon": common.tool_version(["conmon", "--version"])
                               if have_conmon else None},
                  "notes": notes}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("bench_monitor_memory", __doc__)
    b.option("--counts", default="1,10,20",
             help="container counts to measure at, ascending (default 1,10,20)")
    b.option("--settle", type=float, default=1.0,
             help="seconds to wait before reading memory (default 1)")
    b.main(measure)
