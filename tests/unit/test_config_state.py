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


def test_an_ephemeral_containers_records_are_not_fsynced_and_shared_files_are(
        tmp_path, monkeypatch):
    """run --rm's container (state.ephemeral): its own files skip the fsync; another
    container's, the store's shared files and anything after the call stay durable."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    ct = tmp_path / "containers"
    for d in ("ct-1", ".tmp-ct-1-ab12", "ct-10", "other"):
        (ct / d).mkdir(parents=True)
    (tmp_path / "networks").mkdir()
    with state.ephemeral("ct-1"):
        state.write_json(ct / "ct-1" / "state.json", {})
        state.write_json(ct / ".tmp-ct-1-ab12" / "config.json", {})
        assert synced == []
        state.write_json(ct / "ct-10" / "state.json", {})
        state.write_json(ct / "other" / "state.json", {})
        state.write_json(tmp_path / "networks" / "leases.json", {})
        assert len(synced) == 3
        state.sync(ct / "ct-1" / "state.json")   # a start's deferred fsync: skipped too
        assert len(synced) == 3
    state.write_json(ct / "ct-1" / "state.json", {})
    assert len(synced) == 4
    state.sync(ct / "ct-1" / "state.json")
    assert len(synced) == 5


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


# ---------------------------------------------------------------- issue 13: input that sticks
@pytest.mark.parametrize("check, value", [
    (config.check_name, "abc\n"), (config.check_hostname, "host\n"),
    (lambda v: config.parse_env([v]), "KEY\n=1"), (config.parse_user, "1000\n"),
    (config.parse_user, "１０００")])
def test_checks_match_the_whole_value(check, value):
    """'$' also matches before a trailing newline: every check must match the whole value."""
    with pytest.raises(InvalidInput):
        check(value)


def test_quote_escapes_what_could_forge_a_line():
    from ctrun.errors import one_line, quote
    assert quote("abc\n") == "'abc\\n'"
    for hostile in ("a\nctrun: ok", "\r", "\x1b[2J", "\u2028", "\u202e", "\x00", "\udcff"):
        q = quote(hostile)
        assert q.isprintable() and q.startswith(("'", '"')), q
    assert quote(3) == "'3'"
    assert one_line("two\nlines\x1b") == "two\\nlines\\x1b"
    assert one_line("naïve 'x'") == "naïve 'x'"


@pytest.mark.parametrize("call, shown", [
    (lambda: config.parse_volume("/nonexistent\nchaos:/mnt"), "'/nonexistent\\nchaos'"),
    (lambda: config.parse_ulimit(f"nofile={(1 << 40)}\n"), None),
    (lambda: _limits(cpus="-2\n"), "'-2\\n'"),
    (lambda: _limits(cpus="1e9\n"), "'1e9\\n'"),
    (lambda: _limits(cpuset_cpus="0-999\n"), "'0-999'"),
    (lambda: _limits(device_read_bps=["/dev/no\nne:1mb"]), "'/dev/no\\nne'"),
])
def test_errors_quote_the_input_they_show(call, shown):
    with pytest.raises(InvalidInput) as e:
        call()
    msg = str(e.value)
    assert msg.isprintable(), msg  # one line: no newline, no escape sequence
    if shown:
        assert shown in msg, msg


def _limits(**opts):
    from ctrun.cgroups.limits import from_options
    return from_options(**opts)


def test_write_json_leaves_no_temp_file_when_it_fails(tmp_path, monkeypatch):
    # the rename fails: the target is a non-empty directory
    (tmp_path / "s.json").mkdir()
    (tmp_path / "s.json" / "x").write_text("")
    with pytest.raises(OSError):
        state.write_json(tmp_path / "s.json", {"a": 1})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["s.json"]
    # a full disk takes part of the data: an error, never a torn file renamed into place
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:3]))
    with pytest.raises(OSError):
        state.write_json(tmp_path / "t.json", {"a": 1})
    monkeypatch.undo()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["s.json"]


def test_stale_temp_files_are_those_of_dead_writers(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".state.json.{dead}.tmp").write_text("{")
    (tmp_path / f".state.json.{os.getpid()}.tmp").write_text("{")  # a writer at work
    (tmp_path / "state.json").write_text("{}")
    assert [p.name for p in state.stale_temp_files(tmp_path)] == [f".state.json.{dead}.tmp"]


def _dead_pid():
    """A pid no process has (a reaped child's, unless recycled at once: then look on)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


def test_no_message_holds_an_unformatted_field():
    """A plain string literal with a {field} in it is a missing f prefix (the image error
    said `ctrun image import FILE {name}` literally); docstrings and .format() are fine."""
    import ast
    import io
    import re
    import tokenize
    from pathlib import Path
    field = re.compile(r"(?<!\{)\{[A-Za-z_][\w.]*(\[[^\]]*\])?(![rsa])?(:[^{}\s;]*)?\}(?!\})")
    found = []
    for path in sorted((Path(config.__file__).parent).rglob("*.py")):
        text = path.read_text()
        docstrings = {n.value.lineno for n in ast.walk(ast.parse(text))
                      if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
        for i, t in enumerate(toks):
            if t.type != tokenize.STRING or t.start[0] in docstrings:
                continue
            prefix = t.string[:t.string.index(t.string[-1])].lower()
            if "f" in prefix or not field.search(t.string):
                continue
            j = i + 1  # the literal's own .format(): skip the rest of its concatenation
            while j < len(toks) and toks[j].type == tokenize.STRING:
                j += 1
            if j + 1 < len(toks) and toks[j].string == "." and toks[j + 1].string == "format":
                continue
            found.append(f"{path.name}:{t.start[0]}: {t.string}")
    assert not found, "string literals with a {field} but no f prefix:\n" + "\n".join(found)
