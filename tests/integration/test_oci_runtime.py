"""ctrun-oci driven as runc is by its clients: create/start/state/kill/delete, run, exec,
pause/resume, ps, update, events, features, spec, the console socket, hooks, namespaces
joined by path, and every kind of bad input leaving nothing behind."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from oci_bundle import OCI, leftovers, reap, wait_child

PARENT = os.environ["CTRUN_CGROUP_PARENT"]


@pytest.fixture
def oci(tmp_path):
    o = OCI(tmp_path)
    yield o
    o.cleanup()
    assert not leftovers()


def _cgroup_dirs(name):
    base = Path("/sys/fs/cgroup")
    return [d for d in [base / PARENT / name, *base.glob(f"*/{PARENT}/{name}")] if d.is_dir()]


def test_create_start_state_delete(oci, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    b = oci.bundle("life", ["sh", "-c", "echo started > /out/msg; exit 7"],
                  mounts=[*json.loads((oci.bundle("tmpl", ["true"]) / "config.json")
                                      .read_text())["mounts"],
                          {"destination": "/out", "type": "bind", "source": str(out),
                           "options": ["rbind", "rw"]}])
    oci.create("life", b, "--pid-file", tmp_path / "pid")
    st = oci.state("life")
    assert st["status"] == "created" and st["id"] == "life" and st["bundle"] == str(b)
    pid = int((tmp_path / "pid").read_text())
    assert st["pid"] == pid
    assert not (out / "msg").exists()            # not run before start
    assert _cgroup_dirs("oci-life")
    oci("start", "life")
    assert wait_child(pid) == 7                   # the client (its subreaper) sees the code
    assert (out / "msg").read_text() == "started\n"
    assert oci.state("life")["status"] == "stopped"
    r = oci("start", "life", check=False)
    assert r.returncode == 1 and "cannot start a container that has stopped" in r.stderr
    oci("delete", "life")
    assert not _cgroup_dirs("oci-life")
    r = oci("state", "life", check=False)
    assert r.returncode == 1 and "container does not exist" in r.stderr
    assert r.stderr.count("\n") == 1


def test_run_returns_exit_code_and_cleans_up(oci):
    b = oci.bundle("run", ["sh", "-c", "echo hello; exit 3"])
    r = oci("run", "--bundle", b, "run", check=False)
    assert r.returncode == 3 and r.stdout == "hello\n"
    assert oci("list", "--format", "json").stdout.strip() == "[]"
    assert not _cgroup_dirs("oci-run")


def test_kill_signal_forms_and_delete_refusal(oci, tmp_path):
    b = oci.bundle("k", ["sleep", "1000"])
    oci.create("k", b)
    oci("start", "k")
    pid = oci.state("k")["pid"]
    assert oci.state("k")["status"] == "running"
    r = oci("delete", "k", check=False)
    assert r.returncode == 1 and "cannot delete container k that is not stopped: running" \
        in r.stderr
    r = oci("kill", "k", "SIGNOPE", check=False)
    assert r.returncode == 1 and "unknown signal 'SIGNOPE'" in r.stderr
    oci("kill", "k", "KILL")
    assert wait_child(pid) == -9
    r = oci("kill", "k", "9", check=False)
    assert r.returncode == 1 and "container not running" in r.stderr
    oci("delete", "k")


def test_exec_attached_detached_and_process_file(oci, tmp_path):
    b = oci.bundle("ex", ["sleep", "1000"])
    oci.create("ex", b)
    oci("start", "ex")
    r = oci("exec", "ex", "--", "sh", "-c", "echo in-$HOSTNAME; exit 4", check=False)
    assert r.returncode == 4 and r.stdout == "in-ctrun\n"
    proc = {"args": ["sh", "-c", "echo $FOO > /tmp/foo; sleep 0.2"], "cwd": "/tmp",
            "env": ["PATH=/bin", "FOO=bar"], "user": {"uid": 0, "gid": 0}}
    (tmp_path / "process.json").write_text(json.dumps(proc))
    oci("exec", "--process", tmp_path / "process.json", "--detach", "--pid-file",
        tmp_path / "exec.pid", "ex")
    epid = int((tmp_path / "exec.pid").read_text())
    assert wait_child(epid) == 0                  # reparented to us, as to a shim
    r = oci("exec", "ex", "cat", "/tmp/foo")
    assert r.stdout == "bar\n"
    init = oci.state("ex")["pid"]
    assert json.loads(oci("ps", "--format", "json", "ex").stdout) == [init]
    oci("delete", "--force", "ex")
    reap()


def test_pause_resume_update_events(oci):
    b = oci.bundle("pr", ["sleep", "1000"])
    oci.create("pr", b)
    oci("start", "pr")
    oci("pause", "pr")
    assert oci.state("pr")["status"] == "paused"
    r = oci("exec", "pr", "true", check=False)
    assert r.returncode == 1 and "paused" in r.stderr
    oci("resume", "pr")
    assert oci.state("pr")["status"] == "running"
    oci("update", "--memory", "64M", "--pids-limit", "50", "pr")
    ev = json.loads(oci("events", "--stats", "pr").stdout)
    assert ev["type"] == "stats" and ev["data"]["memory"]["usage"]["limit"] == 64 << 20
    assert ev["data"]["pids"]["limit"] == 50
    oci("delete", "--force", "pr")
    reap()


def test_console_socket_receives_the_pty(oci, tmp_path):
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    b = oci.bundle("tty", ["sh", "-c", "tty; echo on-a-terminal"],
                   process={"terminal": True})
    oci.create("tty", b, "--console-socket", sock_path)
    conn, _ = srv.accept()
    _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    conn.close()
    srv.close()
    master = fds[0]
    pid = oci.state("tty")["pid"]
    oci("start", "tty")
    data = b""
    end = time.monotonic() + 10
    while b"on-a-terminal" not in data and time.monotonic() < end:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    assert b"/dev/pts/" in data and b"on-a-terminal" in data
    assert wait_child(pid) == 0


def test_network_namespace_joined_by_path(oci):
    a = oci.bundle("pod", ["sleep", "1000"])
    oci.create("pod", a)
    oci("start", "pod")
    pod_pid = oci.state("pod")["pid"]
    nss = [{"type": t} for t in ("pid", "ipc", "uts", "mount")] + \
        [{"type": "network", "path": f"/proc/{pod_pid}/ns/net"}]
    b = oci.bundle("member", ["sleep", "1000"], linux={"namespaces": nss})
    oci.create("member", b)
    member_pid = oci.state("member")["pid"]
    assert os.readlink(f"/proc/{member_pid}/ns/net") == os.readlink(f"/proc/{pod_pid}/ns/net")
    assert os.readlink(f"/proc/{member_pid}/ns/uts") != os.readlink(f"/proc/{pod_pid}/ns/uts")
    oci("delete", "--force", "member")
    oci("delete", "--force", "pod")
    reap()


def test_hooks_get_the_state_in_order(oci, tmp_path):
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\necho \"$1 $(readlink /proc/self/ns/mnt) $(cat)\" >> {log}\n")
    hook.chmod(0o755)
    hooks = {p: [{"path": str(hook), "args": ["hook.sh", p]}]
             for p in ("prestart", "createRuntime", "createContainer", "startContainer",
                       "poststart", "poststop")}
    # startContainer runs in the container: its path resolves there
    inside = oci.rootfs / "bin/inhook.sh"
    inside.write_text("#!/bin/sh\necho \"$1 $(cat)\" > /inhook.log\n")
    inside.chmod(0o755)
    hooks["startContainer"] = [{"path": "/bin/inhook.sh", "args": ["x", "startContainer"]}]
    b = oci.bundle("hk", ["true"], hooks=hooks)
    oci.create("hk", b)
    pid = oci.state("hk")["pid"]
    oci("start", "hk")
    wait_child(pid)
    oci("delete", "hk")
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [
        "prestart", "createRuntime", "createContainer", "poststart", "poststop"]
    host_mnt = os.readlink("/proc/self/ns/mnt")
    for line in lines:
        phase, mnt, state = line.split(" ", 2)
        state = json.loads(state)
        assert state["id"] == "hk" and state["pid"] == pid and state["bundle"] == str(b)
        # createContainer runs in the container's mount namespace (before pivot_root, so
        # the host's hook path resolves), the others in the runtime's
        assert (mnt != host_mnt) == (phase == "createContainer"), line
    inside = (oci.rootfs / "inhook.log").read_text()
    assert inside.startswith("startContainer ") and '"id": "hk"' in inside
    (oci.rootfs / "inhook.log").unlink()


def test_features_and_spec(oci, tmp_path):
    doc = json.loads(oci("features").stdout)
    assert "network" in doc["linux"]["namespaces"] and "poststop" in doc["hooks"]
    assert doc["linux"]["seccomp"]["enabled"] is True
    d = tmp_path / "specdir"
    d.mkdir()
    oci("spec", "--bundle", d)
    conf = json.loads((d / "config.json").read_text())
    assert conf["root"]["path"] == "rootfs" and conf["process"]["args"] == ["sh"]
    r = oci("spec", "--bundle", d, check=False)
    assert r.returncode == 1 and "exists" in r.stderr


def _bad(oci, tmp_path, cid, bundle, *extra):
    r = oci("create", "--bundle", bundle, *extra, cid, check=False)
    assert r.returncode != 0
    msg = r.stderr.strip()
    assert msg.count("\n") == 0 and msg.startswith("ctrun-oci: "), msg
    assert "Traceback" not in r.stderr
    logged = [json.loads(line) for line in oci.log.read_text().splitlines()]
    assert logged[-1]["level"] == "error" and logged[-1]["msg"] in msg
    assert not (oci.root / cid).exists() if cid and "/" not in cid else True
    assert not _cgroup_dirs(f"oci-{Path(bundle).name}")
    return msg


def test_bad_input_one_line_and_nothing_left(oci, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json" in _bad(oci, tmp_path, "b1", empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert "is not valid JSON" in _bad(oci, tmp_path, "b2", broken)
    v2 = oci.bundle("v2", ["true"], ociVersion="2.0.0")
    assert "ociVersion '2.0.0' is not supported" in _bad(oci, tmp_path, "b3", v2)
    esc = oci.bundle("esc", ["true"], root={"path": "../../../../"})
    assert "escapes the bundle" in _bad(oci, tmp_path, "b4", esc)
    ok = oci.bundle("ok", ["true"])
    term = oci.bundle("term", ["true"], process={"terminal": True})
    (tmp_path / "notsock").write_text("")
    assert "is not a unix socket" in _bad(oci, tmp_path, "b5", term, "--console-socket",
                                          tmp_path / "notsock")
    for bad_id in ("a/b", "..", "x/../y"):
        assert "invalid container id" in _bad(oci, tmp_path, bad_id, ok)
    fail = tmp_path / "fail.sh"
    fail.write_text("#!/bin/sh\nexit 3\n")
    fail.chmod(0o755)
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 100\n")
    hang.chmod(0o755)
    hf = oci.bundle("hookfail", ["true"], hooks={"createRuntime": [{"path": str(fail)}]})
    assert "exited with 3" in _bad(oci, tmp_path, "b6", hf)
    hh = oci.bundle("hookhang", ["true"],
                    hooks={"createRuntime": [{"path": str(hang), "timeout": 1}]})
    assert "timed out" in _bad(oci, tmp_path, "b7", hh)
    reap()
    assert oci("list", "--format", "json").stdout.strip() == "[]"


def test_id_in_use_and_unknown_id(oci):
    b = oci.bundle("dup", ["sleep", "1000"])
    oci.create("dup", b)
    r = oci("create", "--bundle", b, "dup", check=False)
    assert r.returncode == 1 and "container with id exists: dup" in r.stderr
    assert oci.state("dup")["status"] == "created"   # the first one is untouched
    for verb in (["start", "nope"], ["kill", "nope"], ["delete", "nope"], ["pause", "nope"],
                 ["exec", "nope", "true"], ["ps", "nope"], ["state", "nope"]):
        r = oci(*verb, check=False)
        assert r.returncode == 1 and "container does not exist" in r.stderr, (verb, r.stderr)
    oci("delete", "--force", "nope")                # runc: no error with --force
    oci("delete", "dup")                             # a created container goes without force
    reap()


def test_runc_default_capabilities_run(oci):
    """`runc spec` lists ambient capabilities without an inheritable set: they cannot be
    raised, and are skipped as runc skips them, not a failed start."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    b = oci.bundle("rcaps", ["sh", "-c", "grep -E '^Cap(Eff|Amb)' /proc/self/status"],
                   process={"capabilities": {k: list(caps) for k in
                                             ("bounding", "effective", "permitted",
                                              "ambient")}})
    r = oci("run", "--bundle", b, "rcaps", check=False)
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(":") for line in r.stdout.split("\n") if line)
    assert int(fields["CapAmb"], 16) == 0
    assert int(fields["CapEff"], 16) == (1 << 29) | (1 << 5) | (1 << 10)


# what the verbs a client calls for every container must not load: each call is a new
# process, and these cost milliseconds of start-up (json brings re and enum; the cgroup
# package pathlib and re; shutil its compression modules; signal its enums)
HEAVY = ("json", "re", "enum", "pathlib", "shutil", "subprocess", "typing", "ctrun.cgroups",
         "ctrun.state", "ctrun.oci.bundle", "ctrun.oci.vm", "ctrun.oci.hooks")


def _loaded(oci, *verb):
    """The modules one cold ctrun-oci call imported (the interpreter's import profile; a
    call the root's warm server runs imports nothing)."""
    r = oci(*verb, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "CTRUN_SERVER": "off"})
    return {ln.split("|")[-1].strip() for ln in r.stderr.splitlines()
            if ln.startswith("import time:") and "|" in ln} - {"imported package"}


def test_light_verbs_load_only_what_they_use(oci):
    """state, start, kill and delete of a stopped container load none of the modules above
    (the tree they need is os, fcntl, select and ctrun's own small modules)."""
    b = oci.bundle("light", ["sleep", "1000"])
    oci.create("light", b)
    pid = oci.state("light")["pid"]
    for verb in (["state", "light"], ["start", "light"], ["kill", "light", "9"]):
        heavy = sorted(m for m in _loaded(oci, *verb) if m in HEAVY)
        assert not heavy, (verb, heavy)
    assert wait_child(pid) == -9
    loaded = _loaded(oci, "delete", "light")
    assert not sorted(m for m in loaded if m in HEAVY)
    assert not _cgroup_dirs("oci-light")


def test_seccomp_programs_are_cached_by_the_whole_profile(oci):
    """A profile is compiled once and kept in the root's cache; a profile that differs in
    one field gets its own program."""
    def profile(errno_ret):
        return {"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                              "errnoRet": errno_ret}]}
    cache = oci.root / ".cache"
    for n, (errno_ret, message) in enumerate([(1, "Operation not permitted"),
                                             (28, "No space left on device"),
                                             (1, "Operation not permitted")]):
        b = oci.bundle(f"sc{n}", ["mkdir", "/made"],
                       linux={"seccomp": profile(errno_ret)})
        r = oci("run", "--bundle", b, f"sc{n}", check=False)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert len(list(cache.iterdir())) == min(n + 1, 2)   # the third is the first's
    assert (cache.stat().st_mode & 0o777) == 0o700
