"""Policy code: input validation, state derivation, log records, the spec."""

import os
import resource
import signal

import pytest

from ctrun import config, spec, state
from ctrun.errors import InvalidInput
from ctrun.runtime import logfile


@pytest.mark.parametrize("bad", ["", "/", "..", ".", "a/b", "x" * 65, "bad\x01name", "-lead",
                                 "naïve", "sp ace"])
def test_invalid_names(bad):
    with pytest.raises(InvalidInput) as e:
        config.check_name(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("good", ["web1", "a", "x" * 64, "db.primary", "a_b-c"])
def test_valid_names(good):
    assert config.check_name(good) == good


def test_env_volume_user_parsing(tmp_path):
    assert config.parse_env(["A=1", "B="]) == ["A=1", "B="]
    for bad in (["NOEQUALS"], ["1X=2"], ["=v"]):
        with pytest.raises(InvalidInput):
            config.parse_env(bad)
    v = config.parse_volume(f"{tmp_path}:/data:ro")
    assert v == {"source": str(tmp_path), "target": "/data", "readonly": True}
    for bad in (f"{tmp_path}", f"{tmp_path}:rel", f"{tmp_path}:/x:rx", "/nonexistent-ctrun:/x",
                f"{tmp_path}:/"):
        with pytest.raises(InvalidInput):
            config.parse_volume(bad)
    assert config.parse_user("1000:1000") == "1000:1000"
    with pytest.raises(InvalidInput):
        config.parse_user("root")


def test_ulimit_parsing_respects_host_hard_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert config.parse_ulimit("nofile=64:128") == ("nofile", [64, 128])
    assert config.parse_ulimit("core=0") == ("core", [0, 0])
    for bad in ("nofile", "bogus=1", "nofile=x", "nofile=10:5", "nofile=1:2:3"):
        with pytest.raises(InvalidInput):
            config.parse_ulimit(bad)
    if not config._cap_sys_resource():
        with pytest.raises(InvalidInput, match="CAP_SYS_RESOURCE"):
            config.parse_ulimit(f"nofile={hard + 1}")


def test_caps_and_signals():
    cfg = config.Config(name="x")
    assert config.effective_caps(cfg) == sorted(config.DEFAULT_CAPS)
    cfg = config.Config(name="x", cap_add=config.parse_caps(["net_admin"]),
                        cap_drop=config.parse_caps(["CAP_MKNOD"]))
    caps = config.effective_caps(cfg)
    assert "CAP_NET_ADMIN" in caps and "CAP_MKNOD" not in caps
    cfg = config.Config(name="x", cap_add=["CAP_KILL"], cap_drop=["ALL"])
    assert config.effective_caps(cfg) == ["CAP_KILL"]
    with pytest.raises(InvalidInput):
        config.parse_caps(["CAP_FLY"])
    assert config.parse_signal("term") == signal.SIGTERM
    assert config.parse_signal("9") == 9
    assert config.parse_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3
    with pytest.raises(InvalidInput):
        config.parse_signal("NOPE")


def test_write_json_is_atomic_and_readable(tmp_path):
    p = tmp_path / "s.json"
    state.write_json(p, {"a": 1})
    assert state.read_json(p) == {"a": 1}
    assert state.read_json(tmp_path / "missing.json", "dflt") == "dflt"
    assert [f.name for f in tmp_path.iterdir()] == ["s.json"]


def test_status_never_trusts_a_recycled_pid(tmp_path):
    assert state.status(tmp_path)[0] == "created"
    state.write_json(tmp_path / "state.json", {"start_id": "s1"})
    # live.json names our own pid but with a different start time: a recycled pid
    me = os.getpid()
    state.write_json(tmp_path / "live.json", {"start_id": "s1", "pid": me,
                                             "pid_start": state.proc_start_time(me) + 1})
    st, _, _, ex = state.status(tmp_path)
    assert st == "stopped" and ex["exit_reason"] == "monitor-lost"
    state.write_json(tmp_path / "live.json", {"start_id": "s1", "pid": me,
                                             "pid_start": state.proc_start_time(me)})
    assert state.status(tmp_path)[0] == "running"
    state.write_json(tmp_path / "exit.json", {"start_id": "s1", "exit_code": 3,
                                             "exit_reason": "exited"})
    assert state.status(tmp_path)[0] == "stopped"
    state.write_json(tmp_path / "exit.json", {"start_id": "old", "exit_code": 3})
    assert state.status(tmp_path)[0] == "running"


def test_log_records_and_rotation(tmp_path):
    p = tmp_path / "console.log"
    w = logfile.LogWriter(p, max_bytes=300)
    w.write("stdout", b"hello\nwor")
    w.write("stdout", b"ld\n")
    w.write("stderr", b"oops\n")
    w.write("stdout", b"tail-without-newline")
    w.close()
    recs = [logfile.parse(line) for f in logfile.files(p) for line in open(f, "rb").read().splitlines()]
    assert [(s, full, t) for _, s, full, t in recs] == [
        ("stdout", True, b"hello"), ("stdout", True, b"world"), ("stderr", True, b"oops"),
        ("stdout", False, b"tail-without-newline")]
    w = logfile.LogWriter(p, max_bytes=300)
    for i in range(50):
        w.write("stdout", b"line %d\n" % i)
    w.close()
    assert os.path.getsize(p) <= 300 and os.path.exists(f"{p}.1")
    assert not os.path.exists(f"{p}.2")


def test_spec_defaults(tmp_path):
    cfg = config.Config(name="web1", env=["A=2"], init=True)
    from ctrun.images.layers import View
    img = View([tmp_path / "l2", tmp_path / "l1"])
    s = spec.build(cfg, {"cmd": ["/sbin/init"], "env": ["A=1", "PATH=/bin"]}, tmp_path,
                   img, ["/sys/fs/cgroup/pids/ctrun/web1/ct/cgroup.procs"])
    assert s["annotations"]["run.ctrun.overlay"]["lower"] == img.dirs   # top first
    assert s["process"]["args"] == ["/dev/init", "--", "/sbin/init"]
    assert s["process"]["env"] == ["A=2", "PATH=/bin"]
    assert s["hostname"] == "web1"
    assert s["process"]["noNewPrivileges"] is True
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert {n["type"] for n in s["linux"]["namespaces"]} == {
        "pid", "mount", "uts", "ipc", "network", "cgroup"}
    assert [m["destination"] for m in s["mounts"]][-1] == "/dev/init"
    priv = spec.build(config.Config(name="p", privileged=True), {}, tmp_path, img, [])
    assert priv["linux"]["maskedPaths"] == [] and priv["annotations"]["run.ctrun.seccomp"] is None
