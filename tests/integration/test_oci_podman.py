"""Podman (with conmon and netavark, Debian's) driving the runtime under test through its
`--runtime` option: each test checks what the user sees AND which runtime verbs podman
called (the logging wrapper's log).  The runtime is $CTRUN_OCI_RUNTIME (default
/usr/local/bin/ctrun-oci); CTRUN_OCI_RUNTIME=/usr/sbin/runc runs the same tests on runc."""

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from conftest import until
from oci_clients import (IMAGE, busybox_archive, cgroup_of, frozen, in_pty,  # noqa: F401
                         oci_calls, oci_runtime, oci_wrapper, podman, verbs)

pytestmark = pytest.mark.slow


@pytest.fixture
def pm(podman, oci_wrapper, oci_calls):
    """podman plus `pm.traced(what, *args)`: the command run with --runtime WRAPPER where
    it creates a container, and the runtime calls it made (settled: conmon's exit command
    included)."""
    def traced(what, *args, timeout=120):
        args = list(args)
        if args[0] in ("run", "create"):
            args[1:1] = ["--runtime", str(oci_wrapper.path), *podman.create_args()]
        return oci_calls.traced(oci_wrapper, "podman", what, podman.cmd(*args),
                                lambda: podman(*args, timeout=timeout), podman.settle)
    podman.traced = traced
    yield podman
    # stopped first and left to conmon's exit command (which tears the network down), then
    # removed: what a user's `podman stop; podman rm` does
    podman("stop", "-a", "-t", "0", timeout=120)
    podman.settle()
    podman("rm", "-af", timeout=120)
    podman.settle()


def detached(pm, name, *cmd, opts=()):
    """`podman run -d` (on podman.network, its default here, unless opts say otherwise)."""
    r, calls = pm.traced(f"run -d ({name})", "run", "-d", "--name", name, *opts, IMAGE, *cmd)
    assert r.returncode == 0, r.stderr
    return calls


def pid_of(pm, name):
    return int(pm("inspect", "--format", "{{.State.Pid}}", name, check=True).stdout)


def test_run_rm_returns_the_exit_code(pm):
    r, calls = pm.traced("run --rm with an exit code", "run", "--rm", "--network", "none",
                         IMAGE, "sh", "-c", "echo out-$((6*7)); exit 3")
    assert r.returncode == 3, r.stderr
    assert "out-42" in r.stdout
    assert verbs(calls) == ["create", "start", "delete"]
    create = calls[0]
    assert "--bundle" in create and "--pid-file" in create
    assert calls[2][-2:] == ["--force", create[-1]]
    assert pm("ps", "-aq").stdout.split() == []    # --rm removed it


def test_run_detached_then_exec_with_a_tty(pm, oci_wrapper, oci_calls):
    calls = detached(pm, "box", "sleep", "1000")
    assert verbs(calls) == ["create", "start"]
    argv = pm.cmd("exec", "-it", "box", "sh", "-c", "tty; test -t 0 && echo IS-A-TTY; exit 5")
    argv[0] = shutil.which("podman")
    (code, out), calls = oci_calls.traced(
        oci_wrapper, "podman", "exec -it", argv, lambda: in_pty(argv, env=pm.env), pm.settle)
    assert code == 5, out
    assert "/dev/pts/" in out and "IS-A-TTY" in out
    assert verbs(calls) == ["exec"]
    ex = calls[0]
    assert "--tty" in ex
    assert "--console-socket" in ex and "--process" in ex and "--detach" in ex


def test_logs(pm):
    detached(pm, "talker", "sh", "-c", "echo hello-from-the-box; sleep 1000")
    until(lambda: "hello-from-the-box" in pm("logs", "talker").stdout, 10,
          "the container's output in podman logs")
    r, calls = pm.traced("logs", "logs", "talker")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello-from-the-box\n"
    assert calls == []    # conmon keeps the log: no runtime call


def test_stop_then_rm(pm):
    detached(pm, "stoppable", "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done")
    pid = pid_of(pm, "stoppable")
    r, calls = pm.traced("stop", "stop", "-t", "10", "stoppable")
    assert r.returncode == 0, r.stderr
    assert not Path(f"/proc/{pid}").exists()
    state = json.loads(pm("inspect", "stoppable", check=True).stdout)[0]["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 7
    # the TERM, then conmon's exit command (podman container cleanup) deletes it
    assert verbs(calls) == ["kill", "delete"]
    assert calls[0][-2:] == [calls[1][-1], "15"] and "--force" in calls[1]
    r, calls = pm.traced("rm", "rm", "stoppable")
    assert r.returncode == 0, r.stderr
    assert calls == []   # already deleted from the runtime
    assert pm("ps", "-aq").stdout.split() == []


def test_bridge_network_with_a_published_port(pm, oci_calls):
    port = 18000 + os.getpid() % 1000
    oci_calls.substitute(f"127.0.0.1:{port}:", "127.0.0.1:$PORT:")
    detached(pm, "web", "sh", "-c", "mkdir /www && echo served-by-busybox > /www/index.html "
             "&& exec httpd -f -p 80 -h /www",
             opts=("--network", pm.network, "-p", f"127.0.0.1:{port}:80"))
    pid = pid_of(pm, "web")
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert pm.bridge in os.listdir("/sys/class/net")

    def fetch():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
        except OSError:
            return None
    assert until(fetch, 20, f"an answer on the published port {port}") \
        == b"served-by-busybox\n"


def test_memory_limit_is_in_the_containers_cgroup(pm):
    calls = detached(pm, "limited", "sleep", "1000", opts=("--memory", "64m"))
    pid = pid_of(pm, "limited")
    cg = cgroup_of(pid, "memory")
    limit = cg / "memory.limit_in_bytes" if (cg / "memory.limit_in_bytes").exists() \
        else cg / "memory.max"
    assert int(limit.read_text()) == 64 << 20
    spec = json.loads(Path(calls[0][calls[0].index("--bundle") + 1], "config.json").read_text())
    assert spec["linux"]["resources"]["memory"]["limit"] == 64 << 20
    r = pm("exec", "limited", "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
           "2>/dev/null || cat /sys/fs/cgroup/memory.max")
    assert r.stdout.split() == [str(64 << 20)], r.stderr


def test_top(pm):
    detached(pm, "topped", "sleep", "1000")
    r, calls = pm.traced("top", "top", "topped")
    assert r.returncode == 0, r.stderr
    assert "sleep 1000" in r.stdout
    assert set(verbs(calls)) <= {"ps", "state"}


def test_pause_and_unpause(pm):
    detached(pm, "frozen", "sleep", "1000")
    pid = pid_of(pm, "frozen")
    r, calls = pm.traced("pause", "pause", "frozen")
    assert r.returncode == 0, r.stderr
    assert verbs(calls) == ["pause"]
    assert frozen(pid)
    r, calls = pm.traced("unpause", "unpause", "frozen")
    assert r.returncode == 0, r.stderr
    assert verbs(calls) == ["resume"]
    assert not frozen(pid)

