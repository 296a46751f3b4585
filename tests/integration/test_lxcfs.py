"""The container sees its own resources (LXCFS over /proc, a cpuset for --cpus): memory
limit, CPU count, uptime and load; and it still starts, with one warning, without LXCFS.

The suite's containers use the run's own LXCFS (conftest's CTRUN_LXCFS_DIR); the tests that
break or replace it use one of their own in tmp_path and stop it themselves."""

import os
import signal
import subprocess
import sys
import time

import pytest

import conftest
from ctrun import libc
from ctrun.kernel import linux
from ctrun.runtime import lxcfs, rootfs
from ctrun.state import proc_cmdlines

needs_lxcfs = pytest.mark.skipif(not os.path.exists("/usr/bin/lxcfs"),
                                 reason="lxcfs is not installed (apt-get install lxcfs)")


def run_with(store, env, *args):
    """The CLI with extra environment (another LXCFS directory, another PATH)."""
    return subprocess.run([sys.executable, "-m", "ctrun", "--root", str(store), *args],
                          capture_output=True, text=True, timeout=60, cwd=conftest.REPO,
                          env={**os.environ, **env})


def meminfo_total_kib(text):
    return int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("MemTotal:")))


@needs_lxcfs
@pytest.mark.parametrize("flags", [[], ["--userns"]], ids=["default", "userns"])
def test_memory_limit_is_the_containers_memory(cli, flags):
    out = cli("run", "--rm", *flags, "--memory", "512M", "busybox", "--", "sh", "-c",
              "cat /proc/meminfo; top -bn1 | head -1; cat /proc/self/mountinfo",
              check=True).stdout
    assert meminfo_total_kib(out) == 512 * 1024        # what procps free, top and htop read
    top = next(ln for ln in out.splitlines() if ln.startswith("Mem:")).split()
    used, free = int(top[1].rstrip("K")), int(top[3].rstrip("K"))
    assert used + free == 512 * 1024, top               # busybox top: used + free = total
    served = {ln.split()[4] for ln in out.splitlines() if " - fuse.lxcfs " in ln}
    assert served == {"/" + f for f in lxcfs.FILES}


@needs_lxcfs
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_nproc_follows_cpus_also_when_set_live(cli):
    show = ["sh", "-c", "nproc; grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online"]
    out = cli("run", "--rm", "--cpus", "1", "busybox", "--", *show, check=True).stdout.split()
    assert out[:2] == ["1", "1"] and "-" not in out[2] and "," not in out[2], out
    cli("run", "-d", "--name", "c", "--cpus", "0.5", "busybox", "--", "sleep", "1000", check=True)
    assert cli("exec", "c", "--", "nproc", check=True).stdout.split() == ["1"]
    cli("set", "c", "--cpus", "2", check=True)
    out = cli("exec", "c", "--", *show, check=True).stdout.split()
    assert out[:2] == ["2", "2"], out
    # an explicit cpuset is the user's: --cpus leaves it alone
    cli("set", "c", "--cpuset-cpus", "0-1", "--cpus", "1", check=True)
    assert cli("exec", "c", "--", "nproc", check=True).stdout.split() == ["2"]


@needs_lxcfs
def test_uptime_and_load_are_the_containers(cli):
    host_uptime = float(open("/proc/uptime").read().split()[0])
    out = cli("run", "--rm", "busybox", "--", "sh", "-c", "cat /proc/uptime /proc/loadavg",
              check=True).stdout.split()
    assert float(out[0]) < host_uptime          # counted from the container's start
    running, threads = map(int, out[5].split("/"))
    assert threads <= 4, out                     # the container's tasks, not the host's


@pytest.mark.parametrize("env, why", [
    ({"PATH": "/nonexistent"}, "lxcfs is not installed"),
    ({"CTRUN_LXCFS_DIR": "/proc/ctrun-lxcfs"}, "cannot make lxcfs's directory"),
], ids=["no-binary", "no-mount-point"])
def test_starts_with_one_warning_without_lxcfs(store, tmp_path, env, why):
    env = {"CTRUN_LXCFS_DIR": str(tmp_path / "lxcfs"), **env}
    r = run_with(store, env, "run", "--rm", "--memory", "64M", "busybox", "--",
                 "cat", "/proc/meminfo")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctrun: warning: ") and why in lines[0], lines
    assert meminfo_total_kib(r.stdout) > 64 * 1024   # the host's file
    # run -d: the warning is on the stderr of the verb that starts it
    r = run_with(store, env, "run", "-d", "--name", "w", "busybox", "--", "sleep", "100")
    assert r.returncode == 0 and why in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


@needs_lxcfs
def test_a_dead_lxcfs_is_replaced_at_the_next_start(store, tmp_path):
    base = str(tmp_path / "lxcfs")
    env = {"CTRUN_LXCFS_DIR": base}
    try:
        r = run_with(store, env, "run", "--rm", "--memory", "64M", "busybox", "--",
                     "cat", "/proc/meminfo")
        assert r.returncode == 0 and meminfo_total_kib(r.stdout) == 64 * 1024, r.stderr
        pid = int(open(os.path.join(base, "lxcfs.pid")).read())
        os.kill(pid, signal.SIGKILL)                   # its mount stays, answering ENOTCONN
        while lxcfs._running(pid):
            time.sleep(0.01)
        r = run_with(store, env, "run", "--rm", "--memory", "64M", "busybox", "--",
                     "cat", "/proc/meminfo")
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert meminfo_total_kib(r.stdout) == 64 * 1024
        assert int(open(os.path.join(base, "lxcfs.pid")).read()) != pid
    finally:
        lxcfs.stop(base)
    assert os.path.join(base, "mnt") not in lxcfs._lxcfs_mounts()


@needs_lxcfs
def test_the_files_ctrun_s_lxcfs_has_are_listed_once_per_daemon(store, tmp_path):
    """A start binds the files its LXCFS has: found once, then read from the list kept
    beside the pid file; a daemon started again makes the next start look again."""
    base = str(tmp_path / "lxcfs")
    env = {"CTRUN_LXCFS_DIR": base}
    kept = os.path.join(base, lxcfs.SERVED)
    cat = ("run", "--rm", "--memory", "64M", "busybox", "--", "cat", "/proc/meminfo")
    try:
        r = run_with(store, env, *cat)
        assert r.returncode == 0 and meminfo_total_kib(r.stdout) == 64 * 1024, r.stderr
        listed = open(kept).read().split()
        assert "proc/meminfo" in listed and set(listed) <= set(lxcfs.FILES)
        with open(kept, "w") as f:     # the list is what the next start binds
            f.write("proc/uptime\n")
        r = run_with(store, env, *cat)
        assert r.returncode == 0 and meminfo_total_kib(r.stdout) != 64 * 1024, r.stderr
        pid = int(open(os.path.join(base, "lxcfs.pid")).read())
        os.kill(pid, signal.SIGKILL)
        while lxcfs._running(pid):
            time.sleep(0.01)
        r = run_with(store, env, *cat)  # a new daemon: its files are found again
        assert r.returncode == 0 and meminfo_total_kib(r.stdout) == 64 * 1024, r.stderr
        assert open(kept).read().split() == listed
    finally:
        lxcfs.stop(base)


@needs_lxcfs
def test_concurrent_first_starts_share_one_lxcfs(store, tmp_path):
    base = str(tmp_path / "lxcfs")
    env = {**os.environ, "CTRUN_LXCFS_DIR": base}
    argv = [sys.executable, "-m", "ctrun", "--root", str(store), "run", "--rm", "--memory",
            "64M", "busybox", "--", "cat", "/proc/meminfo"]
    try:
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env, cwd=conftest.REPO) for _ in range(3)]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and err == "" and meminfo_total_kib(out) == 64 * 1024, err
        mnt = os.path.join(base, "mnt")
        assert [m for m in lxcfs._lxcfs_mounts() if m == mnt] == [mnt]
        mounts = [ln for ln in open("/proc/self/mountinfo") if f" {mnt} " in ln]
        assert len(mounts) == 1, mounts                  # not stacked by a second daemon
        daemons = [pid for pid, cmd in proc_cmdlines() if mnt.encode() in cmd]
        assert len(daemons) == 1, daemons
    finally:
        lxcfs.stop(base)


def _daemon(base):
    return lxcfs._pid(base) if lxcfs._running(lxcfs._pid(base)) else 0


@needs_lxcfs
def test_ctrun_stops_its_lxcfs_once_no_container_of_any_store_uses_it(store):
    """The monitor of a store that has no container left stops the LXCFS it started, but
    only once no container anywhere, of this store or another, has its files bound."""
    base = f"/run/ctrun-test-{os.getpid()}-own-lxcfs"
    env = {"CTRUN_LXCFS_DIR": base}
    mnt = os.path.join(base, "mnt")
    try:
        with conftest.own_store() as other:
            for root, name in ((store, "a"), (other, "b")):
                r = run_with(root, env, "run", "-d", "--name", name, "busybox", "--",
                             "sleep", "600")
                assert r.returncode == 0, r.stderr
            daemon = _daemon(base)
            assert daemon and mnt in lxcfs._lxcfs_mounts()
            # a's store is left without a container: its monitor leaves, b still uses LXCFS
            assert run_with(store, env, "destroy", "-f", "a").returncode == 0
            conftest._stop_server(store)
            conftest.until(lambda: not conftest._monitor_pids(store), 15, "a's monitor exit")
            assert _daemon(base) == daemon   # (the monitor decided before it left)
            r = run_with(other, env, "exec", "b", "--", "head", "-1", "/proc/meminfo")
            assert r.returncode == 0 and r.stdout.startswith("MemTotal:"), r.stderr
            # the last one goes: so does LXCFS, its mount and its directory
            assert run_with(other, env, "destroy", "-f", "b").returncode == 0
            conftest._stop_server(other)
            conftest.until(lambda: not conftest._monitor_pids(other), 15, "b's monitor exit")
            conftest.until(lambda: not lxcfs._running(daemon), 15, "LXCFS's exit")
            assert mnt not in lxcfs._lxcfs_mounts() and not os.path.exists(base)
    finally:
        lxcfs.stop(base)


@needs_lxcfs
def test_gc_stops_an_lxcfs_no_container_uses(store):
    """An attached run without a monitor (CTRUN_SERVER=off) leaves LXCFS to `ctrun gc`."""
    base = f"/run/ctrun-test-{os.getpid()}-gc-lxcfs"
    env = {"CTRUN_LXCFS_DIR": base, "CTRUN_SERVER": "off"}
    try:
        r = run_with(store, env, "run", "--rm", "busybox", "--", "true")
        assert r.returncode == 0, r.stderr
        daemon = _daemon(base)
        assert daemon
        r = run_with(store, env, "gc")
        assert r.returncode == 0 and "stopped ctrun's LXCFS" in r.stdout, r.stdout + r.stderr
        assert not lxcfs._running(daemon) and not os.path.exists(base)
    finally:
        lxcfs.stop(base)


@needs_lxcfs
def test_lxcfs_is_not_stopped_between_a_starts_hand_out_and_its_binds(monkeypatch):
    """A start holds LXCFS from getting its mount until its init has bound the files:
    no release (another store's monitor leaving) stops it in between."""
    base = f"/run/ctrun-test-{os.getpid()}-held-lxcfs"
    monkeypatch.setenv("CTRUN_LXCFS_DIR", base)
    try:
        assert lxcfs.ensure() == os.path.join(base, "mnt")
        daemon = _daemon(base)
        # the start's intermediate process was reaped
        assert not conftest.zombies_of({os.getpid()})
        assert not lxcfs.release() and _daemon(base) == daemon   # still held
        lxcfs.settled()
        assert lxcfs.release() and not lxcfs._running(daemon)    # unused and not held
    finally:
        lxcfs.settled()
        lxcfs.stop(base)


@needs_lxcfs
def test_a_spare_clones_lxcfs_files_ahead_and_a_start_attaches_them(tmp_path, monkeypatch):
    """A warm server's spare clones each LXCFS file as a detached mount before its call
    (preopen); the start's init attaches the clone in its own mount namespace, without a
    walk into FUSE.  Clones of a daemon since replaced are dropped by the next start."""
    base = str(tmp_path / "lxcfs")
    monkeypatch.setenv("CTRUN_LXCFS_DIR", base)
    try:
        mnt = lxcfs.ensure()
        lxcfs._served(mnt)   # the list a first start keeps
        lxcfs.settled()
        lxcfs.preopen()
        meminfo = os.path.join(mnt, "proc/meminfo")
        assert meminfo in lxcfs._trees
        target = tmp_path / "meminfo"
        target.write_text("")

        def attach(say):   # as an init: its own mount namespace, the host's paths unused
            linux.unshare(libc.CLONE_NEWNS)
            linux.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            # the daemon's own mount gone from here: only the clone reaches it
            linux.umount2(mnt, libc.MNT_DETACH)
            tfd = os.open(target, os.O_PATH | os.O_CLOEXEC)
            rootfs._attach(lxcfs.take_tree(meminfo), tfd)
            say(target.read_bytes()[:9])
        assert conftest.in_child(attach) == b"MemTotal:"
        daemon = _daemon(base)
        lxcfs.stop(base)
        assert lxcfs.binds(print) and _daemon(base) not in (0, daemon)   # a new daemon
        assert not lxcfs._trees
    finally:
        lxcfs._close_trees()
        lxcfs.settled()
        lxcfs.stop(base)
