"""Shared helpers for the ctrun benchmarks: tool discovery, an isolated store that is always
cleaned up, statistics, tables and JSON results.

Every benchmark runs against a fresh store (CTRUN_ROOT in a temp dir under /var/tmp) and a
cgroup parent of its own (CTRUN_CGROUP_PARENT=ctrun-bench), so nothing it does touches the
default store, and everything it leaves can be found and removed: on normal exit, on an
error and on Ctrl-C / SIGTERM.  What cleanup had to remove by force is reported as a leak,
because ctrun itself should have removed it.
"""

import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
# one parent per benchmark process: two benchmarks run at once never sweep each other
CGROUP_PARENT = f"ctrun-bench-{os.getpid()}"
SETUP_HINT = "run ./setup.sh (as root) from the repository first"

# Python bytecode: ctrun's start-up should be measured as users get it, with its modules'
# .pyc files cached.  A PYTHONDONTWRITEBYTECODE=1 in the environment (some CI and sandbox
# shells set it) would make every ctrun command recompile ~25 modules (~30 ms here), so the
# benchmarks give ctrun a private pyc cache (PYTHONPYCACHEPREFIX, in their temp dir) instead.
ENV_DONTWRITEBYTECODE = os.environ.get("PYTHONDONTWRITEBYTECODE")

# runc and conmon live in /usr/sbin, which a non-login root shell may not have on PATH
os.environ["PATH"] = ":".join(dict.fromkeys(
    os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]))


def die(msg, code=2):
    print(f"{Path(sys.argv[0]).name}: error: {msg}", file=sys.stderr)
    sys.exit(code)


# ------------------------------------------------------------------ the skeleton
class Bench:
    """What every benchmark shares around its measurement: the command line (--runs and
    --warmup with the benchmark's defaults, its own options with their lower bounds), the
    checks before anything runs (root, ctrun installed, the tools it needs, ctrun's Python
    for the benchmarks that import ctrun), the peers it compares with, and the result.

        b = common.Bench("bench_x", __doc__, runs=(30, "timed runs per arm"), warmup=3)
        b.option("--size", type=int, default=5, help="...", min=1)
        b.main(measure)      # measure(b) -> exit code; b.args holds the options

    Errors become one line, Ctrl-C exits 130 (run_main)."""

    def __init__(self, name, doc, runs=None, warmup=None, warmup_help="discarded rounds",
                 imports_ctrun=False, tools=(), tool_hint=SETUP_HINT):
        import argparse
        self.name = name
        self.ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
        self._bounds = []
        self.imports_ctrun = imports_ctrun
        self.tools, self.tool_hint = tools, tool_hint
        self.peers = Peers()
        self.args = None
        if runs is not None:
            self.rounds_options(runs, warmup, warmup_help)

    def rounds_options(self, runs, warmup, warmup_help="discarded rounds"):
        """--runs (runs: (default, what a run is)) and --warmup."""
        self.option("--runs", type=int, default=runs[0],
                    help=f"{runs[1]} (default {runs[0]})", min=1)
        self.option("--warmup", type=int, default=warmup,
                    help=f"{warmup_help} (default {warmup})", min=0)

    def option(self, *flags, min=None, **kw):
        """An option of the benchmark's own; `min` is checked after parsing."""
        action = self.ap.add_argument(*flags, **kw)
        if min is not None:
            self._bounds.append((action.dest, flags[0], min))
        return action

    def counts_option(self, default, what):
        """--counts: the container counts to measure at, numbers separated by commas
        (`default` likewise); parsed to an ascending list, each >= 1."""
        import argparse

        def counts(text):
            try:
                out = sorted({int(c) for c in text.split(",")})
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"'{text}' is not numbers separated by commas, e.g. {default}") from None
            if out[0] < 1:
                raise argparse.ArgumentTypeError(f"'{text}': every count must be >= 1")
            return out
        self.option("--counts", type=counts, default=default,
                    help=f"{what}, separated by commas (default {default})")

    def parse(self):
        a = self.ap.parse_args()
        low = [f"{flag} must be >= {m}" for dest, flag, m in self._bounds
               if getattr(a, dest) < m]
        if low:
            die(", ".join(low))
        require_root()
        ctrun_bin()
        for tool in self.tools:
            require_tool(tool, self.tool_hint)
        if self.imports_ctrun:
            reexec_with_ctrun_python()
        self.args = a
        return a

    def main(self, measure, parse=True):
        """Parse the command line, then measure(self); its return is the exit code."""
        def main():
            if parse:
                self.parse()
            return measure(self)
        run_main(main)


def scale_bench(name, doc, count, count_help):
    """The Bench of a benchmark that times commands against a store of --count
    containers it makes through ctrun's Python API."""
    b = Bench(name, doc, imports_ctrun=True)
    b.option("--count", type=int, default=count, help=f"{count_help} (default {count})",
             min=1)
    b.rounds_options((10, "timed runs per command"), 2, "discarded runs")
    return b


def run_main(main):
    """Run a benchmark's main(): exit with its code; errors (tool failures, OSError, a
    CtrunError from the in-process API) become one line, Ctrl-C exits 130."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        die(str(e), 1)
    except Exception as e:
        if not type(e).__module__.startswith("ctrun."):
            raise
        die(f"ctrun API: {e}", 1)


# ------------------------------------------------------------------ interleaved rounds
def rotate(names, rnd):
    """Each round starts one arm later: every arm runs in every position alike."""
    k = rnd % len(names)
    return names[k:] + names[:k]


def alternate(names, rnd):
    """Every other round runs the arms in reverse."""
    return names if rnd % 2 == 0 else names[::-1]


def shuffled(names, rnd):
    """A random order each round, seeded by the round (so a run can be repeated): unlike a
    rotation, which keeps each arm's neighbour, every arm follows every other alike."""
    import random
    out = list(names)
    random.Random(rnd).shuffle(out)
    return out


def fixed(names, rnd):
    return names


def rounds(arms, runs, warmup, order=rotate, progress=0, after_round=None):
    """Run {arm: fn} in `warmup + runs` interleaved rounds, fn(round) returning a figure
    (seconds, Gbit/s) or None when that run failed; the first `warmup` rounds are discarded.
    order(names, round): the arms' order in a round.  progress: a line every N rounds.
    after_round(round, {arm: figure or None}): called untimed after each round.
    Returns ({arm: [figures]}, {arm: failures, warm-up included}, [{arm: figure} per kept
    round])."""
    names = list(arms)
    samples = {n: [] for n in names}
    failed = {n: 0 for n in names}
    kept = []
    total = warmup + runs
    for rnd in range(total):
        this = {}
        for n in order(names, rnd):
            this[n] = arms[n](rnd)
            if this[n] is None:
                failed[n] += 1
            elif rnd >= warmup:
                samples[n].append(this[n])
        if rnd >= warmup:
            kept.append({n: v for n, v in this.items() if v is not None})
        if after_round:
            after_round(rnd, this)
        if progress and (rnd + 1) % progress == 0:
            print(f"  round {rnd + 1}/{total}", flush=True)
    return samples, failed, kept


def command(argv, env=None, settle=None, messages=None, name=None):
    """An arm for rounds(): the wall time of one command.  settle(): called after it,
    untimed.  messages: a list to append why a run failed (the command is run once more,
    untimed, to capture its error)."""
    def arm(rnd):
        dt, rc = timed(argv, env=env)
        if settle:
            settle(name)
        if rc == 0:
            return dt
        if messages is not None:
            ok, msg = probe(argv, env=env)
            if settle:
                settle(name)
            messages.append(f"round {rnd}: exit {rc}; rerun "
                            + ("succeeded" if ok else f"failed: {msg}"))
        return None
    return arm


def interleave(arms, runs, warmup, progress=False, settle=None, messages=None):
    """rounds() of commands {arm: argv or (argv, env)}, the order rotating each round.
    progress: a line every 10 rounds (True) or every N.  settle(arm): called after each
    command, untimed.  messages: a dict to fill with {arm: [why a round failed]}."""
    fns = {}
    for n, spec in arms.items():
        argv, env = spec if isinstance(spec, tuple) else (spec, None)
        msgs = None if messages is None else messages.setdefault(n, [])
        fns[n] = command(argv, env, settle, msgs, n)
    return rounds(fns, runs, warmup, progress=10 if progress is True else progress)


def print_list(title, items):
    """A titled list on stderr, when there is anything to list."""
    if items:
        print(f"\n{title}", file=sys.stderr)
        for item in items:
            print(f"  - {item}", file=sys.stderr)


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


# ------------------------------------------------------------------ tools
def venv_dir():
    """The venv ctrun is installed in: $CTRUN_VENV, else setup.sh's default."""
    return Path(os.environ.get("CTRUN_VENV", "/opt/ctrun/venv"))


def ctrun_bin():
    """The ctrun console script: $CTRUN_BIN, else the venv the project installs into."""
    env = os.environ.get("CTRUN_BIN")
    if env:
        if not os.access(env, os.X_OK):
            die(f"CTRUN_BIN={env} is not an executable file")
        return env
    # /usr/local/bin/ctrun first: the launcher setup.sh writes, what users run
    for cand in ("/usr/local/bin/ctrun", str(venv_dir() / "bin" / "ctrun")):
        if os.access(cand, os.X_OK):
            return cand
    die(f"ctrun is not installed (no /usr/local/bin/ctrun and no CTRUN_BIN); {SETUP_HINT}")


def ctrun_python():
    """The interpreter ctrun's Python client runs with, and its flags (its launcher's
    shebang: setup.sh's passes -sS): $CTRUN_BIN's if it is such a launcher, else the venv's
    ctrun-py (/usr/local/bin/ctrun is the compiled client, which hands it what it does not
    serve)."""
    venv = venv_dir() / "bin"
    for launcher in (ctrun_bin(), venv / "ctrun-py"):
        try:
            with open(launcher, "rb") as f:
                first = f.readline().decode(errors="replace").strip()
        except OSError:
            continue
        argv = first[2:].split() if first.startswith("#!") else []
        # only a Python interpreter: a benchmark re-executes itself with it (a wrapper
        # script's /bin/sh would run the benchmark's source as shell commands)
        if argv and os.path.basename(argv[0]).startswith("python") and \
                os.access(argv[0], os.X_OK):
            return argv
    if os.access(venv / "python3", os.X_OK):
        return [str(venv / "python3")]
    die(f"cannot tell ctrun's Python interpreter from {ctrun_bin()}'s first line; set "
        "CTRUN_VENV to the venv ctrun is installed in")


def require_tool(name, hint=SETUP_HINT):
    path = shutil.which(name)
    if not path:
        die(f"'{name}' is not installed; {hint}")
    return path


class Peers:
    """The tools a benchmark compares ctrun with.  A peer that cannot run here (not
    installed, or its probe fails) is announced as one loud line and left out; the
    benchmark still measures everything else.  `unavailable` ({peer: why}) goes in the JSON."""

    def __init__(self):
        self.unavailable = {}

    def fail(self, peer, why):
        why = " ".join(str(why).split()) or "no reason given"
        self.unavailable[peer] = why
        print(f"PEER UNAVAILABLE: {peer}: {why}", flush=True)
        return False

    def ok(self, peer):
        return peer not in self.unavailable

    def need(self, peer, *tools):
        """Every tool the peer runs is installed: True; else one loud line, False."""
        for tool in tools:
            if not shutil.which(tool):
                return self.fail(peer, f"'{tool}' is not installed; {SETUP_HINT}")
        return self.ok(peer)

    def probe(self, peer, argv, env=None, timeout=60):
        """One untimed run of the peer: True if it succeeded, else one loud line."""
        if not self.ok(peer):
            return False
        ok, msg = probe(argv, timeout=timeout, env=env)
        return ok or self.fail(peer, msg)


def crun_wrap(argv):
    """crun 1.8 refuses a hybrid cgroup host (v1 controllers plus a cgroup2 mount at
    /sys/fs/cgroup/unified); in a private mount namespace with that mount hidden it sees
    plain cgroup v1.  Only hybrid hosts need (and get) the wrapper."""
    if cgroup_layout() != "hybrid":
        return list(argv)
    import shlex
    return ["unshare", "-m", "sh", "-c",
            "umount /sys/fs/cgroup/unified 2>/dev/null; exec " + shlex.join(argv)]


def oci_bundle(ws, rootfs, args, tool="runc"):
    """An OCI bundle in the workspace: `tool spec`'s default config (runc's: its default
    namespaces, no seccomp profile) running args, without a terminal, on the rootfs
    read-only.  (bundle dir, spec); oci_config() writes it for each container."""
    bundle = ws.tmp / "bundle"
    bundle.mkdir()
    subprocess.run([tool, "spec", "--bundle", str(bundle)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    spec["root"] = {"path": str(rootfs), "readonly": True}
    return bundle, spec


def oci_config(bundle, spec, cid):
    """The bundle's config.json for container cid: a cgroup of its own below the
    benchmark's parent, as ctrun's containers get."""
    spec["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
    (bundle / "config.json").write_text(json.dumps(spec))


def runtime_ids(path, root=None):
    """Container ids an OCI runtime lists (in its default root unless root is given)."""
    argv = [path, *(["--root", str(root)] if root else []), "list", "-q"]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(p.stdout.split()) if p.returncode == 0 else set()


def private_podman(ws, runtimes, rootfs):
    """Rootful podman isolated as in the client tests (tests/integration/oci_clients.py:
    private storage, runroot, tmp and network config dirs, its own containers.conf with
    `runtimes` {name: path} in its runtimes table, the first the default), its containers'
    cgroups below a sibling of the benchmark's parent, and ctrun's busybox image loaded
    (oci_clients.IMAGE).  Its teardown goes with the workspace: what podman left is
    removed and reported, and so is a container of podman's that a runtime still lists in
    its default state dir (rootful podman names no --root for the runtime)."""
    harness = str(REPO / "tests" / "integration")
    if harness not in sys.path:
        sys.path.insert(0, harness)
    import oci_clients
    # a sibling of the workspace parent: podman keeps its conmon cgroup there while it is
    # set up; torn down with it
    pm = oci_clients.Podman(runtimes, f"{CGROUP_PARENT}-podman")
    before = {n: runtime_ids(p) for n, p in runtimes.items()}

    def teardown():
        ws.leaks.extend(pm.teardown())
        print_list("podman host cleanup (state podman keeps outside its storage, removed "
                   "because it did not exist before):", pm.cleaned)
        for n, path in runtimes.items():
            for cid in sorted(runtime_ids(path) - before[n]):
                ws.leaks.append(f"{n}: podman's container {cid} left in the runtime's "
                                "default state dir: deleted")
                subprocess.run([path, "delete", "--force", cid], capture_output=True,
                               timeout=60)
    ws.on_cleanup(teardown)
    pm.load(oci_clients.oci_archive(rootfs, ws.tmp / "busybox-oci.tar"))
    return pm


def require_root():
    if os.geteuid() != 0:
        die("benchmarks must run as root (sudo benchmarks/run_all.sh)")


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def reexec_with_ctrun_python():
    """bench scripts that import ctrun must run under ctrun's own interpreter."""
    try:
        import ctrun  # noqa: F401
        return
    except ImportError:
        pass
    py = ctrun_python()[0]  # a venv's python is a symlink: compare paths, not their targets
    if os.environ.get("CTRUN_BENCH_REEXEC") or os.path.abspath(py) == sys.executable:
        die(f"cannot import ctrun with {sys.executable}; {SETUP_HINT}")
    os.environ["CTRUN_BENCH_REEXEC"] = "1"
    os.execv(py, [py, os.path.abspath(sys.argv[0]), *sys.argv[1:]])


# ------------------------------------------------------------------ statistics and output
def percentile(values, q):
    """Linear interpolation between closest ranks (q in 0..100)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary_ms(seconds):
    ms = [s * 1000.0 for s in seconds]
    return {"n": len(ms), "median_ms": percentile(ms, 50), "p10_ms": percentile(ms, 10),
            "p90_ms": percentile(ms, 90), "min_ms": min(ms) if ms else None,
            "max_ms": max(ms) if ms else None}


def spread(values, extremes=False):
    """Median, p10 and p90 of figures in any unit (min and max too with extremes)."""
    out = {"n": len(values), "median": percentile(values, 50), "p10": percentile(values, 10),
           "p90": percentile(values, 90)}
    if extremes:
        out.update(min=min(values) if values else None, max=max(values) if values else None)
    return out


def paired(kept, a, b):
    """Per-round differences a - b in ms over rounds()' kept rounds where both succeeded:
    drift on the host cancels out of each pair."""
    return [(r[a] - r[b]) * 1000 for r in kept if a in r and b in r]


def fmt_ms(s):
    """median, p10, p90 of a summary_ms() as table cells."""
    return [f"{s['median_ms']:.1f}", f"{s['p10_ms']:.1f}", f"{s['p90_ms']:.1f}"]


def samples_ms(samples):
    """{arm: [seconds]} as the JSON keeps it: milliseconds, to the microsecond."""
    return {n: [round(x * 1000, 3) for x in s] for n, s in samples.items()}


def verdict(ok):
    return "MET" if ok else "NOT MET"


def print_ratio(label, r, target=None, op="<=", of="", note=""):
    """One line of a ratio, `  LABEL = R.RRx   (target <= Tx OF: MET)` when it has a
    target (op "<=", "<" or ">="); returns the verdict, or None without a target."""
    if target is None:
        print(f"  {label} = {r:.2f}x{note}")
        return None
    v = verdict({"<=": r <= target, "<": r < target, ">=": r >= target}[op])
    print(f"  {label} = {r:.2f}x{note}   (target {op} {target}x{' ' + of if of else ''}: {v})")
    return v


def print_notes(notes):
    print("\nnotes:")
    for n in notes:
        print(f"  - {n}")


def print_not_measured(skipped):
    for name, why in skipped.items():
        print(f"{name}: not measured: {why}")


def report_arms(first, names, samples, failed, shown, skipped):
    """The arms' figures (summary_ms of each arm with samples), printed as arm_table after
    a blank line, then why the skipped ones were not measured; returns the figures."""
    stats = {n: summary_ms(s) for n, s in samples.items() if s}
    print()
    arm_table(first, names, stats, failed, shown, skipped)
    print_not_measured(skipped)
    return stats


def arm_table(first, names, stats, failed, shown, skipped):
    """The timing table of arms: a row each, 'not measured' for the skipped ones (the
    caller says why, after it), 'every run failed' for those with no figure."""
    rows = []
    for n in names:
        if n in skipped:
            rows.append([n, "-", "-", "-", "-", "not measured (see below)"])
        elif n not in stats:
            rows.append([n, "-", "-", "-", failed[n], "every run failed: " + shown[n]])
        else:
            rows.append([n, *fmt_ms(stats[n]), failed[n], shown[n]])
    print(table([first, "median ms", "p10 ms", "p90 ms", "failed", "command"], rows))


# ------------------------------------------------------------------ commands at scale
def against_empty(cmds, scale, empty_root):
    """{(label, store): argv}: every ctrun command against the full store (`scale` names
    it) and against an empty one, to be timed in the same rounds: the difference is what
    the containers cost and not drift on the host."""
    return {(label, sc): argv[:1] + (["--root", str(empty_root)] if sc == "empty store"
                                     else []) + argv[1:]
            for label, argv in cmds.items() for sc in ("empty store", scale)}


def scale_report(timed_cmds, samples, failed, is_target, target_ms, sort=False):
    """The table of against_empty()'s commands, with the target's verdict on the rows
    is_target(label, store) picks; returns their stats, keyed "LABEL [STORE]"."""
    stats, rows = {}, []
    for (label, scale), argv in timed_cmds.items():
        if not samples[(label, scale)]:
            raise RuntimeError(f"every run of `{' '.join(argv)}` failed")
        s = summary_ms(samples[(label, scale)])
        stats[f"{label} [{scale}]"] = {**s, "failed": failed[(label, scale)]}
        target = is_target(label, scale)
        rows.append([label, scale, *fmt_ms(s), failed[(label, scale)],
                     f"< {target_ms:.0f} ms" if target else "-",
                     verdict(s["median_ms"] < target_ms) if target else "-"])
    if sort:
        rows.sort(key=lambda r: (r[1] != "empty store", r[0]))
    print()
    print(table(["command", "store", "median ms", "p10 ms", "p90 ms", "failed", "target",
                 "verdict"], rows))
    return stats


def table(headers, rows):
    """Plain-text table: numeric columns right-aligned, the others left-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def numeric(s):
        try:
            float(s.rstrip("x%"))
            return True
        except ValueError:
            return s in ("", "-")
    right = [all(numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if rj else c.ljust(w)
                         for c, w, rj in zip(r, widths, right)).rstrip()
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def host_info():
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None
    return {"kernel": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "ctrun_bin": ctrun_bin(), "ctrun_commit": git("rev-parse", "--short", "HEAD"),
            "ctrun_tree_dirty": bool(git("status", "--porcelain", "--", "ctrun")),
            "python_bytecode": "cached in a private PYTHONPYCACHEPREFIX"
            + (f" (PYTHONDONTWRITEBYTECODE={ENV_DONTWRITEBYTECODE} in the environment was "
               "overridden)" if ENV_DONTWRITEBYTECODE else ""),
            "cgroup_layout": cgroup_layout()}


def cgroup_layout():
    kinds = {m[1] for m in cgroup_mounts()}
    if kinds == {"cgroup2"}:
        return "v2"
    return "hybrid" if "cgroup2" in kinds else "v1"


def write_result(name, data):
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = {"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": host_info(), **data}
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nresult written to {path.relative_to(REPO)}")
    return path


# a command held by a shell on its stdin until the line that releases it: what runs
# before that line (before(pid)) is setup, not the command's time
GATE = ["sh", "-c", 'read _ && exec "$@" </dev/null', "sh"]


def _gated(argv, before, **kw):
    """Popen of argv; with before, held before its exec while before(pid) runs (the
    caller then releases it: a line on its stdin)."""
    if before is None:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
    p = subprocess.Popen(GATE + list(argv), stdin=subprocess.PIPE, **kw)
    try:
        before(p.pid)
    except BaseException:
        p.stdin.close()   # at EOF the shell's read fails: argv never runs
        p.wait()
        raise
    return p


def timed(argv, timeout=60, before=None, **kw):
    """Wall time of one command, output discarded: (seconds, returncode).  before(pid):
    untimed setup of the child (joining a cgroup: a v1 join waits an RCU grace period)
    while a shell holds it before it execs argv; the clock then covers the exec and the run.

    Not subprocess.run(timeout=...): that polls the child with sleeps of up to 50 ms,
    which rounds every measurement up.  A pidfd wakes us the moment the child exits."""
    import select
    t0 = time.perf_counter()
    p = _gated(argv, before, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    if before is not None:
        t0 = time.perf_counter()
        p.stdin.write(b"\n")
        p.stdin.close()
    fd = os.pidfd_open(p.pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            p.kill()
            p.wait()
            return time.perf_counter() - t0, "timeout"
        rc = p.wait()
    except BaseException:
        # interrupted: let the command finish (or fail) on its own before cleanup runs,
        # so cleanup does not race a half-done `ctrun run`
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        raise
    finally:
        os.close(fd)
    return time.perf_counter() - t0, rc


def probe(argv, timeout=60, env=None, before=None):
    """Run once untimed, capturing output: (ok, last line of stderr/stdout).  before(pid):
    as for timed()."""
    try:
        p = _gated(argv, before, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   env=env)
    except OSError as e:   # not installed, not executable
        return False, f"{argv[0]}: {e.strerror}"
    try:
        out, err = p.communicate("\n" if before else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return False, f"timed out after {timeout}s"
    msg = (err.strip() or out.strip()).splitlines()
    return p.returncode == 0, (msg[-1] if msg else f"exit code {p.returncode}")


# ------------------------------------------------------------------ processes and memory
def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw[raw.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError):
        return None


def pid_ns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def mem_kb(pid):
    """{'pss': kB, 'rss': kB} from /proc/PID/smaps_rollup, or None if the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Pss:", "Rss:")):
                    out[line.split(":")[0].lower()] = int(line.split()[1])
    except OSError:
        return None
    return out if "pss" in out else None


def descendants(root_pid):
    children = {}
    for p in pids():
        children.setdefault(ppid(p), []).append(p)
    out, todo = [], [root_pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def monitor_pids(store_root):
    """ctrun's shared monitor(s) for this store: `python -m ctrun.monitor ROOT`."""
    root = str(store_root)
    return [p for p in pids() if "ctrun.monitor" in (a := cmdline(p)) and root in a]


def server_pids(store_root):
    """ctrun's warm server(s) for this store: `python -m ctrun.server ROOT`."""
    root = str(store_root)
    return [p for p in pids() if "ctrun.server" in (a := cmdline(p)) and root in a]


def wait_gone(pid_list, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid_list = [p for p in pid_list if Path(f"/proc/{p}").exists() and
                    _state(p) not in ("Z", None)]
        if not pid_list:
            return []
        time.sleep(0.05)
    return pid_list


def _state(pid):
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        return raw[raw.rindex(b")") + 2:].split()[0].decode()
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------ cgroups and mounts
def cgroup_mounts():
    """(mount point, fs type) of every cgroup hierarchy."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype = right.split()[0]
            if fstype in ("cgroup", "cgroup2"):
                out.append((left.split()[4], fstype))
    return out


def mounts_under(path):
    path = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        pts = [ln.split()[4] for ln in f]
    return sorted({p for p in pts if (p + "/").startswith(path)}, key=len, reverse=True)


def cgroup_dirs(parent=CGROUP_PARENT):
    """Every directory below the benchmark cgroup parent, deepest first."""
    out = []
    for mnt, _ in cgroup_mounts():
        base = Path(mnt) / parent
        if base.is_dir():
            for dirpath, _, _ in os.walk(base):
                out.append(Path(dirpath))
    return sorted(out, key=lambda p: len(p.parts), reverse=True)


def rmdir_cgroup(d, tries=40):
    """Remove one empty cgroup directory, retrying while the kernel still holds it (a cgroup
    lingers for a moment after its last process exits); fine when it is already gone."""
    for _ in range(tries):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def cgroup_procs(d):
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except OSError:
        return []


# ------------------------------------------------------------------ the system-container peers
# LXC's monitor waits out its container's end in this cgroup (lxc.cgroup.dir.monitor.pivot)
LXC_PIVOT = "lxc-pivot"
LXC_LOCKS = Path("/run/lxc/lock")          # where LXC keeps a lock file per container, as root
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")   # nspawn's per-machine dir


class PeerHost:
    """What systemd-nspawn and LXC runs need from the host: a fresh overlay over a rootfs
    per run (they write into their root), a cgroup of the benchmark's own in every
    hierarchy, and their removal; cleanup() on any exit (an interrupted run skips its own
    release)."""

    def __init__(self, ws, rootfs):
        self.ws, self.rootfs = ws, rootfs
        self.mounts, self.procs, self.cgroups = [], [], {LXC_PIVOT}

    def overlay(self, name):
        d = self.ws.tmp / "ov" / name
        for sub in ("up", "work", "root"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.rootfs},upperdir={d}/up,workdir={d}/work",
                        str(d / "root")], check=True)
        self.mounts.append(d / "root")
        return d / "root"

    def unmount(self, root):
        if root in self.mounts:
            subprocess.run(["umount", str(root)], check=False)
            self.mounts.remove(root)
            shutil.rmtree(root.parent, ignore_errors=True)

    def cgroup(self, name):
        """The cgroup dirs a peer is started in: every hierarchy but v1's cpuset (a new
        cpuset has no CPUs until they are copied in; the peers' cpuset is not measured)."""
        dirs = [Path(m) / CGROUP_PARENT / name for m, _ in cgroup_mounts()
                if not m.endswith("/cpuset")]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.cgroups.add(name)
        return dirs

    def rm_cgroup(self, name):
        """CGROUP_PARENT/name and what the peer made below it, in every hierarchy."""
        self.cgroups.add(name)   # kept for cleanup() should this removal not complete
        rm_cgroup_tree(name)

    @staticmethod
    def join(dirs, pid):
        for d in dirs:
            (d / "cgroup.procs").write_text(str(pid))

    @staticmethod
    def memory_dir(dirs):
        return [str(d) for d in dirs if d.parent.parent.name == "memory"
                or "memory.stat" in os.listdir(d)]

    def spawn(self, argv, cgroup_dirs):
        def join():
            self.join(cgroup_dirs, 0)
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, preexec_fn=join,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def release(self, root, cgroup_dirs):
        """Unmount a run's overlay and remove its cgroups (what the peer made below them
        too, in every hierarchy)."""
        self.unmount(root)
        for name in {d.name for d in cgroup_dirs}:
            rm_cgroup_tree(name)

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for m in list(self.mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)
            self.mounts.remove(m)
        for name in self.cgroups:
            rm_cgroup_tree(name)


def rm_cgroup_tree(name):
    """Remove CGROUP_PARENT/name and everything below it, deepest first, in every
    hierarchy (a cgroup lingers for a moment after its last process exits)."""
    for m, _ in cgroup_mounts():
        top = Path(m) / CGROUP_PARENT / name
        for d in sorted((Path(p) for p, _, _ in os.walk(top)),
                        key=lambda x: len(x.parts), reverse=True):
            rmdir_cgroup(d)


def cgroup_tree(name):
    """{path below CGROUP_PARENT: hierarchies holding it} of CGROUP_PARENT/name's tree."""
    out = {}
    for m, _ in cgroup_mounts():
        base = Path(m) / CGROUP_PARENT
        for p, _, _ in os.walk(base / name):
            rel = os.path.relpath(p, base)
            out[rel] = out.get(rel, 0) + 1
    return out


def nspawn_argv(machine, root, options=(), cmd=()):
    """systemd-nspawn on a host whose PID 1 may not be systemd: no machined to register
    with and no scope unit (it stays in the cgroup it is started in), only lo."""
    return ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet",
            "--private-network", *options, "-M", machine, "-D", str(root), *cmd]


def nspawn_forget(machine):
    """What nspawn leaves of a machine that has exited: its mount propagation dir."""
    shutil.rmtree(NSPAWN_PROPAGATE / machine, ignore_errors=True)


def lxc_config(lxcpath, name, root, cgroup_base, *extra):
    """Write LXCPATH/NAME/config: `extra` lines first, then the root file system, a
    network namespace with only lo, no AppArmor profile, and LXC's cgroups below
    cgroup_base (the monitor's pivot below CGROUP_PARENT) in every hierarchy.  Its dir."""
    d = Path(lxcpath) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config").write_text("\n".join([
        *extra,
        f"lxc.rootfs.path = dir:{root}",
        "lxc.net.0.type = empty",
        "lxc.apparmor.profile = unconfined",
        f"lxc.cgroup.dir.container = {cgroup_base}/payload",
        f"lxc.cgroup.dir.monitor = {cgroup_base}/monitor",
        f"lxc.cgroup.dir.monitor.pivot = {CGROUP_PARENT}/{LXC_PIVOT}", ""]))
    return d


def lxc_lock(lxcpath, name=None):
    """LXC's lock file of container `name` (its dir of them without a name)."""
    d = LXC_LOCKS / Path(lxcpath).relative_to("/")
    return d / f".{name}" if name else d


def lxc_forget(lxcpath, name=None):
    """Remove the lock file LXC leaves of container `name` in /run, or, without a name,
    every one of LXCPATH's with their dir and its parent when it is empty (the
    benchmark's own temp dir, mirrored there; LXC makes them again when it needs them)."""
    if name:
        with contextlib.suppress(FileNotFoundError):
            lxc_lock(lxcpath, name).unlink()
        return
    d = lxc_lock(lxcpath)
    shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        d.parent.rmdir()


# ------------------------------------------------------------------ the isolated workspace
class Workspace:
    """A temp store for ctrun plus private state dirs for runc/crun, torn down on exit.

    Use as a context manager.  Benchmarks register extra teardown steps with on_cleanup();
    they run last-registered first, before the generic sweep (ctrun containers destroyed,
    the store's monitor gone, runc/crun containers deleted, cgroups and temp dirs removed).
    """

    def __init__(self, label):
        self.label = label
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ctrun-bench-{label}-", dir="/var/tmp"))
        self.store = self.tmp / "store"
        # runc/crun keep their state where they normally do (/run), in a private directory
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"ctrun-bench-{label}-", dir="/run"))
        self.runc_root = self.run_dir / "runc"
        self.crun_root = self.run_dir / "crun"
        self.ctrun = ctrun_bin()
        self._cleanups = []
        self.leaks = []
        self._old_env = {k: os.environ.get(k)
                         for k in ("CTRUN_ROOT", "CTRUN_CGROUP_PARENT", "CTRUN_LXCFS_DIR")}
        os.environ["CTRUN_ROOT"] = str(self.store)
        os.environ["CTRUN_CGROUP_PARENT"] = CGROUP_PARENT
        # the containers' LXCFS is the benchmark's own, stopped at cleanup: ctrun would
        # otherwise start the host-wide one (/run/ctrun-lxcfs) and leave it running
        self.lxcfs_dir = self.run_dir / "lxcfs"
        os.environ["CTRUN_LXCFS_DIR"] = str(self.lxcfs_dir)
        self.pycache = self.tmp / "pycache"
        for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):
            self._old_env[k] = os.environ.pop(k, None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        # filled now with what the warm server loads: the first server would otherwise
        # compile each module itself and keep the compiler's garbage (~4 MB of heap more
        # than a user's server, whose venv and Python come with their .pyc)
        subprocess.run([str(venv_dir() / "bin" / "python3"), "-P", "-c",
                        "from ctrun import server; server.warm()"],
                       stdin=subprocess.DEVNULL, capture_output=True, cwd="/")

    def __enter__(self):
        self._old_sig = {}
        for s in (signal.SIGTERM, signal.SIGHUP):
            self._old_sig[s] = signal.signal(s, _raise_exit)
        return self

    def __exit__(self, *exc):
        # a second Ctrl-C or a TERM must not cut the cleanup short (every step has a timeout)
        self._old_sig[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        if exc[0] in (KeyboardInterrupt, SystemExit):
            print("\ninterrupted: cleaning up...", file=sys.stderr)
        try:
            self.cleanup()
        finally:
            for s, h in self._old_sig.items():
                signal.signal(s, h)
            for k, v in self._old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return False

    def on_cleanup(self, fn, *args):
        self._cleanups.append((fn, args))

    def ctrun_cmd(self, *args):
        return [self.ctrun, *args]

    def ctrun_check(self, *args, timeout=120):
        p = subprocess.run(self.ctrun_cmd(*args), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"`ctrun {' '.join(args)}` failed ({p.returncode}): "
                               f"{p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def rootfs(self):
        """The busybox image's root file system: its one layer."""
        info = json.loads(self.ctrun_check("image", "inspect", "busybox"))
        return Path(info["layer_dirs"][0])

    def build_image(self):
        self.ctrun_check("image", "build", "busybox")
        r = self.rootfs()
        if not (r / "bin" / "busybox").exists():
            raise RuntimeError(f"ctrun image build busybox did not produce {r}")
        return r

    def check_clean(self, when):
        """Record what ctrun (or a peer) left behind that it should have removed itself,
        at a point where the benchmark has destroyed everything it made."""
        # it exits once idle (~1.5 s), or stays as long as the store's warm server (its
        # child) lives: not a leak
        left = wait_gone(monitor_pids(self.store), 5) if not server_pids(self.store) else []
        if left:
            self.leaks.append(f"{when}: ctrun monitor {left} still running 5 s after the "
                              "store's last container was destroyed")
        extra = [n for n in os.listdir(self.store / "containers")] \
            if (self.store / "containers").is_dir() else []
        if extra:
            self.leaks.append(f"{when}: {len(extra)} container dir(s) left in the store: "
                              f"{', '.join(sorted(extra)[:5])}{' ...' if len(extra) > 5 else ''}")
        # a live warm server's start pools (pre-made cgroups and network namespaces) are
        # its own, emptied when it leaves: not a leak while it lives
        serving = bool(server_pids(self.store))
        cgs = [d for d in cgroup_dirs() if d.name != CGROUP_PARENT
               and not (serving and any(p.startswith((".pool-", ".fill-")) for p in d.parts))]
        if cgs:
            self.leaks.append(f"{when}: {len(cgs)} cgroup dir(s) left, e.g. {cgs[0]}")
        for tool, root in (("runc", self.runc_root), ("crun", self.crun_root)):
            if root.is_dir():
                try:
                    ids = subprocess.run([tool, "--root", str(root), "list", "-q"],
                                         capture_output=True, text=True, timeout=30).stdout.split()
                except (OSError, subprocess.SubprocessError):
                    ids = []
                if ids:
                    self.leaks.append(f"{when}: {tool} containers left: {', '.join(ids[:5])}")
        for m in mounts_under(self.tmp):
            if not (serving and "/run/netns/pool-" in str(m)):
                self.leaks.append(f"{when}: mount left at {m}")

    # -------------------------------------------------------------- teardown
    def cleanup(self):
        for fn, args in reversed(self._cleanups):
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - keep cleaning
                warn(f"cleanup step {getattr(fn, '__name__', fn)} failed: {e}")
        self._cleanups.clear()
        self._ctrun_sweep()
        for tool, root in (("runc", self.runc_root), ("crun", self.crun_root)):
            self._oci_sweep(tool, root)
        self._cgroup_sweep()
        self._stop_lxcfs()
        self._process_sweep()
        for d in (self.tmp, self.run_dir):
            for m in mounts_under(d):
                self.leaks.append(f"mount left at {m}")
                subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
            shutil.rmtree(d, ignore_errors=True)
        print_list("PROBLEMS (a failure, or something ctrun or a peer should have removed "
                   "itself; the benchmark has cleaned it up):", self.leaks)

    def _stop_lxcfs(self):
        """The workspace's LXCFS, once its containers are gone (not a leak: started for
        them on purpose); a mount it leaves is reported by the sweep below."""
        if not (self.lxcfs_dir / "mnt").exists():
            return
        code = "import sys; from ctrun.runtime import lxcfs; lxcfs.stop(sys.argv[1])"
        try:
            subprocess.run([ctrun_python()[0], "-c", code, str(self.lxcfs_dir)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except subprocess.SubprocessError as e:
            warn(f"stopping the benchmark's lxcfs failed: {e}")

    def finish(self, name, result):
        """Write the result JSON with what the clean-up found; the exit code (1 on leaks).
        Called after the `with` block, once the clean-up has run."""
        result["leaks"] = self.leaks
        write_result(name, result)
        return 1 if self.leaks else 0

    def empty_store(self):
        """A second, empty store: timed in the same rounds as the full one, the difference
        is what the containers cost and not drift on the host."""
        from ctrun.api import Ctrun
        root = self.tmp / "empty-store"
        Ctrun(str(root)).store.ensure()
        return root

    def container_names(self):
        cdir = self.store / "containers"
        return sorted(n for n in os.listdir(cdir) if not n.startswith(".")) \
            if cdir.is_dir() else []

    def destroy_all(self, names=None):
        """`ctrun destroy --force` in batches; what a failed batch left is retried one by one
        (the CLI stops at the first container it fails on).  Returns the error messages."""
        errors = []
        names = self.container_names() if names is None else names
        for i in range(0, len(names), 50):
            try:
                p = subprocess.run(self.ctrun_cmd("--debug", "destroy", "--force",
                                                  *names[i:i + 50]),
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=300)
            except subprocess.TimeoutExpired:
                errors.append("ctrun destroy --force timed out")
                continue
            if p.returncode != 0:
                msg = p.stderr.strip()
                if "NotFound" not in (msg.splitlines() or [""])[-1]:
                    errors.append(msg)  # (a container that vanished meanwhile is no error)
                for n in sorted(set(names[i:i + 50]) & set(self.container_names())):
                    subprocess.run(self.ctrun_cmd("destroy", "--force", n),
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        return errors

    def _ctrun_sweep(self):
        for err in self.destroy_all():
            self.leaks.append("cleanup: `ctrun destroy --force` failed: "
                              + (err.splitlines() or ["?"])[-1][:200])
        if self.store.is_dir():
            try:
                subprocess.run(self.ctrun_cmd("gc"), stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                warn("ctrun gc timed out")
        # a store's warm server waits out its idle time (30 s): not a leak, but the
        # benchmark's stores go (the empty one too: a call there starts one), so each is
        # asked to leave now
        for store in (self.store, self.tmp / "empty-store"):
            servers = server_pids(store)
            for p in servers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGTERM)
            for p in wait_gone(servers, 5):
                self.leaks.append(f"ctrun server pid {p} still alive 5 s after SIGTERM")
                _kill(p)
            # with no container and no server left the monitor exits by itself in ~1.5 s
            for p in wait_gone(monitor_pids(store), 5):
                self.leaks.append(f"ctrun monitor pid {p} still alive 5 s after the last "
                                  "destroy")
                _kill(p)

    def _oci_sweep(self, tool, root):
        if not root.is_dir() or not shutil.which(tool):
            return
        try:
            out = subprocess.run([tool, "--root", str(root), "list", "-q"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
        except subprocess.SubprocessError:
            out = []
        for cid in out:
            if cid in ("NAME", "ID"):
                continue
            argv = [tool, "--root", str(root), "delete", "-f", cid]
            subprocess.run(crun_wrap(argv) if tool == "crun" else argv,
                           capture_output=True, timeout=30)

    def _cgroup_sweep(self):
        left = {}  # path below the hierarchy root -> [hierarchies, pids killed]
        for d in cgroup_dirs():
            mnt = next(m for m, _ in cgroup_mounts() if str(d).startswith(m + "/"))
            rel = os.path.relpath(d, mnt)
            procs = cgroup_procs(d)
            if procs or d.name != CGROUP_PARENT:
                entry = left.setdefault(rel, [0, set()])
                entry[0] += 1
                entry[1].update(procs)
            for p in procs:
                _kill(p)
            if procs:
                wait_gone(procs, 5)
            rmdir_cgroup(d, tries=20)
        for i, (rel, (n, procs)) in enumerate(sorted(left.items())):
            if i == 8:
                self.leaks.append(f"... and {len(left) - 8} more cgroup paths left")
                break
            killed = f", processes {sorted(procs)} killed" if procs else ""
            self.leaks.append(f"cgroup {rel} left in {n} hierarchies{killed}")

    def _process_sweep(self):
        marks = (str(self.tmp), str(self.run_dir))
        me = os.getpid()
        for p in pids():
            if p != me and any(m in a for a in cmdline(p) for m in marks):
                self.leaks.append(f"process {p} ({' '.join(cmdline(p))[:100]}) still running")
                _kill(p)


def _kill(pid):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)
