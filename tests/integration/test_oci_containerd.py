"""containerd (Debian's, started by the test in private roots) with its runc v2 shim calling
the runtime under test (`ctr run --runc-binary`): each test checks what the user sees AND
which runtime verbs the shim called (the logging wrapper's log).  The runtime is
$CTRUN_OCI_RUNTIME (default /usr/local/bin/ctrun-oci); CTRUN_OCI_RUNTIME=/usr/sbin/runc runs
the same tests on runc."""

import os
import shutil

import pytest

from conftest import until
from oci_clients import (IMAGE, busybox_archive, containerd, frozen, in_pty,  # noqa: F401
                         oci_calls, oci_runtime, oci_wrapper, verbs)

pytestmark = pytest.mark.slow


@pytest.fixture
def ctd(containerd, oci_wrapper, oci_calls):
    """containerd plus `ctd.traced(what, *args)`: `ctr ARGS` (a `run` gets the wrapper as its
    runc binary, a private runc root and a cgroup below the session's parent) and the
    runtime calls it made.  Every task and container is removed afterwards."""
    def traced(what, *args, timeout=120):
        args = list(args)
        if args[0] == "run":
            cid = args[args.index(IMAGE) + 1]
            args[1:1] = containerd.run_args(oci_wrapper.path, cid)
        return oci_calls.traced(oci_wrapper, "containerd", what, containerd.cmd(*args),
                                lambda: containerd(*args, timeout=timeout))
    containerd.traced = traced
    yield containerd
    for task in containerd("task", "ls", "-q").stdout.split():
        containerd("task", "kill", "-s", "SIGKILL", task)
        until(lambda: task_status(containerd, task) != "RUNNING", 10, f"{task} stopping")
        containerd("task", "delete", task)
    for c in containerd("container", "ls", "-q").stdout.split():
        containerd("container", "delete", c)


def task_status(ctd, cid):
    """STATUS of the task in `ctr task ls` (None: no task)."""
    for line in ctd("task", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == cid:
            return f[2]
    return None


def task_pid(ctd, cid):
    for line in ctd("task", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == cid:
            return int(f[1])
    raise AssertionError(f"no task {cid}")


def detached(ctd, cid, *cmd, opts=()):
    r, calls = ctd.traced(f"run -d ({cid})", "run", "-d", *opts, IMAGE, cid, *cmd)
    assert r.returncode == 0, r.stderr
    assert verbs(calls) == ["create", "start"]
    return calls


def test_image_import_then_run_it(ctd, busybox_archive):
    """The archive the fixture imported, imported again (the same digest: a no-op for the
    runtime), then run: its files are the container's root."""
    r, calls = ctd.traced("image import", "image", "import", str(busybox_archive))
    assert r.returncode == 0, r.stderr
    assert IMAGE in ctd("image", "ls", "-q").stdout.split()
    assert calls == []
    r, calls = ctd.traced("run --rm of the imported image", "run", "--rm", IMAGE, "imported",
                          "sh", "-c", "readlink /bin/sh; cat /etc/hostname")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "/bin/busybox"
    assert verbs(calls)[:2] == ["create", "start"]


def test_run_rm_returns_the_exit_code(ctd):
    r, calls = ctd.traced("run --rm with an exit code", "run", "--rm", IMAGE, "once",
                          "sh", "-c", "echo out-$((6*7)); exit 3")
    assert r.returncode == 3, r.stderr
    assert "out-42" in r.stdout
    v = verbs(calls)
    assert v[:2] == ["create", "start"] and v[2:] and set(v[2:]) == {"delete"}
    create = calls[0]
    assert "--bundle" in create and "--pid-file" in create and create[-1] == "once"
    assert "--root" in create and "--log-format" in create
    assert ctd("container", "ls", "-q").stdout.split() == []


def test_exec_with_a_tty(ctd, oci_wrapper, oci_calls):
    detached(ctd, "execd", "sleep", "1000")
    argv = ctd.cmd("task", "exec", "--tty", "--exec-id", "shell1", "execd",
                   "sh", "-c", "tty; test -t 0 && echo IS-A-TTY; exit 5")
    argv[0] = shutil.which("ctr")
    (code, out), calls = oci_calls.traced(oci_wrapper, "containerd", "task exec --tty", argv,
                                          lambda: in_pty(argv))
    assert code == 5, out
    assert "/dev/pts/" in out and "IS-A-TTY" in out
    assert verbs(calls) == ["exec"]
    assert {"--process", "--detach", "--console-socket"} <= set(calls[0])


def test_kill_then_delete(ctd):
    detached(ctd, "victim", "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done")
    pid = task_pid(ctd, "victim")
    r, calls = ctd.traced("task kill", "task", "kill", "--signal", "SIGTERM", "victim")
    assert r.returncode == 0, r.stderr
    assert verbs(calls) == ["kill"] and calls[0][-2:] == ["victim", "15"]
    until(lambda: task_status(ctd, "victim") == "STOPPED", 10, "the task stopping")
    assert _state(pid) in (None, "Z")
    r, calls = ctd.traced("task delete", "task", "delete", "victim")
    assert r.returncode == 0, r.stderr
    assert "exit code 7" in r.stderr   # the status the init's TERM handler exited with
    # the shim deletes the container, then once more with --force as it cleans up
    assert set(verbs(calls)) == {"delete"} and calls[0][-1] == "victim"
    assert task_status(ctd, "victim") is None
    r, calls = ctd.traced("container delete", "container", "delete", "victim")
    assert r.returncode == 0, r.stderr
    assert calls == []


def test_a_container_joins_anothers_network_namespace(ctd):
    detached(ctd, "pod", "sleep", "1000")
    netns = f"/proc/{task_pid(ctd, 'pod')}/ns/net"
    r, calls = ctd.traced("run --with-ns network:PATH (a pod's member)", "run", "--rm",
                          "--with-ns", f"network:{netns}", IMAGE, "member",
                          "readlink", "/proc/self/ns/net")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == os.readlink(netns)
    assert r.stdout.strip() != os.readlink("/proc/self/ns/net")
    assert verbs(calls)[:2] == ["create", "start"]


def test_task_ps(ctd):
    detached(ctd, "listed", "sh", "-c", "sleep 1000 & exec sleep 2000")
    pid = task_pid(ctd, "listed")
    r, calls = ctd.traced("task ps", "task", "ps", "listed")
    assert r.returncode == 0, r.stderr
    pids = {int(line.split()[0]) for line in r.stdout.splitlines()[1:] if line.split()}
    assert pid in pids and len(pids) == 2, r.stdout
    assert verbs(calls) == ["ps"]
    assert calls[0][-1] == "listed" and "json" in " ".join(calls[0])


def test_task_pause_and_resume(ctd):
    detached(ctd, "frozen", "sleep", "1000")
    r, calls = ctd.traced("task pause", "task", "pause", "frozen")
    assert r.returncode == 0, r.stderr
    assert verbs(calls) == ["pause"] and calls[0][-1] == "frozen"
    assert task_status(ctd, "frozen") == "PAUSED"
    assert frozen(task_pid(ctd, "frozen"))
    r, calls = ctd.traced("task resume", "task", "resume", "frozen")
    assert r.returncode == 0, r.stderr
    assert verbs(calls) == ["resume"] and calls[0][-1] == "frozen"
    assert task_status(ctd, "frozen") == "RUNNING"
    assert not frozen(task_pid(ctd, "frozen"))


def test_kill_all(ctd):
    detached(ctd, "group", "sh", "-c", "sleep 1000 & sleep 2000 & wait")
    r, calls = ctd.traced("task kill --all", "task", "kill", "--all", "--signal", "SIGKILL",
                          "group")
    assert r.returncode == 0, r.stderr
    assert verbs(calls) == ["kill"] and "--all" in calls[0]
    assert calls[0][-2:] == ["group", "9"]
    until(lambda: task_status(ctd, "group") == "STOPPED", 10, "the task stopping")


def _state(pid):
    """The process's state letter (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None
