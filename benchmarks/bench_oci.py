#!/usr/bin/python3
"""The OCI front end: podman on the runtime under test (ctrun-oci) against podman on runc,
and each light verb of the runtime against runc's.

(a) Start-up through a client.  Wall time of `podman run --rm --network none IMAGE true`
with `--runtime RUNTIME` and with `--runtime runc`, interleaved with their order rotating
every round (first --warmup rounds discarded), median / p10 / p90.  Target: the runtime's
median <= 1.3x runc's.  Podman calls the runtime several times per container (create, start,
delete; each a fresh process), so the ratio is dominated by the runtime's own start-up.
IMAGE is ctrun's busybox image as an OCI archive, `podman load`ed.  After every run the
benchmark waits (untimed) for podman's exit command (`podman container cleanup`, started by
conmon) so it does not spill into the next arm's time.

(b) Light verbs.  On an OCI bundle (runc's default `runc spec`, process `sleep 1000`, the
busybox rootfs read-only), each round and each runtime (order rotating) creates a container
(untimed), then times `state ID` (created), `start ID`, `kill ID KILL`, waits untimed for the
init to be gone, and times `delete ID` of the stopped container.  Each runtime keeps its
state in a private --root; each container gets its own cgroup below the benchmark's parent.

Isolation.  Podman runs as in the client tests (tests/integration/oci_clients.py, shared):
private storage root, runroot, tmp_dir and network config dir, its own containers.conf
(default_ulimits this host can grant, cgroupfs, file events log, both runtimes in its
runtimes table) and cgroups below the benchmark's parent; what rootful podman still writes
on the host (its SHM lock, IPAM dir, blob cache) is removed if it was not there before.
Rootful podman names no --root for the runtime: the runtimes keep those containers' state in
their default directory (/run/runc, /run/ctrun-oci), as for any podman user; a container of
ours still listed there at the end is deleted and reported.
Run as root:  benchmarks/bench_oci.py [--runtime /usr/local/bin/ctrun-oci] [--runs 20]
              [--warmup 3]
"""

import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO / "tests" / "integration"))
import oci_clients  # noqa: E402

TARGET_VS_RUNC = 1.3
VERBS = ("state", "start", "kill", "delete")
ARMS = ("under test", "runc")


# ------------------------------------------------------------------ (a) podman
def podman_startup(ws, b, runtimes, rootfs):
    a = b.args
    pm = common.private_podman(ws, {"ctrun-oci": runtimes["under test"],
                                    "runc": runtimes["runc"]}, rootfs)
    arms, shown = {}, {}
    for name, path in runtimes.items():
        argv = pm.cmd("run", "--rm", "--runtime", path, *pm.create_args(), "--network",
                      "none", oci_clients.IMAGE, "true")
        ok, msg = common.probe(argv, env=pm.env, timeout=120)
        pm.settle()
        if not ok:
            raise RuntimeError(f"podman run --runtime {path} failed: {msg}")
        arms[f"podman, {name}"] = (argv, pm.env)
        shown[f"podman, {name}"] = (f"podman run --rm --runtime {path} --network none "
                                    f"{oci_clients.IMAGE} true")
    print(f"bench_oci: (a) {a.runs} runs + {a.warmup} warm-up rounds of "
          f"{', '.join(arms)} (interleaved, order rotating)", flush=True)
    msgs = {}
    samples, failed, kept = common.interleave(arms, a.runs, a.warmup, progress=5,
                                              settle=lambda _: pm.settle(), messages=msgs)
    info = pm("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} "
              "{{.Store.GraphDriverName}}").stdout.strip()
    return {"arms": list(arms), "shown": shown, "samples": samples, "failed": failed,
            "kept": kept, "messages": msgs, "conf": pm.conf.read_text(), "info": info}


# ------------------------------------------------------------------ (b) light verbs
def light_verbs(ws, b, runtimes, rootfs):
    a = b.args
    bundle, spec = common.oci_bundle(ws, rootfs, ["sleep", "1000"])
    roots = {"under test": ws.run_dir / "under-test", "runc": ws.runc_root}
    seq = [0]

    def sweep():   # the under-test root (runc's is the workspace's own, swept by it)
        root, path = roots["under test"], runtimes["under test"]
        for cid in sorted(common.runtime_ids(path, root)):
            subprocess.run([path, "--root", str(root), "delete", "--force", cid],
                           capture_output=True, timeout=60)
    ws.on_cleanup(sweep)

    def rt(name, *args):
        return [runtimes[name], "--root", str(roots[name]), *args]

    def cycle(name, rnd, errors):
        """One container's create (untimed), state, start, kill, delete: {verb: seconds}."""
        seq[0] += 1
        cid = f"bench-oci-{os.getpid()}-{seq[0]}"
        common.oci_config(bundle, spec, cid)
        out = {}
        # no pipe for its output: the container's init would inherit it and hold it open
        with open(ws.tmp / "create.err", "w+") as err:
            p = subprocess.run(rt(name, "create", "--bundle", str(bundle), cid),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=err, timeout=60)
            if p.returncode != 0:
                err.seek(0)
                errors.append(f"round {rnd}: create exited {p.returncode}: "
                              f"{err.read().strip()[-300:]}")
                subprocess.run(rt(name, "delete", "--force", cid), capture_output=True,
                               timeout=60)
                return out
        try:
            pid = json.loads(subprocess.run(rt(name, "state", cid), capture_output=True,
                                            text=True, timeout=30).stdout)["pid"]
            for verb, args in (("state", ("state", cid)), ("start", ("start", cid)),
                               ("kill", ("kill", cid, "KILL"))):
                dt, rc = common.timed(rt(name, *args))
                if rc != 0:
                    errors.append(f"round {rnd}: {verb} exited {rc}")
                    return out
                out[verb] = dt
            if common.wait_gone([pid], 10):
                errors.append(f"round {rnd}: the init {pid} outlived kill KILL by 10 s")
                return out
            dt, rc = common.timed(rt(name, "delete", cid))
            if rc != 0:
                errors.append(f"round {rnd}: delete exited {rc}")
                return out
            out["delete"] = dt
            return out
        finally:
            if "delete" not in out:
                subprocess.run(rt(name, "delete", "--force", cid), capture_output=True,
                               timeout=60)

    samples = {(n, v): [] for n in runtimes for v in VERBS}
    failed = {n: 0 for n in runtimes}
    errors = {n: [] for n in runtimes}
    names = list(runtimes)
    print(f"bench_oci: (b) {a.runs} rounds + {a.warmup} warm-up of create / state / start "
          f"/ kill / delete on each runtime (interleaved, order rotating)", flush=True)
    for rnd in range(a.warmup + a.runs):
        for n in common.rotate(names, rnd):
            got = cycle(n, rnd, errors[n])
            if len(got) < len(VERBS):
                failed[n] += 1
            elif rnd >= a.warmup:
                for v, dt in got.items():
                    samples[(n, v)].append(dt)
        if (rnd + 1) % 5 == 0:
            print(f"  round {rnd + 1}/{a.warmup + a.runs}", flush=True)
    return {"samples": samples, "failed": failed, "errors": errors}


# ------------------------------------------------------------------ report
def report(runtimes, pa, vb):
    ratios, verdicts = {}, {}
    print("\n(a) podman run --rm --network none IMAGE true, wall time")
    stats_a = {n: common.summary_ms(s) for n, s in pa["samples"].items() if s}
    common.arm_table("arm", pa["arms"], stats_a, pa["failed"], pa["shown"], [])
    for n, m in pa["messages"].items():
        for line in m[:5]:
            print(f"{n}: failed run, {line}")
    ut, rc = "podman, under test", "podman, runc"
    print("\nratio of medians:")
    if ut in stats_a and rc in stats_a:
        r = stats_a[ut]["median_ms"] / stats_a[rc]["median_ms"]
        ratios["podman: under test / runc"] = r
        verdicts["podman"] = common.print_ratio("podman on the runtime / podman on runc", r,
                                                TARGET_VS_RUNC, of="runc")
        d = common.spread(common.paired(pa["kept"], ut, rc))
        print(f"  per-round paired difference: median {d['median']:+.1f} ms, p10 "
              f"{d['p10']:+.1f}, p90 {d['p90']:+.1f}")
    else:
        verdicts["podman"] = "not measured: an arm had no successful run"
        print(f"  {verdicts['podman']}")

    print("\n(b) light verbs, wall time of one runtime command")
    stats_b, rows = {}, []
    for v in VERBS:
        for n in runtimes:
            s = vb["samples"][(n, v)]
            if s:
                stats_b[f"{v}, {n}"] = common.summary_ms(s)
        a_, b_ = stats_b.get(f"{v}, under test"), stats_b.get(f"{v}, runc")
        r = a_["median_ms"] / b_["median_ms"] if a_ and b_ else None
        if r is not None:
            ratios[f"{v}: under test / runc"] = r
        rows.append([v, *(common.fmt_ms(a_) if a_ else ["-"] * 3),
                     *(common.fmt_ms(b_) if b_ else ["-"] * 3),
                     f"{r:.2f}x" if r is not None else "-"])
    print(common.table(["verb", "under test median", "p10", "p90", "runc median", "p10",
                        "p90", "ratio"], rows))
    for n in runtimes:
        if vb["failed"][n]:
            print(f"{n}: {vb['failed'][n]} failed round(s)")
        for e in vb["errors"][n][:5]:
            print(f"{n}: {e}")
    return stats_a, stats_b, ratios, verdicts


def oci_default_root():
    from ctrun.oci.store import DEFAULT_ROOT
    return DEFAULT_ROOT


def stop_oci_servers(ws, roots):
    """Stop ctrun-oci's warm servers of these state roots (None: the default one)."""
    from ctrun.oci import serving
    for root in roots:
        for pid in serving.stop(root or oci_default_root()):
            ws.leaks.append(f"ctrun-oci server pid {pid} still alive 5 s after SIGTERM")
            os.kill(pid, signal.SIGKILL)


def measure(b):
    a = b.args
    path = a.runtime
    if not os.access(path, os.X_OK):
        common.die(f"the runtime under test {path} is not executable; install ctrun-oci "
                   "(./setup.sh) or name one with --runtime")
    runtimes = {"under test": path, "runc": common.require_tool("runc")}
    load0 = os.getloadavg()
    from ctrun.oci import serving
    default_served = bool(serving.server_pids(oci_default_root()))  # a user's: not ours
    with common.Workspace("oci") as ws:
        rootfs = ws.build_image()
        pa = podman_startup(ws, b, runtimes, rootfs)
        vb = light_verbs(ws, b, runtimes, rootfs)
        # the runtime's warm servers of the roots used here (podman's is the default one)
        # leave when idle (30 s): asked to leave now, as the workspace's own store's server
        stop_oci_servers(ws, [ws.run_dir / "under-test"] + ([] if default_served else [None]))
        ws.check_clean("after the runs")
    stats_a, stats_b, ratios, verdicts = report(runtimes, pa, vb)
    notes = [
        f"runtime under test: {path}; runc: {runtimes['runc']}",
        "(a) both arms run the same podman (private storage, its own containers.conf) and "
        f"image; podman's view: {pa['info']} (default runtime, cgroup manager, storage)",
        "(a) after each run the benchmark waits, untimed, for podman's exit command "
        "(podman container cleanup) to finish",
        "(b) runc's default spec (runc spec), process sleep 1000, the busybox rootfs "
        "read-only; create and the wait for the killed init are untimed",
        "arms rotate their order every round; warm-up rounds are discarded",
    ]
    common.print_notes(notes)
    result = {
        "params": {"loadavg_at_start": load0, "runs": a.runs, "warmup": a.warmup,
                   "runtime": path},
        "podman": {"commands": pa["shown"], "stats": stats_a, "failures": pa["failed"],
                   "failure_messages": pa["messages"],
                   "samples_ms": common.samples_ms(pa["samples"]),
                   "containers_conf": pa["conf"]},
        "verbs": {"stats": stats_b, "failures": vb["failed"], "errors": vb["errors"],
                  "samples_ms": {f"{v}, {n}": [round(x * 1000, 3) for x in s]
                                 for (n, v), s in vb["samples"].items()}},
        "ratios": ratios, "verdicts": verdicts,
        "targets": {"podman: under test / runc": f"<= {TARGET_VS_RUNC}"},
        "versions": {"podman": common.tool_version(["podman", "--version"]),
                     "conmon": common.tool_version(["conmon", "--version"]),
                     "runc": common.tool_version(["runc", "--version"]),
                     "under test": common.tool_version([path, "--version"])},
        "notes": notes}
    return ws.finish(b.name, result)


if __name__ == "__main__":
    b = common.Bench("bench_oci", __doc__, runs=(20, "measured rounds per arm"), warmup=3,
                     imports_ctrun=True,
                     tools=("podman", "conmon", "runc"),
                     tool_hint="install it (apt-get install podman conmon runc)")
    b.option("--runtime", default=oci_clients.DEFAULT_RUNTIME,
             help=f"the runtime under test (default {oci_clients.DEFAULT_RUNTIME})")
    b.main(measure)
