"""ctrun-oci's light verbs (state, start, kill, delete) served by the warm server of their
--root (ctrun.oci.serving) through the compiled client (client.c -DCTRUN_OCI): the first
cold call starts the server, the calls after it run in its workers, with the output and
exit codes of the cold path; the server lives in a cgroup of its own, keeps to its root,
refuses a non-root peer and leaves when idle; with no server the Python ctrun-oci serves."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import request_as, until
from ctrun import client
from ctrun.client import OCI_MAGIC
from ctrun.oci import serving, spawn
from ctrun.procs import parent_pid
from oci_bundle import OCI, wait_child

PARENT = os.environ["CTRUN_CGROUP_PARENT"]
COLD = {**os.environ, "CTRUN_SERVER": "off"}
# the interpreter prints its imports' times: a call that starts Python does, a served one
# (its modules loaded by the server) does not
PROFILE = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}


@pytest.fixture
def oci(tmp_path):
    o = OCI(tmp_path)
    yield o
    o.cleanup()


def _server(root):
    """The pid of root's listening server (its workers share its argv: not those)."""
    sock = Path(spawn.run_dir(str(root))) / "server.sock"

    def find():
        pids = set(serving.server_pids(root))
        top = [p for p in pids if parent_pid(p) not in pids]
        return top[0] if len(top) == 1 and sock.exists() else None
    return until(find, what=f"the ctrun-oci server of {root}")


def _cold_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("import time:")]


def _served(oci, *args, check=True):
    """A call that the server ran (no interpreter started for it)."""
    r = oci(*args, check=check, env=PROFILE)
    assert not _cold_lines(r.stderr), f"{args} ran cold"
    return r


def _hooked(oci, name, record):
    """A bundle whose poststart and poststop hooks record their parent's status (the
    process that ran the verb) in record.PHASE."""
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat /proc/$PPID/status > {record}.$0",
                                        "PHASE"]}
    return oci.bundle(name, ["sleep", "1000"], hooks={
        "poststart": [{**hook, "args": hook["args"][:-1] + ["poststart"]}],
        "poststop": [{**hook, "args": hook["args"][:-1] + ["poststop"]}]})


def _parent_of(status_file):
    for line in Path(status_file).read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])


def test_the_light_verbs_run_in_the_roots_warm_server(oci, tmp_path):
    """A cold `state` starts the root's server; start, state, kill and delete then run in
    its workers (the hooks' parent is a worker, the server's child)."""
    oci.create("w", _hooked(oci, "w", tmp_path / "hook"))
    pid = oci.state("w")["pid"]
    server = _server(oci.root)
    _served(oci, "start", "w")
    assert _parent_of(tmp_path / "hook.poststart") == server
    st = json.loads(_served(oci, "state", "w").stdout)
    assert st["status"] == "running" and st["pid"] == pid
    _served(oci, "kill", "w", "KILL")
    assert wait_child(pid) == -9
    _served(oci, "delete", "w")
    assert _parent_of(tmp_path / "hook.poststop") == server
    assert not (oci.root / "w").exists()


def _same(oci, *args):
    """The call served, then cold: the same exit code, stdout, stderr and --log record."""
    out = []
    for env in (PROFILE, COLD):
        oci.log.write_text("")
        r = oci(*args, check=False, env=env)
        log = [{k: v for k, v in json.loads(ln).items() if k != "time"}
               for ln in oci.log.read_text().splitlines()]
        out.append((r.returncode, r.stdout, r.stderr, log))
    served, cold = out
    assert not _cold_lines(served[2]), f"{args} ran cold"
    assert served == cold, args
    return cold


def test_served_calls_answer_as_the_cold_path(oci):
    oci.create("a", oci.bundle("a", ["sleep", "1000"]))
    pid = oci.state("a")["pid"]
    _server(oci.root)
    assert json.loads(_same(oci, "state", "a")[1])["status"] == "created"
    _served(oci, "start", "a")
    assert _same(oci, "start", "a")[0] == 1   # already running: runc's error
    assert json.loads(_same(oci, "state", "a")[1])["status"] == "running"
    code, _, err, log = _same(oci, "delete", "a")   # not stopped
    assert code == 1 and "not stopped" in err and log[0]["level"] == "error"
    _served(oci, "kill", "a", "KILL")
    assert wait_child(pid) == -9
    assert json.loads(_same(oci, "state", "a")[1])["status"] == "stopped"
    code, _, err, _ = _same(oci, "kill", "a")   # stopped: "container not running"
    assert code == 1 and "not running" in err
    assert _same(oci, "kill", "a", "NOSUCH")[0] == 1
    assert _same(oci, "state", "nosuch")[0] == 1
    assert _same(oci, "start", "../x")[0] == 1
    assert _same(oci, "delete", "--force", "nosuch")[0] == 0
    oci.create("b", oci.bundle("b", ["sleep", "1000"]))
    b = oci.state("b")["pid"]
    _served(oci, "delete", "--force", "b")   # a created container: killed and removed
    assert wait_child(b) == -9
    assert not (oci.root / "b").exists()


def test_two_roots_have_servers_of_their_own(oci, tmp_path):
    (tmp_path / "other").mkdir()
    other = OCI(tmp_path / "other")
    try:
        oci.create("same", oci.bundle("one", ["sleep", "1000"]))
        other.create("same", other.bundle("two", ["sleep", "1000"]))
        oci("state", "same")
        other("state", "same")
        servers = {_server(oci.root), _server(other.root)}
        assert len(servers) == 2
        assert spawn.run_dir(str(oci.root)) != spawn.run_dir(str(other.root))
        one = json.loads(_served(oci, "state", "same").stdout)
        two = json.loads(_served(other, "state", "same").stdout)
        assert one["bundle"].endswith("/one") and two["bundle"].endswith("/two")
        _served(oci, "delete", "--force", "same")
        assert json.loads(_served(other, "state", "same").stdout)["status"] == "created"
        assert not (oci.root / "same").exists()
    finally:
        other.cleanup()


def _cgroup_paths(pid):
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctls, path = line.split(":", 2)
        out[ctls] = path
    return out


def _mounts():
    from ctrun.cgroups import detect
    lay = detect()
    return list(lay.v1.values()) + ([lay.v2] if lay.v2 else [])


def test_the_server_leaves_its_starters_cgroup_for_one_of_its_own(oci):
    """Started by a call in a client's cgroup (as conmon's), the server moves, in every
    hierarchy, to a cgroup of its own; the client's cgroup can be removed meanwhile; the
    server's goes with it."""
    caller = [m / PARENT / "caller" for m in _mounts()]
    for d in caller:
        d.mkdir(parents=True)
    try:
        def join():
            for d in caller:
                if d.parent.parent.name == "cpuset":
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        for lvl in (d.parent, d):
                            if not (lvl / f).read_text().strip():
                                (lvl / f).write_text((lvl.parent / f).read_text())
                (d / "cgroup.procs").write_text(str(os.getpid()))
        oci("state", "nosuch", check=False, preexec_fn=join)
        server = _server(oci.root)
        own = f"/{PARENT}/{serving.cgroup_name(str(oci.root))}"
        paths = _cgroup_paths(server)
        assert paths and all(p == own for p in paths.values()), paths
        for d in caller:
            d.rmdir()   # the client's cgroup goes: nothing of the server holds it
        caller = []
        os.kill(server, 15)
        until(lambda: not serving.server_pids(oci.root), what="the server's exit")
        assert not any((m / own.lstrip("/")).exists() for m in _mounts())
    finally:
        for d in caller:
            d.rmdir()


def test_the_server_leaves_when_idle(oci):
    oci("state", "nosuch", check=False, env={**os.environ, "CTRUN_SERVER_IDLE": "0.5"})
    server = _server(oci.root)
    run = Path(spawn.run_dir(str(oci.root)))
    own = serving.cgroup_name(str(oci.root))
    assert any((m / PARENT / own).is_dir() for m in _mounts())
    until(lambda: not serving.server_pids(oci.root), what=f"server {server}'s idle exit")
    assert not run.exists()   # an empty log: nothing kept
    assert not any((m / PARENT / own).exists() for m in _mounts())


def test_the_socket_is_root_only(oci):
    oci("state", "nosuch", check=False)
    _server(oci.root)
    run = Path(spawn.run_dir(str(oci.root)))
    assert run.parent.stat().st_mode & 0o777 == 0o700
    assert run.stat().st_mode & 0o777 == 0o700
    assert (run / "server.sock").stat().st_mode & 0o777 == 0o600
    argv = ["--root", str(oci.root), "state", "nosuch"]
    assert request_as(run / "server.sock", 0, client._request(argv, OCI_MAGIC)) == b"Sx1\n"
    assert request_as(run / "server.sock", 65534, client._request(argv, OCI_MAGIC)) == b""


def test_a_call_no_server_can_serve_runs_cold(oci):
    """With the server's directory unusable, the compiled client hands every call to the
    Python ctrun-oci, which answers it itself; once usable, a call starts the server."""
    run = Path(spawn.run_dir(str(oci.root)))
    run.parent.mkdir(mode=0o700, exist_ok=True)
    run.write_text("")   # a file where the server's directory goes: it cannot start
    try:
        oci.create("f", oci.bundle("f", ["sleep", "1000"]))
        for _ in range(2):
            r = oci("state", "f", env=PROFILE)
            assert _cold_lines(r.stderr) and json.loads(r.stdout)["status"] == "created"
        assert not serving.server_pids(oci.root)
    finally:
        run.unlink()
    oci("state", "f")
    _server(oci.root)
    oci("delete", "--force", "f")


def test_other_verbs_are_never_served(oci):
    """create, run, list...: the Python ctrun-oci's (their processes are the caller's); a
    create starts no server (conmon, which calls it, would wait for it at its end)."""
    oci.create("o", oci.bundle("o", ["sleep", "1000"]))
    assert not serving.server_pids(oci.root)
    oci("state", "o")
    _server(oci.root)
    r = oci("list", env=PROFILE)
    assert _cold_lines(r.stderr)
    r = oci("run", "--bundle", oci.bundle("r", ["true"]), "r", env=PROFILE)
    assert _cold_lines(r.stderr)
    assert subprocess.run([os.environ["CTRUN_OCI_BIN"], "--version"], capture_output=True,
                          env=PROFILE, text=True).stderr
