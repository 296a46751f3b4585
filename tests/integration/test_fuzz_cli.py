"""Fuzzed CLI arguments: names, sizes, CPU counts, volumes, env, ulimits and the rest, with
control characters and unicode.  Every call carries one argument that must be refused, so
every call must exit non-zero with exactly one line on stderr, no traceback, and leave the
store as it was.

Seeded: the seed is printed (and named in every failure); CTRUN_FUZZ_SEED=N replays a run.
Most calls run ctrun.cli.main in this process (a new interpreter per call is slow on a
shared host); a sample also runs as real `ctrun` processes, the way users call it.
"""

import contextlib
import io
import os
import random
import traceback

import pytest

from conftest import CLI

IN_PROCESS_CALLS = 240
SUBPROCESS_CALLS = 20

# what a hostile or careless argument may hold: line breaks, escapes, bidi overrides,
# invalid UTF-8 (a surrogate, as Python sees it in argv), wide and combining characters
HOSTILE = ["\n", "\r", "\t", "\x1b[2J", "\x1b]0;owned\x07", "\u2028", "\u0085", "\u202e",
           "\u200b", "\udcff", "é", "名", "\u0301", "\ufeff", " ", "'", '"', "\\", "$(id)",
           "\nctrun: error: forged"]

# option -> values this host must refuse (the poison), and values it may accept
REFUSED = {
    "--cpus": ["-2\n", "1e9\n", "0", "-1.5", "nan", "1e999", "0x1", "1,5", "½", "1\n2",
               "\u202e1"],
    "--memory": ["-2", "12Q", "1.5\n0", "0", "1\x1b[2J", "5 5", "0.5"],
    "--pids-limit": ["0", "-5", "x", "1\n2", "99999999999"],
    "--cpu-shares": ["1", "999999", "x\n"],
    "--cpuset-cpus": ["0-999", "a", "0\n-1", "-1"],
    "-v": ["/nonexistent\nchaos:/mnt", "/tmp:rel", "/tmp", "/tmp:/x:rx", "/tmp:/", "a:b",
           "/tmp:/x:ro:extra", "/nonexist\u202e:/mnt"],
    "-e": ["A\n=1", "1A=2", "NOEQ", "=v", "A B=1", "é=1", "A\x1b=1"],
    "--ulimit": ["nofile=x", "bogus=1", "nofile=10:5", f"nofile={1 << 40}\n", "nofile",
                 "nofile=1:2:3", "nproc=-5"],
    "--hostname": ["h\n", "bad_host!", "-x", "a" * 70, "é"],
    "-u": ["root", "1000\n", "1:2:3", "-1"],
    "-w": ["relative", "rel\n/x"],
    "--cap-add": ["CAP_FLY", "net_admin\n", "ÄLL"],
    "--image": ["nope\n", "a/b", "..", "", "no such", "x" * 65, "nosuchimage-fz"],
    "--device-read-bps": ["/dev/nope:1mb", "nodev", "/dev/null:1mb", "/dev/vda:fast\n"],
    "-p": ["99999:80", "x:y", "80:80/sctp"],
    "--mac": ["zz", "00:11:22:33:44:5g", "00:11:22:33:44:55\n"],
}
ACCEPTED = {
    "--cpus": ["0.5", "1", "max"], "--memory": ["64M", "1G", "-1"], "--pids-limit": ["64"],
    "--cpu-shares": ["512"], "--cpuset-cpus": ["0"], "-v": ["/tmp:/mnt", "/tmp:/data:ro"],
    "-e": ["A=1", "B=x\ny", "C=名"], "--ulimit": ["nofile=64", "core=0"],
    "--hostname": ["h1"], "-u": ["1000", "1000:1000"], "-w": ["/srv"],
    "--cap-add": ["NET_ADMIN"], "--image": ["busybox"], "--device-read-bps": [],
    "-p": [], "--mac": [],
}
# `set` takes the limit options only
SET_OPTS = ("--cpus", "--memory", "--pids-limit", "--cpu-shares", "--cpuset-cpus",
            "--device-read-bps")
SUBNETS_REFUSED = ["10.0.0.0/33", "999.0.0.0/8", "abc", "10.99.0.0\n/24", ""]
SEED_CT = "fzseed"


def _mutate(rng, value):
    """value with one hostile piece put somewhere in it."""
    i = rng.randrange(len(value) + 1)
    return value[:i] + rng.choice(HOSTILE) + value[i:]


def _name(rng):
    """A container name, mostly valid (so the options behind it get checked too)."""
    if rng.random() < 0.7:
        return "fz" + format(rng.randrange(1 << 16), "x")
    return _mutate(rng, rng.choice(["abc", "a" * 65, "-x", "..", "a/b", ""]))


def _options(rng, table, poison):
    """A poisoned option, plus up to three others whose values may or may not be valid."""
    args = [poison, rng.choice(REFUSED[poison])]
    others = [o for o in table if o != poison]  # a later one would override it
    for opt in rng.sample(others, k=min(len(others), rng.randrange(4))):
        pool = ACCEPTED[opt] or REFUSED[opt]
        value = rng.choice(pool)
        args += [opt, _mutate(rng, value) if rng.random() < 0.3 else value]
    pairs = [args[i:i + 2] for i in range(0, len(args), 2)]
    rng.shuffle(pairs)
    return [a for p in pairs for a in p]


def _call(rng):
    """One argv that must be refused."""
    verb = rng.choice(["create", "create", "run", "set", "exec", "network", "import"])
    create_opts = [o for o in REFUSED if o != "--image" or verb == "create"]
    if verb == "create":
        return ["create", _name(rng), *_options(rng, create_opts, rng.choice(create_opts))]
    if verb == "run":
        return ["run", "--rm", "--name", _name(rng),
                *_options(rng, create_opts, rng.choice(create_opts)), "busybox", "--", "true"]
    if verb == "set":
        name = SEED_CT if rng.random() < 0.7 else _name(rng)
        return ["set", name, *_options(rng, list(SET_OPTS), rng.choice(SET_OPTS))]
    if verb == "exec":  # the seed container is not running: always refused
        env = [a for _ in range(rng.randrange(3))
               for a in ("-e", rng.choice(REFUSED["-e"] + ACCEPTED["-e"]))]
        return ["exec", *env, rng.choice([SEED_CT, _name(rng)]), "--", "true"]
    if verb == "network":
        return ["network", "create", _name(rng), "--subnet", rng.choice(SUBNETS_REFUSED)]
    return ["image", "import", _mutate(rng, "/nonexistent-ctrun-fuzz/img.tar"), _name(rng)]


# the warm server's and the monitor's that starts it with the first served call
SERVER_FILES = {f"run/{who}.{ext}" for who in ("server", "monitor")
                for ext in ("sock", "lock", "log")}
POOL_DIR = "run/netns"   # the pooled network namespaces (ctrun.network.nspool)


def _tree(store):
    """The store's entries, but the files of its warm server and monitor (started by the
    first CLI call, gone when idle) and the start pools its spare fills between calls:
    not state a refused call could leave."""
    out = []
    for d, dirs, files in os.walk(store):
        out += [os.path.relpath(os.path.join(d, n), store) for n in dirs + files]
    return sorted(p for p in out if p not in SERVER_FILES and p != POOL_DIR
                  and not p.startswith(POOL_DIR + "/"))


def _in_process(store, argv):
    from ctrun import cli
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(["--root", str(store), *argv])
        except SystemExit as e:  # argparse
            code = e.code
        except Exception:  # noqa: BLE001 - what a user would see as a traceback
            code, _ = None, err.write(traceback.format_exc())
    return code, err.getvalue()


def _check(seed, argv, code, stderr, before, after):
    where = f"(CTRUN_FUZZ_SEED={seed}) ctrun {argv!r}"
    assert code not in (0, None), f"accepted: {where}"
    assert "Traceback" not in stderr, f"traceback: {where}\n{stderr}"
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"not one line: {where}\n{stderr!r}"
    assert lines[0].startswith("ctrun: error: "), f"{where}: {stderr!r}"
    assert after == before, f"the store changed: {where}: {set(after) ^ set(before)}"


def test_fuzzed_arguments_are_refused_on_one_line(ct, store):
    seed = int(os.environ.get("CTRUN_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"fuzz seed: {seed} (replay: CTRUN_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    ct.create(SEED_CT, cmd=["true"])  # set and exec have a container to aim at
    before = _tree(store)
    cli = CLI(store)
    for i in range(IN_PROCESS_CALLS + SUBPROCESS_CALLS):
        argv = _call(rng)
        if i < IN_PROCESS_CALLS:
            code, stderr = _in_process(store, argv)
        else:
            r = cli(*argv)
            code, stderr = r.returncode, r.stderr
        _check(seed, argv, code, stderr, before, _tree(store))
