"""Bad input: one line naming the fix, a non-zero exit, no traceback, nothing left behind."""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import pytest


def assert_clean_error(r, *words):
    assert r.returncode != 0, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ctrun: error: ")
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def snapshot(store):
    return sorted(str(p.relative_to(store)) for p in (store / "containers").glob("*")) \
        if (store / "containers").exists() else []


@pytest.mark.parametrize("name", ["", "/", "..", "a/b", "x" * 65, "bad\x07name", "é"])
def test_invalid_names_are_refused(cli, store, name):
    before = snapshot(store)
    assert_clean_error(cli("create", name), "invalid container name")
    assert snapshot(store) == before


def test_duplicates_unknowns_and_wrong_states(cli, store):
    cli("create", "dup", "--", "sleep", "1000", check=True)
    assert_clean_error(cli("create", "dup"), "already exists")
    assert_clean_error(cli("create", "x1", "--image", "nosuchimage"), "nosuchimage")
    assert_clean_error(cli("start", "ghost"), "not found")
    assert_clean_error(cli("exec", "dup", "--", "true"), "not running", "ctrun start dup")
    cli("start", "dup", check=True)
    assert_clean_error(cli("start", "dup"), "already running")
    assert_clean_error(cli("destroy", "dup"), "is running", "--force")
    assert_clean_error(cli("kill", "dup", "NOSUCHSIG"), "unknown signal")
    cli("destroy", "--force", "dup", check=True)
    assert snapshot(store) == []


def test_command_not_found_leaves_nothing(cli, store):
    assert_clean_error(cli("create", "nocmd", "--", "no-such-binary"), "no-such-binary")
    assert_clean_error(cli("run", "--rm", "busybox", "--", "/nope"), "/nope")
    assert snapshot(store) == []


def test_bad_options_are_refused_before_anything_is_written(cli, store, tmp_path):
    cases = [
        (["create", "v1", "-v", "/does/not/exist:/x"], "does not exist"),
        (["create", "v2", "-v", f"{tmp_path}:relative"], "absolute"),
        (["create", "e1", "-e", "NOEQUALS"], "KEY=VALUE"),
        (["create", "u1", "-u", "root"], "UID"),
        (["create", "c1", "--cap-add", "CAP_FLY"], "unknown capability"),
        (["create", "h1", "--hostname", "bad_host!"], "hostname"),
        (["create", "l1", "--ulimit", "nofile=oops"], "ulimit"),
        (["create", "w1", "-w", "relative/dir"], "absolute"),
    ]
    for args, word in cases:
        assert_clean_error(cli(*args), word)
    assert snapshot(store) == []


def test_debug_shows_the_traceback(cli):
    r = cli("--debug", "start", "ghost")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_concurrent_creates_of_one_name_yield_exactly_one(cli, store):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: cli("create", "race"), range(8)))
    assert sum(r.returncode == 0 for r in results) == 1
    for r in results:
        if r.returncode:
            assert_clean_error(r, "race")
    assert snapshot(store) == ["containers/race"]


def test_parallel_verbs_on_different_containers(cli, store):
    names = [f"par{i}" for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert all(r.returncode == 0 for r in pool.map(
            lambda n: cli("run", "-d", "--name", n, "busybox", "--", "sleep", "1000"), names))
    rows = json.loads(cli("list", "--format", "json", check=True).stdout)
    assert sorted(r["name"] for r in rows if r["state"] == "running") == names
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert all(r.returncode == 0 for r in pool.map(
            lambda n: cli("destroy", "-f", n), names))


def test_gc_repairs_what_a_killed_cli_left(ct, cli, store):
    """kill -9 of the CLI mid-create and mid-start: the next gc finishes the job."""
    from ctrun import cgroups
    # a create killed before its rename leaves a .tmp directory; an image build likewise
    (store / "containers/.tmp-half-1234").mkdir(parents=True)
    # a destroy killed while it removed the renamed directory (or after a served reply)
    (store / "tmp/.destroy-gone-5678/upper").mkdir(parents=True)
    (store / "images/.tmp-halfimg-abcd").mkdir(parents=True)
    (store / "layers/.tmp-halfimg-abcd/diff").mkdir(parents=True)
    # a start killed after the cgroup was made but before the monitor ran anything
    ct.create("halfstart", cmd=["sleep", "1000"])
    mgr = ct.cgroup_manager("halfstart")
    mgr.create()
    from ctrun.state import write_json
    write_json(store / "containers/halfstart/state.json", {"start_id": "dead1"})
    # a cgroup with no container at all (destroy killed half-way)
    orphan = cgroups.manager(cgroups.container_name("orphan", ct.store.short_id),
                             parent=os.environ["CTRUN_CGROUP_PARENT"])
    orphan.create()
    out = cli("gc", check=True).stdout
    assert ".tmp-half-1234" in out and "halfstart" in out and "orphan" in out
    assert not (store / "containers/.tmp-half-1234").exists()
    assert ".destroy-gone-5678" in out and not (store / "tmp/.destroy-gone-5678").exists()
    assert not (store / "images/.tmp-halfimg-abcd").exists()
    assert not (store / "layers/.tmp-halfimg-abcd").exists()
    assert not mgr.exists() and not orphan.exists()
    info = cli.json("inspect", "halfstart")
    assert info["state"] == "stopped" and info["exit_reason"] == "start-interrupted"
    cli("start", "halfstart", check=True)  # and it is usable again
    assert cli.json("inspect", "halfstart")["state"] == "running"


def test_killed_cli_during_run_is_repaired(cli, store):
    """SIGKILL the CLI of an attached run: the container dies with it or is found by gc."""
    p = subprocess.Popen([sys.executable, "-m", "ctrun", "--root", str(store), "run",
                          "--name", "orphaned", "busybox", "--", "sleep", "1000"])
    cli.wait_state("orphaned")
    p.kill()
    p.wait()
    info = cli.json("inspect", "orphaned")
    # the init outlives its supervisor (reparented to the host's init): ctrun still sees it
    assert info["state"] == "running"
    cli("destroy", "--force", "orphaned", check=True)
    cli("gc", check=True)
    assert snapshot(store) == []


def test_lifecycle_restart_kill_and_list(cli, store):
    cli("create", "life", "--", "sleep", "1000", check=True)
    assert cli.json("inspect", "life")["state"] == "created"
    cli("start", "life", check=True)
    pid1 = cli.json("inspect", "life")["pid"]
    cli("restart", "life", "-t", "0.2", check=True)
    info = cli.json("inspect", "life")
    assert info["state"] == "running" and info["pid"] != pid1
    cli("kill", "life", "TERM", check=True)  # sleep as PID 1 has no handler: ignored
    time.sleep(0.2)
    assert cli.json("inspect", "life")["state"] == "running"
    cli("kill", "life", check=True)  # SIGKILL
    info = cli.wait_state("life", "stopped")
    assert info["state"] == "stopped" and info["exit_code"] == 137
    assert info["exit_reason"] == "killed by SIGKILL"
    table = cli("list", "--all", check=True).stdout
    assert "life" in table and "stopped" in table
    assert "life" not in cli("list", check=True).stdout


# ---------------------------------------------------------------- issue 13
def test_a_name_ending_in_a_newline_is_refused_and_leaves_nothing(cli, store):
    assert_clean_error(cli("create", "abc\n"), "invalid container name", "'abc\\n'")
    assert_clean_error(cli("run", "--rm", "--name", "abc\n", "busybox", "--", "true"),
                       "'abc\\n'")
    assert snapshot(store) == []


def _plant(store, name, config=True):
    """An entry an older ctrun let in: a directory under containers/, maybe a config."""
    d = store / "containers" / name
    d.mkdir(parents=True)
    if config:
        (d / "config.json").write_text(json.dumps({"name": name, "image": "busybox",
                                                   "cmd": ["true"]}))
        (d / "state.json").write_text("{}")
    return d


@pytest.mark.parametrize("bad", ["abc\n", "sp ace", "-lead"])
def test_gc_and_destroy_remove_entries_with_invalid_names(cli, store, bad):
    cli("create", "good", "--", "sleep", "1000", check=True)
    _plant(store, bad)
    _plant(store, bad + "2", config=False)
    _plant(store, "noconfig", config=False)  # a valid name without a config: debris
    # no verb is blocked by them, and a listing keeps one line per container
    table = cli("list", "-a", check=True).stdout.splitlines()
    assert len(table) == 3 and "good" in table[1] + table[2], table
    cli("start", "good", check=True)
    cli("stats", "--format", "json", check=True)
    out = cli("gc", check=True).stdout
    assert repr(bad) in out and repr(bad + "2") in out and "noconfig" in out, out
    assert snapshot(store) == ["containers/good"]
    # and destroy --force reaches one by its name, with or without a config
    _plant(store, bad)
    _plant(store, bad + "2", config=False)
    cli("destroy", "--force", "--", bad, bad + "2", check=True)
    assert snapshot(store) == ["containers/good"]
    cli("destroy", "--force", "good", check=True)


def test_gc_removes_stale_temp_files_of_dead_writers(cli, store):
    cli("create", "tmpfiles", check=True)
    d = store / "containers/tmpfiles"
    pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True).stdout.strip()
    stale = d / f".spec.json.{pid}.tmp"
    live = d / f".state.json.{os.getpid()}.tmp"  # this process could still be writing it
    (store / "networks").mkdir(mode=0o700, exist_ok=True)
    stale_lease = store / "networks" / f".ctrun0.leases.json.{pid}.tmp"
    for f in (stale, live, stale_lease):
        f.write_text("{")
    out = cli("gc", check=True).stdout
    assert stale.name in out and not stale.exists() and not stale_lease.exists(), out
    assert live.exists()
    live.unlink()


@pytest.mark.parametrize("args, shown", [
    (["--cpus", "-2\n"], "'-2\\n'"),
    (["--cpus", "1e9\n"], "'1e9\\n'"),
    (["-v", "/nonexistent\nchaos:/mnt"], "'/nonexistent\\nchaos'"),
    (["-e", "A\n=1"], "'A\\n=1'"),
    (["--hostname", "h\n"], "'h\\n'"),
    (["--image", "busybox\n"], "'busybox\\n'"),
    (["--no-such-option", "x\nctrun: forged"], "forged"),
])
def test_errors_quote_raw_input_on_one_line(cli, store, args, shown):
    assert_clean_error(cli("create", "q1", *args), shown)
    assert snapshot(store) == []


def test_a_refused_run_leaves_no_child_behind(store, capsys):
    """`run` forks its network helper before it parses the request; a run refused after
    that (--vm without -d) must reap it, not leave it to the host's init."""
    from ctrun import cli as climod

    def children():
        me = str(os.getpid())
        out = []
        for p in os.listdir("/proc"):
            try:
                with open(f"/proc/{p}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if st[st.rindex(")") + 2:].split()[1] == me:
                out.append(int(p))
        return out
    before = children()
    try:
        code = climod.main(["--root", str(store), "run", "--net", "ctrun0", "--vm",
                            "busybox", "--", "true"])
        assert code != 0
        assert "-d" in capsys.readouterr().err
        assert children() == before
    finally:
        for pid in set(children()) - set(before):
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def test_write_json_on_a_full_disk_leaves_no_temp_file(tmp_path):
    from ctrun.state import write_json
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        with pytest.raises(OSError):
            write_json(mnt / "state.json", {"big": "x" * 100000})
        assert os.listdir(mnt) == ["filler"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_gc_removes_stray_files_and_links_in_the_store(cli, store, tmp_path):
    cli("create", "kept", check=True)
    (store / "containers/stray").write_text("")
    target = tmp_path / "elsewhere"  # no config: not a container, whatever it holds
    target.mkdir()
    (target / "keep").write_text("")
    (store / "containers/link").symlink_to(target)
    cli("list", "-a", check=True)
    out = cli("gc", check=True).stdout
    assert "'stray'" in out and "'link'" in out, out
    assert snapshot(store) == ["containers/kept"]
    assert (target / "keep").exists()  # a link is removed, never followed


def test_an_option_is_not_taken_for_a_longer_one_it_begins(cli, store):
    """argparse would read `--name` as `--nameserver`, a prefix of it, and complain about a
    nameserver: an option is only ever its own full name."""
    r = cli("create", "--name", "c1", "busybox")
    assert_clean_error(r, "--name")
    assert "nameserver" not in r.stderr
