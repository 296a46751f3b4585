#!/usr/bin/python3
"""Idle cost: PSS of ctrun's own host processes per detached idle container.

Starts N detached `sleep` containers with `ctrun run -d` (through the `ctrun` launcher, so
the store's warm server runs the calls) and, at 1, 10 and 20 containers, reads the PSS and
RSS (smaps_rollup) of every process ctrun keeps on the host for them, not the containers'
own workloads: the warm server (ctrun-server), the store's shared monitor, any pool process
(the server's spare worker, a zygote parked by the server: its other descendants) and
anything else naming the store.  Each count is measured in the three states a store goes
through once calls stop: busy (--settle seconds after the last call: the server and its
spare worker up), idle with the server (its spare gone for want of calls) and at rest (the
server gone too, the monitor alone); the benchmark sets CTRUN_SERVER_SPARE_IDLE
(--spare-idle) and CTRUN_SERVER_IDLE (--server-idle) so that this takes seconds rather than
the defaults (5 and 30).  For context the same is done with conmon (the C monitor podman
uses, one per container) supervising runc containers of the same rootfs.  The start pools'
entries the server keeps (one pre-made cgroup, one network namespace) hold kernel memory,
which PSS does not show: it is estimated apart (Slab + Percpu growth while 20 of each are
made) and printed per container.  Target: the total <= 0.5 MB per container at 20.
Run as root:  benchmarks/bench_monitor_memory.py [--counts 1,10,20] [--settle 1]
              [--spare-idle 2] [--server-idle 6]"""

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


ROLES = ("server", "monitor", "pool", "lxcfs", "other")


def ctrun_processes(ws, init_pids):
    """ctrun's own host processes for this store, {pid: role}, and the containers'
    processes apart.  Roles: the warm server; pool, the server's other descendants (its
    spare worker, parked zygotes; a worker if a call were running); the monitor (and its
    other non-container descendants: the server is its child); lxcfs, the containers' LXCFS
    (a child of the monitor once the worker that started it has exited; one per host by
    default, the benchmark's own here); other, anything else naming the store (a
    per-container helper, a CLI)."""
    host_ns = common.pid_ns(os.getpid())
    workload = set()
    for p in init_pids:
        workload.add(p)
        workload.update(common.descendants(p))

    def ours(ps):
        return [p for p in ps if p not in workload and common.pid_ns(p) == host_ns]
    # a zygote or a worker is a fork of the server: the same command line, under it
    named = common.server_pids(ws.store)
    roles = {p: "server" for p in named if common.ppid(p) not in named}
    for p in [p for p, r in roles.items() if r == "server"]:
        for d in ours([*named, *common.descendants(p)]):
            roles.setdefault(d, "pool")
    monitors = common.monitor_pids(ws.store)
    roles.update((p, "monitor") for p in monitors)
    for p in monitors:
        for d in ours(common.descendants(p)):
            roles.setdefault(d, "lxcfs" if common.comm(d) == "lxcfs" else "monitor")
    root = str(ws.store)
    roles.update((p, "other") for p in common.pids() if p not in workload and p not in roles
                 and p != os.getpid() and any(root in a for a in common.cmdline(p)))
    return roles, workload


def snapshot(ws, init_pids, n):
    """PSS and RSS of ctrun's processes by role, their total and the total per container."""
    roles, workload = ctrun_processes(ws, init_pids)
    out = {"total_pss_kb": 0, "total_rss_kb": 0, "processes": []}
    for role in ROLES:
        pss, rss, procs = memory([p for p, r in roles.items() if r == role])
        out[role] = {"pss_kb": pss, "rss_kb": rss, "count": len(procs)}
        if role != "lxcfs":  # the target's sum: server, monitor, pool (and any other)
            out["total_pss_kb"] += pss
            out["total_rss_kb"] += rss
        out["processes"] += [{**p, "role": role} for p in procs]
    out["pss_kb_per_container"] = out["total_pss_kb"] / n
    out["workload_pss_kb"] = memory(workload)[0]
    return out


def ctrun_phase(ws, counts, settle, spare_idle, idle):
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
        out = ws.ctrun_check("list", "--format", "json")  # the last call
        try:
            rows = json.loads(out)
        except ValueError as e:   # once seen through the server: more after the JSON
            raise RuntimeError(f"`ctrun list --format json` printed no JSON ({e}): "
                               f"{out[-400:]!r}") from None
        last_call = time.monotonic()
        running = [r for r in rows if r["state"] == "running"]
        if len(running) != n:
            raise RuntimeError(f"ctrun list shows {len(running)} running containers, "
                               f"expected {n}")
        inits = [r["pid"] for r in running]
        time.sleep(settle)
        up = snapshot(ws, inits, n)
        if up["server"]["count"] != 1:
            raise RuntimeError(
                f"{up['server']['count']} ctrun servers for the store at {n} containers, "
                f"{settle} s after the last call (expected 1; see {ws.store}/run/server.log)")
        if up["monitor"]["count"] != 1:
            ws.leaks.append(f"{up['monitor']['count']} ctrun monitor processes for one store "
                            f"at {n} containers (expected exactly 1)")
        # the spare worker goes after spare_idle s without a call, the server stays
        spares = [p["pid"] for p in up["processes"] if p["role"] == "pool"]
        kept = common.wait_gone(spares, spare_idle + 3)
        if kept:
            ws.leaks.append(f"the server's spare {kept} still running {spare_idle + 3:g} s "
                            f"after the last call (CTRUN_SERVER_SPARE_IDLE={spare_idle:g})")
        idle_up = snapshot(ws, inits, n)
        if idle_up["server"]["count"] != 1:
            raise RuntimeError(f"{idle_up['server']['count']} ctrun servers once the spare "
                               f"left at {n} containers (expected 1: --server-idle must "
                               f"leave time for the measure)")
        # the server leaves once idle; its pool processes go with it
        left = common.wait_gone(common.server_pids(ws.store), idle + 10)
        gone_after = time.monotonic() - last_call
        if left:
            ws.leaks.append(f"ctrun server {left} still running {idle + 10:g} s after the "
                            f"last call (CTRUN_SERVER_IDLE={idle:g})")
        time.sleep(settle)
        down = snapshot(ws, inits, n)
        results.append({"containers": n, "pss_kb": up["total_pss_kb"],
                        "rss_kb": up["total_rss_kb"],
                        "pss_kb_per_container": up["pss_kb_per_container"],
                        "server_up": up, "server_idle": idle_up, "server_exited": down,
                        "server_left_after_s": None if left else round(gone_after, 1)})
    # tear the ctrun containers down before conmon is measured: no shared pages between
    # the two phases, and the monitor must exit by itself once idle
    for err in ws.destroy_all(names):  # a ctrun bug: report it, measure conmon anyway
        lines = err.splitlines() or ["(no message)"]
        print("\nctrun destroy --force failed (the benchmark retried one by one):\n"
              + "\n".join(lines), file=sys.stderr)
        ws.leaks.append(f"`ctrun destroy --force c1..c{n}` failed: {lines[-1][:200]}")
    ws.check_clean("after destroying the ctrun containers")
    return results


def pool_kernel_kb(ws, n=20):
    """Kernel memory of the start pools' entries, which PSS does not show: the growth of
    Slab + Percpu in /proc/meminfo while n cgroup entries (one cgroup in every hierarchy),
    then n network namespaces (lo up, bind-mounted), are made in the workspace's store,
    per entry.  A host-wide reading, so approximate; the entries are removed after."""
    from ctrun import pools
    from ctrun.api import Ctrun
    from ctrun.network.nspool import NetnsPool
    store = Ctrun(str(ws.store)).store

    def kernel_kb():
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return sum(int(fields[k].split()[0]) for k in ("Slab", "Percpu"))
    out = {}
    try:
        for kind, fill in (("cgroup", lambda: pools.cgroup_pool(store).fill(n)),
                           ("netns", lambda: NetnsPool(store).fill(n))):
            time.sleep(0.5)
            before = kernel_kb()
            made = fill()
            time.sleep(0.5)
            out[kind] = round((kernel_kb() - before) / made) if made else None
    finally:
        pools.drain(store)
    return out


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
    counts = a.counts
    if not a.settle + 1 < a.spare_idle < a.server_idle - 2:
        common.die(f"--settle ({a.settle:g}), --spare-idle ({a.spare_idle:g}) and "
                   f"--server-idle ({a.server_idle:g}) must each exceed the one before by "
                   "more than 1 s (2 s for the last): the server is measured busy --settle "
                   "seconds after the last call, then once its spare has left, before it "
                   "leaves itself (the server looks once a second)")
    # the server reads them when the first call starts it (it inherits the caller's
    # environment)
    os.environ["CTRUN_SERVER_IDLE"] = f"{a.server_idle:g}"
    os.environ["CTRUN_SERVER_SPARE_IDLE"] = f"{a.spare_idle:g}"
    peers = b.peers
    have_conmon = peers.need("conmon + runc", "conmon", "runc")

    with common.Workspace("mem") as ws:
        rootfs = ws.build_image()
        print(f"bench_monitor_memory: ctrun at {counts} detached idle containers; "
              f"CTRUN_SERVER_SPARE_IDLE={a.spare_idle:g} and CTRUN_SERVER_IDLE="
              f"{a.server_idle:g} set by the benchmark (the spare and the server leave that "
              f"many seconds after the last call; defaults 5 and 30 s)", flush=True)
        ct = ctrun_phase(ws, counts, a.settle, a.spare_idle, a.server_idle)
        pool_kb = pool_kernel_kb(ws)
        cm = None
        if have_conmon:
            print(f"bench_monitor_memory: conmon + runc at {counts} containers", flush=True)
            try:
                cm = conmon_phase(ws, rootfs, counts, a.settle)
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                peers.fail("conmon + runc", e)   # its containers go with the workspace

        print(f"\nctrun busy: its warm server and spare up, {a.settle:g} s after the last "
              "call, kB (total = server + monitor + pool + other; the containers' LXCFS, one "
              "per host by default, apart)")
        hdr = ["containers", "server PSS", "server RSS", "monitor PSS", "monitor RSS",
               "pool PSS", "other PSS", "total PSS", "total kB/ct", "lxcfs PSS"]
        if cm:
            hdr += ["conmon PSS", "conmon kB/ct", "ctrun/conmon"]
        rows = []
        for i, r in enumerate(ct):
            u = r["server_up"]
            row = [r["containers"], u["server"]["pss_kb"], u["server"]["rss_kb"],
                   u["monitor"]["pss_kb"], u["monitor"]["rss_kb"], u["pool"]["pss_kb"],
                   u["other"]["pss_kb"], u["total_pss_kb"], f"{u['pss_kb_per_container']:.0f}",
                   u["lxcfs"]["pss_kb"]]
            if cm:
                c = cm[i]
                row += [c["pss_kb"], f"{c['pss_kb_per_container']:.0f}",
                        f"{u['total_pss_kb'] / c['pss_kb']:.2f}x"]
            rows.append(row)
        print(common.table(hdr, rows))
        print(f"\nctrun idle with its warm server: the spare gone (CTRUN_SERVER_SPARE_IDLE="
              f"{a.spare_idle:g} s), kB")
        print(common.table(
            ["containers", "server PSS", "server RSS", "monitor PSS", "monitor RSS", "pool PSS",
             "other PSS", "total PSS", "total kB/ct"],
            [[r["containers"], i["server"]["pss_kb"], i["server"]["rss_kb"],
              i["monitor"]["pss_kb"], i["monitor"]["rss_kb"], i["pool"]["pss_kb"],
              i["other"]["pss_kb"], i["total_pss_kb"], f"{i['pss_kb_per_container']:.0f}"]
             for r in ct for i in [r["server_idle"]]]))
        print(f"\nctrun at rest: its warm server left (CTRUN_SERVER_IDLE={a.server_idle:g} s), "
              "kB")
        print(common.table(
            ["containers", "server gone after s", "monitor PSS", "monitor RSS", "pool PSS",
             "other PSS", "total PSS", "total kB/ct", "lxcfs PSS"],
            [[r["containers"], "-" if r["server_left_after_s"] is None
              else f"{r['server_left_after_s']:.1f}", d["monitor"]["pss_kb"],
              d["monitor"]["rss_kb"], d["pool"]["pss_kb"], d["other"]["pss_kb"],
              d["total_pss_kb"], f"{d['pss_kb_per_container']:.0f}", d["lxcfs"]["pss_kb"]]
             for r in ct for d in [r["server_exited"]]]))
        common.print_not_measured(peers.unavailable)

        last = ct[-1]
        n = last["containers"]
        verdicts = {}
        print()
        for key, what in (("server_up", "busy (server and spare up)"),
                          ("server_idle", "idle with the server (spare gone)"),
                          ("server_exited", "at rest (after the server's idle exit)")):
            per = last[key]["pss_kb_per_container"]
            verdicts[key] = common.verdict(per <= TARGET_KB)
            print(f"ctrun at {n} containers, {what}: {per:.0f} kB PSS per container "
                  f"(target <= {TARGET_KB} kB = 0.5 MB: {verdicts[key]})")
        if None not in pool_kb.values():
            kept = sum(pool_kb.values())   # the server keeps one entry of each
            print(f"  the start pools' kernel memory (not in PSS), while the server lives: a "
                  f"cgroup entry ~{pool_kb['cgroup']} kB, a network namespace "
                  f"~{pool_kb['netns']} kB; one of each kept: ~{kept} kB, "
                  f"{kept / n:.0f} kB per container at {n}")
        up = last["server_up"]
        for key, what in (("server_up", "busy"), ("server_idle", "idle")):
            srv = last[key]["server"]
            print(f"  the server alone, {what}: {srv['pss_kb']} kB PSS, {srv['rss_kb']} kB RSS")
        if cm:
            c = cm[-1]
            print(f"conmon at {c['containers']} containers: "
                  f"{c['pss_kb_per_container']:.0f} kB PSS per container; "
                  f"ctrun/conmon = {last['pss_kb'] / c['pss_kb']:.2f}x (server up)")
        print(f"\nctrun processes counted at {n} containers, server up "
              f"(the containers' own workloads, {up['workload_pss_kb']} kB PSS, excluded):")
        print(common.table(["pid", "role", "comm", "PSS kB", "RSS kB", "cmdline"],
                           [[p["pid"], p["role"], p["comm"], p["pss_kb"], p["rss_kb"],
                             p["cmdline"][:60]] for p in up["processes"]]))
        notes = ["PSS splits shared pages among every process mapping them, so the figures "
                 "shift a little with whatever else runs on the host (e.g. other Python "
                 "processes sharing libpython); the server and the monitor share "
                 "libpython's pages, so each one's PSS is lower while the other runs",
                 "ctrun counts the store's warm server (ctrun-server), its shared monitor(s), "
                 "the server's other descendants (pool: parked zygotes) and any other host "
                 "process naming the store; pooled network namespaces and cgroups hold "
                 "kernel memory, which PSS does not show; conmon counts every conmon "
                 "process, one per container",
                 f"CTRUN_SERVER_SPARE_IDLE={a.spare_idle:g} and CTRUN_SERVER_IDLE="
                 f"{a.server_idle:g} were set by the benchmark so that the spare and the "
                 "server leave within seconds (defaults 5 and 30 s)"]
        common.print_notes(notes)
        result = {"params": {"counts": counts, "settle_s": a.settle,
                             "spare_idle_s": a.spare_idle, "server_idle_s": a.server_idle,
                             "env_set": {"CTRUN_SERVER_IDLE": f"{a.server_idle:g}",
                                         "CTRUN_SERVER_SPARE_IDLE": f"{a.spare_idle:g}"}},
                  "target_kb_per_container": TARGET_KB, "verdicts": verdicts,
                  "ctrun": ct, "conmon": cm, "pool_kernel_kb_per_entry": pool_kb,
                  "conmon_installed": have_conmon, "peers_unavailable": peers.unavailable,
                  "versions": {"runc": common.tool_version(["runc", "--version"]),
                               "conmon": common.tool_version(["conmon", "--version"])
                               if have_conmon else None},
                  "notes": notes}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("bench_monitor_memory", __doc__, imports_ctrun=True)
    b.counts_option("1,10,20", "container counts to measure at")
    b.option("--settle", type=float, default=1.0,
             help="seconds to wait before reading memory (default 1)")
    b.option("--spare-idle", type=float, default=2.5,
             help="CTRUN_SERVER_SPARE_IDLE for the store's warm server: its spare worker "
                  "leaves after that many seconds without a call (default 2.5; ctrun's own "
                  "default is 5)")
    b.option("--server-idle", type=float, default=6.0,
             help="CTRUN_SERVER_IDLE for the store's warm server: it leaves after that many "
                  "seconds without a call (default 6; ctrun's own default is 30)")
    b.main(measure)
