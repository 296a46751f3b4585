"""sysinfo(2) in a container answers with the container's figures (ctrun.runtime.sysinfo):
busybox's free and uptime, which call it instead of reading /proc, show the memory limit and
the container's uptime; the supervisor is the foreground runner or the store's monitor, which
still answers once the warm server that started the container has gone."""

import os
import subprocess
import sys

import pytest

import conftest
from conftest import server_pids, until

needs_lxcfs = pytest.mark.skipif(not os.path.exists("/usr/bin/lxcfs"),
                                 reason="lxcfs is not installed (apt-get install lxcfs)")


def ctrun(store, *args, env=None, check=True):
    r = subprocess.run([sys.executable, "-m", "ctrun", "--root", str(store), *args],
                       capture_output=True, text=True, timeout=60, cwd=conftest.REPO,
                       env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"ctrun {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


def free_total_mib(out):
    """The total column of busybox `free -m`'s Mem: line."""
    return int(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("Mem:")))


def host_total_mib():
    with open("/proc/meminfo") as f:
        kib = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal:")))
    return kib // 1024


@needs_lxcfs
@pytest.mark.parametrize("flags", [[], ["--userns"]], ids=["default", "userns"])
def test_busybox_free_shows_the_memory_limit(cli, flags):
    out = cli("run", "--rm", *flags, "--memory", "512M", "busybox", "--", "free", "-m",
              check=True).stdout
    assert free_total_mib(out) == 512, out


@needs_lxcfs
def test_busybox_uptime_counts_from_the_containers_start(cli):
    out = cli("run", "--rm", "busybox", "--", "uptime", check=True).stdout
    assert " up 0 min," in out, out


@needs_lxcfs
def test_the_answer_is_checked_like_the_kernels(cli, probe):
    """The struct lands in the caller's buffer; a NULL, read-only or truncated buffer gets
    EFAULT (as from the kernel), never a write through a read-only mapping."""
    out = cli("run", "--rm", "--memory", "512M", "-v", f"{probe}:/probe:ro", "busybox",
              "--", "/probe", "sysinfo", check=True).stdout
    first, *rest = out.splitlines()
    fields = dict(kv.split("=") for kv in first.split())
    assert int(fields["totalram"]) == 512 << 20, out
    assert int(fields["uptime"]) < 60 and int(fields["procs"]) == 1, out   # the probe alone
    assert rest == ["sysinfo_null=EFAULT", "sysinfo_readonly=EFAULT",
                    "sysinfo_straddle=EFAULT"], out


@needs_lxcfs
def test_an_exec_in_a_detached_container_is_answered_too(cli, store):
    """An exec'd command's listener goes to the monitor; what it leaves running is still
    answered after the exec has returned, and the monitor lets go of it once it exits."""
    cli("run", "-d", "--name", "c", "--memory", "256M", "busybox", "--", "sleep", "1000",
        check=True)
    assert free_total_mib(cli("exec", "c", "--", "free", "-m", check=True).stdout) == 256
    cli("exec", "c", "--", "sh", "-c", "(sleep 1; free -m > /tmp/later) &", check=True)
    out = until(lambda: cli("exec", "c", "--", "cat", "/tmp/later").stdout,
                what="the left-over command's output")
    assert free_total_mib(out) == 256, out
    monitor = conftest._monitor_pids(store)[0]
    until(lambda: _listeners(monitor) == 1, what="the exec's listeners being closed")


def _listeners(pid):
    """How many seccomp listeners process pid holds."""
    fds = f"/proc/{pid}/fd"
    return sum(os.readlink(os.path.join(fds, fd)) == "anon_inode:seccomp notify"
               for fd in os.listdir(fds))


# prints `free -m` each time /tmp/go appears
_ON_REQUEST = "while :; do if [ -e /tmp/go ]; then rm /tmp/go; free -m; fi; sleep 0.1; done"


@needs_lxcfs
@pytest.mark.parametrize("server", ["require", "off"], ids=["adopted", "launcher"])
def test_the_monitor_answers_a_detached_container_after_the_server_left(store, server):
    """Started by a server's worker (which hands the listener to the monitor with the
    container) or by a launcher of the monitor: either way, once no server is left, the
    monitor is what answers."""
    env = {"CTRUN_SERVER": server}
    ctrun(store, "run", "-d", "--name", "c", "--memory", "256M", "busybox", "--",
          "sh", "-c", _ON_REQUEST, env=env)
    conftest._stop_server(store)
    until(lambda: not server_pids(store), what="the server's exit")
    off = {"CTRUN_SERVER": "off"}   # no new server: the monitor alone supervises
    ctrun(store, "exec", "c", "--", "touch", "/tmp/go", env=off)
    logs = until(lambda: "Mem:" in (out := ctrun(store, "logs", "c", env=off).stdout) and out,
                 what="free's output in the log")
    assert free_total_mib(logs) == 256, logs
    assert not server_pids(store)
    ctrun(store, "rm", "-f", "c", env=off)


@needs_lxcfs
@pytest.mark.parametrize("flags, env", [
    (["--privileged"], {}),
    ([], {"CTRUN_LXCFS_DIR": "none", "CTRUN_SERVER": "off"}),
], ids=["privileged", "lxcfs-off"])
def test_without_lxcfs_views_sysinfo_is_the_hosts(store, flags, env):
    """The interception goes with LXCFS's views: a container without them (and a
    --privileged one, which has no seccomp filter) keeps the kernel's answer."""
    out = ctrun(store, "run", "--rm", *flags, "--memory", "512M", "busybox", "--",
                "free", "-m", env=env).stdout
    assert abs(free_total_mib(out) - host_total_mib()) <= 1, out
