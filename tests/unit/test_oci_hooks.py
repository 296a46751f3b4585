"""ctrun.oci.hooks: runtime-spec hooks run for real, as small shell scripts in tmp_path."""

import json
import os
import time

import pytest

from ctrun.errors import ContainerFailed, HookFailed, InvalidInput
from ctrun.oci import hooks

STATE = {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 4242,
         "bundle": "/srv/bundles/c1", "annotations": {"k": "v"}}


def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_stdin_is_the_state_and_output_goes_to_our_stderr(tmp_path, capfd):
    got = tmp_path / "stdin"
    path = script(tmp_path, "h", f"/bin/cat > {got}; echo to-stdout; echo to-stderr >&2")
    assert hooks.run([{"path": path}], STATE, "createRuntime") == []
    assert json.loads(got.read_text()) == STATE
    out, err = capfd.readouterr()
    assert "to-stdout" not in out
    assert "to-stdout\n" in err and "to-stderr\n" in err


def test_env_is_exactly_the_given_one_and_args_zero_is_argv0(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRUN_TEST_LEAK", "1")
    environ, cmdline = tmp_path / "environ", tmp_path / "cmdline"
    # /proc/$$/environ is what the hook was given, before the shell adds anything
    body = (f"/usr/bin/tr '\\0' '\\n' < /proc/$$/environ > {environ}; "
            f"/usr/bin/tr '\\0' '\\n' < /proc/$$/cmdline > {cmdline}")
    path = script(tmp_path, "h", body)
    hooks.run([{"path": path, "args": ["my-hook", "one", "two"],
                "env": ["A=1", "B=x=y", "A=2"]}], STATE, "prestart")
    assert environ.read_text().splitlines() == ["A=2", "B=x=y"]  # the last A wins, as in runc
    # a script's argv[0] reaches the shell as its script path; the rest follows
    assert cmdline.read_text().splitlines()[-3:] == [path, "one", "two"]

    hooks.run([{"path": path, "env": []}], STATE, "prestart")
    assert environ.read_text() == ""
    hooks.run([{"path": path}], STATE, "prestart")  # no env: ours, as runc does
    assert "CTRUN_TEST_LEAK=1" in environ.read_text().splitlines()


def test_args_zero_is_the_programs_argv0(tmp_path):
    cmdline = tmp_path / "cmdline"
    hooks.run([{"path": "/bin/sh", "args": ["not-sh", "-c", f"cat /proc/$$/cmdline > {cmdline}"]}],
              STATE, "poststop")
    assert cmdline.read_bytes().split(b"\0")[0] == b"not-sh"
    if os.path.exists("/bin/busybox"):  # busybox runs the applet its argv[0] names
        with pytest.raises(HookFailed, match="exited with 1"):
            hooks.run([{"path": "/bin/busybox", "args": ["false"]}], STATE, "poststop")
        # no args: argv[0] is the path, and busybox without an applet prints its help
        hooks.run([{"path": "/bin/busybox", "args": []}], STATE, "poststop")


def _gone(pid):
    """The process has exited (a zombie waiting for init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_timeout_kills_the_hook_and_its_children(tmp_path):
    pidfile = tmp_path / "pid"
    path = script(tmp_path, "slow", f"/bin/sleep 1000 & echo $! > {pidfile}; wait")
    with pytest.raises(HookFailed) as e:
        hooks.run([{"path": path, "timeout": 1}], STATE, "createContainer")
    assert str(e.value) == f"createContainer hook '{path}' timed out after 1 s"
    assert isinstance(e.value, ContainerFailed)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is asynchronous: wait, do not time it
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the hook's child survived its timeout"


def test_non_zero_exit_and_unrunnable_hooks_raise(tmp_path):
    failing = script(tmp_path, "fail", "exit 3")
    with pytest.raises(HookFailed) as e:
        hooks.run([{"path": failing}], STATE, "startContainer")
    assert str(e.value) == f"startContainer hook '{failing}' exited with 3"

    missing = str(tmp_path / "missing")
    with pytest.raises(HookFailed) as e:
        hooks.run([{"path": missing}], STATE, "prestart")
    assert str(e.value) == f"prestart hook '{missing}' cannot be run: No such file or directory"

    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(HookFailed) as e:
        hooks.run([{"path": str(plain)}], STATE, "prestart")
    assert str(e.value) == f"prestart hook '{plain}' cannot be run: Permission denied"

    killed = script(tmp_path, "killed", "kill -TERM $$")
    with pytest.raises(HookFailed) as e:
        hooks.run([{"path": killed}], STATE, "poststart")
    assert str(e.value) == f"poststart hook '{killed}' was killed by SIGTERM"


def test_hooks_run_in_order_and_a_failure_stops_the_rest(tmp_path):
    log = tmp_path / "log"
    first, second, third = (script(tmp_path, n, f"echo {n} >> {log}; exit {code}")
                            for n, code in (("first", 0), ("second", 4), ("third", 0)))
    entries = [{"path": p} for p in (first, second, third)]
    with pytest.raises(HookFailed, match="exited with 4"):
        hooks.run(entries, STATE, "createRuntime")
    assert log.read_text().split() == ["first", "second"]

    log.unlink()
    failures = hooks.run(entries, STATE, "poststop", keep_going=True)
    assert log.read_text().split() == ["first", "second", "third"]
    assert [str(f) for f in failures] == [f"poststop hook '{second}' exited with 4"]


def test_run_checks_each_hook_before_running_it(tmp_path):
    log = tmp_path / "log"
    ok = script(tmp_path, "ok", f"echo ran >> {log}")
    with pytest.raises(InvalidInput, match=r"^hooks.poststart\[1\].path 'rel/hook' is not an "):
        hooks.run([{"path": ok}, {"path": "rel/hook"}], STATE, "poststart")
    assert log.read_text() == "ran\n"


@pytest.mark.parametrize("obj, message", [
    ([], "hooks must be an object, not '[]'"),
    ({"preStart": []}, "hooks.preStart is not a hook phase; use one of prestart, createRuntime, "
                       "createContainer, startContainer, poststart, poststop"),
    ({"poststart": {"path": "/bin/true"}}, "hooks.poststart must be a list of hooks"),
    ({"poststart": ["/bin/true"]}, "hooks.poststart[0] must be an object, not '/bin/true'"),
    ({"poststart": [{"args": ["x"]}]},
     "hooks.poststart[0].path is missing; give the hook's absolute path"),
    ({"poststop": [{"path": "/bin/true"}, {"path": "true"}]},
     "hooks.poststop[1].path 'true' is not an absolute path; give the hook's absolute path"),
    ({"prestart": [{"path": 7}]}, "hooks.prestart[0].path '7' is not an absolute path"),
    ({"createRuntime": [{"path": "/bin/true", "args": "true"}]},
     "hooks.createRuntime[0].args must be a list of strings"),
    ({"createRuntime": [{"path": "/bin/true", "env": ["A=1", "B"]}]},
     "hooks.createRuntime[0].env[1] 'B' is not NAME=VALUE"),
    ({"createRuntime": [{"path": "/bin/true", "env": ["=1"]}]},
     "hooks.createRuntime[0].env[0] '=1' is not NAME=VALUE"),
    ({"startContainer": [{"path": "/bin/true", "timeout": 0}]},
     "hooks.startContainer[0].timeout '0' is not a whole number of seconds above 0"),
    ({"startContainer": [{"path": "/bin/true", "timeout": 1.5}]},
     "hooks.startContainer[0].timeout '1.5' is not a whole number"),
    ({"startContainer": [{"path": "/bin/true", "timeout": True}]},
     "hooks.startContainer[0].timeout 'True' is not a whole number"),
])
def test_validate_names_the_field(obj, message):
    with pytest.raises(InvalidInput) as e:
        hooks.validate(obj)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_validate_accepts_every_phase():
    hooks.validate(None)
    hooks.validate({p: [{"path": "/bin/true", "args": ["true"], "env": ["A=1"], "timeout": 5}]
                    for p in hooks.PHASES} | {"poststop": None})
