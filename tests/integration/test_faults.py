"""Faults a user causes without meaning to: a CLI killed with SIGKILL at any moment, and
verbs racing on one container.  Afterwards the store must be whole: `gc` repairs what a
killed verb left, every container can still be listed, inspected and destroyed, and
nothing is left on the host (the session's leak check, and a check of our own here).

The kill points are random; the seed is printed, and CTRUN_FAULT_SEED=N replays a run."""

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, _stop_server, leaks, zombies_of

ROUNDS = 30
NAMES = ("f0", "f1", "f2")


def _ctrun(store, *args):
    return [sys.executable, "-m", "ctrun", "--root", str(store), *args]


def _killed_at(store, argv, delay):
    """Run `ctrun ARGV`, SIGKILL it after `delay` seconds (if it still runs); its exit."""
    p = subprocess.Popen(_ctrun(store, *argv), cwd=REPO, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def _store_leaks(store):
    """What the session leak check reports of this store now: its mounts, cgroups (named
    with its id) and monitor (the directory itself goes with the fixture, and its warm
    server, which stays until idle, with the fixture's cleanup; other stores, and the
    start pools of their servers, are not ours)."""
    from ctrun.state import Store
    own = "." + Store(store).short_id
    return [line for line in leaks() if not line.startswith(("directory:", "process: ctrun server"))
            and (own in line if line.startswith("cgroup:") else str(store) in line)]


@pytest.mark.slow
def test_sigkill_at_random_points_then_gc_leaves_a_consistent_store(cli, store):
    seed = int(os.environ.get("CTRUN_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"fault-injection seed {seed} (replay: CTRUN_FAULT_SEED={seed})")
    rng = random.Random(seed)
    create = ["create", "{}", "--image", "busybox", "--net", "none", "--", "sleep", "1000"]
    # verb -> the commands (run whole, their failures ignored) that give it work to do
    verbs = {"create": [], "start": [create], "stop": [create, ["start", "{}"]],
             "destroy": [create, ["start", "{}"]]}
    killed = {"create": create, "start": ["start", "{}"], "stop": ["stop", "{}", "-t", "1"],
              "destroy": ["destroy", "{}"]}
    cli("image", "build", "busybox", check=True)     # not a kill point: built once
    # how long each verb takes here, whole: kills land in its second half mostly, where
    # its work is (the first is Python starting)
    took = {}
    for verb in ("create", "start", "stop", "destroy"):
        t0 = time.monotonic()
        cli(*[a.format("cal") for a in killed[verb]], check=True)
        took[verb] = time.monotonic() - t0
    log = []
    for rnd in range(ROUNDS):
        name, verb = rng.choice(NAMES), rng.choice(list(verbs))
        for pre in verbs[verb][:rng.randint(0, len(verbs[verb]))] if verb == "destroy" \
                else verbs[verb]:
            cli(*[a.format(name) for a in pre])
        argv = [a.format(name) for a in killed[verb]]
        if verb == "destroy" and rng.random() < 0.5:
            argv.append("--force")
        delay = took[verb] * rng.uniform(0.3, 1.1)
        rc = _killed_at(store, argv, delay)
        log.append(f"{rnd}: {' '.join(argv)} killed after {delay:.3f}s -> {rc}")
    where = f"seed {seed}:\n  " + "\n  ".join(log)
    print(where)

    r = cli("gc")
    assert r.returncode == 0, f"gc failed: {r.stderr}\n{where}"
    r = cli("list", "-a", "--format", "json")
    assert r.returncode == 0, f"list failed: {r.stderr}\n{where}"
    rows = json.loads(r.stdout)
    for row in rows:
        r = cli("inspect", row["name"])
        assert r.returncode == 0, f"inspect {row['name']} failed: {r.stderr}\n{where}"
        if json.loads(r.stdout)["state"] != "running":   # what survived gc still works
            r = cli("start", row["name"])
            assert r.returncode == 0, f"start {row['name']} failed: {r.stderr}\n{where}"
        r = cli("destroy", "--force", row["name"])
        assert r.returncode == 0, f"destroy {row['name']} failed: {r.stderr}\n{where}"
    assert json.loads(cli("list", "-a", "--format", "json").stdout) == [], where
    assert sorted(os.listdir(store / "containers")) == [], where
    # with no container left and its server asked to leave, the store's monitor leaves
    # (it stays while its server, its child, lives); then nothing may remain
    _stop_server(store)
    deadline = time.monotonic() + 10
    while _store_leaks(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _store_leaks(store) == [], where


def _who(pids):
    """Each pid's comm and command line, for a failure's message."""
    out = []
    for pid in pids:
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            comm = cmd = "(gone)"
        out.append(f"{pid} {comm}: {cmd[:120]}")
    return out


def _ctrun_pids(store):
    """This process and every process of ctrun's for this store (CLIs and the monitor)."""
    pids = {os.getpid()}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ctrun" in cmd and str(store).encode() in cmd:
                pids.add(int(d.name))
    return pids


def test_stop_exec_and_kill_at_once_leave_a_consistent_container(cli, store):
    cli("create", "race", "--image", "busybox", "--net", "none", "--", "sleep", "1000",
        check=True)
    for rnd in range(4):
        cli("start", "race", check=True)
        cli.wait_state("race", "running")
        verbs = [["stop", "race", "-t", "1"], ["exec", "race", "--", "sh", "-c", "sleep 1"],
                 ["kill", "race", "KILL"], ["exec", "race", "--", "true"]]
        random.Random(rnd).shuffle(verbs)
        results = {}

        def run(argv):
            results[argv[0] + str(len(results))] = cli(*argv, timeout=60)
        threads = [threading.Thread(target=run, args=(v,)) for v in verbs]
        for t in threads:
            t.start()
        parents = _ctrun_pids(store)      # while they run: the CLIs and the monitor
        for t in threads:
            t.join()
        for key, r in results.items():    # each fails cleanly or succeeds, never crashes
            assert "Traceback" not in r.stderr, (key, r.stderr)
            assert len(r.stderr.strip().splitlines()) <= 1 or r.returncode == 0, (key, r.stderr)
        info = cli.wait_state("race", "stopped")
        assert info["state"] == "stopped"
        # no zombie of ours: a child every ctrun process (or this test) forgot to reap.  A
        # worker replies before it exits, so it may be a zombie for a moment after: the
        # verdict is the sample that ended the wait, not a later one (which may catch it)
        deadline = time.monotonic() + 5
        parents |= _ctrun_pids(store)
        left = zombies_of(parents)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = zombies_of(parents)
        assert left == [], f"round {rnd}: zombies of {_who([ppid for _, ppid, _ in left])}"
    r = cli("destroy", "race")
    assert r.returncode == 0, r.stderr
    assert not (store / "containers" / "race").exists()
