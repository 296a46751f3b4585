"""The warm server (ctrun.server) and its thin client (ctrun.client): a call runs in a worker
forked by the store's server, and behaves as the CLI run in-process: exit codes, stdio, a
terminal, signals; the server's socket is root's alone; it leaves when idle, and a killed
one is replaced.  (The rest of the suite runs every CLI call through the server too.)"""

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import threading
import time

from conftest import (CTRUN, REPO, _monitor_pids, in_child, request_as, server_named,
                      server_pids, until)
from ctrun import client, monitor
from ctrun.procs import parent_pid


def _server(store):
    return server_named(store)


def _spare(store, timeout=5.0):
    """The pid of the server's spare worker (forked between calls), waited for; None if
    none came."""
    try:
        return until(lambda: server_named(store, "ctrun-spare"), timeout, "a spare's fork", 0.02)
    except AssertionError:
        return None


def _argv(store, *args):
    return [*CTRUN, "--root", str(store), *args]


@contextlib.contextmanager
def _on_pty(store, *args, rows_cols=None):
    """`ctrun ARGS` on a new pty, its controlling terminal (rows_cols: its size first):
    yields (master fd, exit) where exit() waits for it and gives its exit code; still
    running at the end, it is killed."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            if rows_cols:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", *rows_cols, 0, 0))
            os.chdir(REPO)
            os.execv(CTRUN[0], _argv(store, *args))
        finally:
            os._exit(127)
    running = [pid]

    def exit_code():
        _, status = os.waitpid(running.pop(), 0)
        return os.waitstatus_to_exitcode(status)
    try:
        yield fd, exit_code
    finally:
        if running:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def _read_until(fd, want, timeout=20.0, poke=None):
    """Output of pty master `fd` until it holds `want`; poke() is called each second."""
    out, deadline, last = b"", time.monotonic() + timeout, time.monotonic()
    while want not in out:
        assert time.monotonic() < deadline, f"no {want!r} in {out[-2000:]!r}"
        if select.select([fd], [], [], 0.2)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
        if poke and time.monotonic() - last > 1:
            poke()
            last = time.monotonic()
    assert want in out, out[-2000:]
    return out


def _served(store, init_pid):
    """The attached container's init was forked by a worker of the store's server."""
    worker = parent_pid(init_pid)
    return worker in server_pids(store) and parent_pid(worker) == _server(store)


def _attached(cli, store, name, script, **popen):
    """`run --rm --name NAME busybox -- sh -c SCRIPT` attached; (Popen, init pid) once the
    script printed "up"."""
    p = subprocess.Popen(_argv(store, "run", "--rm", "--name", name, "busybox", "--", "sh",
                               "-c", script), cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, **popen)
    assert p.stdout.readline() == b"up\n"
    return p, cli.json("inspect", name)["pid"]


def test_the_server_starts_on_first_use_and_serves_later_calls(cli, store):
    # the store's directory is empty: that first call makes the store, in-process
    cli("image", "build", "busybox", check=True)
    assert (store / "run").is_dir() and not server_pids(store)
    cli("list", check=True)
    first = _server(store)
    assert first, "no ctrun-server runs for the store after a call"
    cli("run", "--rm", "busybox", "--", "true", check=True)
    assert _server(store) == first
    # each worker was reaped (just after its reply: it sends the exit code itself); what
    # else runs is the spare for the next call
    until(lambda: [p for p in server_pids(store) if p != _spare(store)] == [first],
          what="the reaping of the call's worker")


def _busybox(cli, store):
    """The store made (busybox built, in-process: the store did not exist) and its server
    started (by a `list`)."""
    cli("image", "build", "busybox", check=True)
    cli("list", check=True)
    assert _server(store)


def test_exit_code_stdout_and_stderr_pass_through(cli, store):
    _busybox(cli, store)
    r = cli("run", "--rm", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = cli("inspect", "nosuch")
    assert r.returncode == 3 and r.stderr.startswith("ctrun: error: container 'nosuch'")
    r = cli("run", "--bogus", "busybox")  # the CLI's own argument check, in the worker
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr, r.stderr
    assert _server(store)


def test_stdin_passes_through(cli, store):
    _busybox(cli, store)
    r = cli("run", "-i", "--rm", "busybox", "--", "cat", input="line one\nline two\n")
    assert (r.returncode, r.stdout) == (0, "line one\nline two\n")
    assert _server(store)


def test_tty_run_follows_resize_and_ctrl_c(cli, store):
    """-t on a terminal: the container sees the terminal's size and its change (SIGWINCH,
    relayed by the client), and Ctrl-C reaches the workload through the pty."""
    _busybox(cli, store)
    script = ('stty size; trap "echo INTR; exit 9" INT; '
              'while :; do read x; stty size; done')
    with _on_pty(store, "run", "-it", "--rm", "--name", "tt", "busybox", "--", "sh", "-c",
                 script, rows_cols=(30, 100)) as (fd, exit_code):
        _read_until(fd, b"30 100")
        assert _served(store, cli.json("inspect", "tt")["pid"])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        _read_until(fd, b"40 120", poke=lambda: os.write(fd, b"\n"))
        os.write(fd, b"\x03")
        _read_until(fd, b"INTR")
        assert exit_code() == 9
    assert cli("inspect", "tt").returncode == 3  # --rm removed it


def test_sigterm_to_the_client_stops_an_attached_run(cli, store):
    _busybox(cli, store)
    p, init = _attached(cli, store, "term",
                        'trap "echo TERM; exit 7" TERM; echo up; while :; do sleep 0.1; done')
    try:
        assert _served(store, init)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert (p.returncode, out) == (7, b"TERM\n"), err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert cli("inspect", "term").returncode == 3


def test_a_killed_client_hangs_up_its_worker(cli, store):
    """SIGKILL to the client: its worker gets SIGHUP, as a CLI whose terminal went away;
    the workload's hang-up ends it, and --rm removes it."""
    _busybox(cli, store)
    p, init = _attached(cli, store, "hup",
                        'trap "exit 5" HUP; echo up; while :; do sleep 0.1; done')
    assert _served(store, init)
    p.kill()
    p.wait()
    until(lambda: cli("inspect", "hup").returncode == 3, what="the removal of 'hup'")


def test_a_killed_server_fails_the_attached_client_and_its_container_hangs_up(cli, store):
    _busybox(cli, store)
    p, init = _attached(cli, store, "srv",
                        'trap "exit 5" HUP; echo up; while :; do sleep 0.1; done')
    try:
        assert _served(store, init)
        os.kill(_server(store), signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 1 and b"server" in err and b"stopped during this command" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # the worker got SIGHUP (PR_SET_PDEATHSIG) and passed it on, as a CLI on a hung-up
    # terminal; the run's --rm removed the container
    until(lambda: cli("inspect", "srv").returncode == 3, what="the removal of 'srv'")
    cli("list", check=True)  # and the next call starts a new server
    assert _server(store)


def test_exec_enter_and_logs_follow(cli, store):
    _busybox(cli, store)
    cli("run", "-d", "--name", "box", "busybox", "--", "sleep", "1000", check=True)
    r = cli("exec", "box", "--", "sh", "-c", "echo $((6*7)); exit 5")
    assert (r.returncode, r.stdout) == (5, "42\n")
    r = cli("exec", "-i", "box", "--", "tr", "a-z", "A-Z", input="quiet\n")
    assert (r.returncode, r.stdout) == (0, "QUIET\n")
    with _on_pty(store, "enter", "box") as (fd, exit_code):
        _read_until(fd, b"# ")  # the prompt: typed ahead, a line is flushed by the shell
        os.write(fd, b"echo inside-$((6*7)); exit 4\n")
        _read_until(fd, b"inside-42")
        assert exit_code() == 4
    cli("run", "-d", "--name", "talk", "busybox", "--", "sh", "-c",
        "echo one; sleep 1; echo two", check=True)
    r = cli("logs", "-f", "talk", timeout=30)  # returns once the container exits
    assert (r.returncode, r.stdout) == (0, "one\ntwo\n")
    assert cli.json("inspect", "talk")["state"] == "stopped"
    assert _server(store)


def test_the_socket_is_root_only(cli, store):
    _busybox(cli, store)
    sock = store / "run" / "server.sock"
    assert _server(store)
    assert os.stat(sock).st_mode & 0o777 == 0o600
    assert os.stat(store / "run").st_mode & 0o777 == 0o700
    request = client._request(["list"])
    assert request_as(sock, 0, request) == b"Sx0\n"       # root: a `list`, run and answered
    # uid 65534 keeping CAP_DAC_OVERRIDE passes the file modes: SO_PEERCRED refuses it
    assert request_as(sock, 65534, request) == b""


def test_the_server_leaves_when_idle(cli, store):
    _busybox(cli, store)
    os.kill(_server(store), signal.SIGKILL)
    until(lambda: not server_pids(store), what="the killed server's exit")
    env = dict(os.environ, CTRUN_SERVER_IDLE="1")
    subprocess.run(_argv(store, "list"), cwd=REPO, env=env, check=True, capture_output=True)
    assert _server(store)
    until(lambda: not server_pids(store), what="the idle server's exit")
    assert not (store / "run/server.sock").exists()
    cli("list", check=True)  # the next call starts another
    assert _server(store)


def test_a_killed_server_is_replaced_by_the_next_call(cli, store):
    _busybox(cli, store)
    old = _server(store)
    os.kill(old, signal.SIGKILL)
    until(lambda: not server_pids(store), what="the killed server's exit")
    assert (store / "run/server.sock").exists()  # stale: nobody listens
    r = cli("run", "--rm", "busybox", "--", "sh", "-c", "exit 6")
    assert r.returncode == 6, r.stderr
    assert _server(store) not in (None, old)


def test_ctrun_server_off_runs_in_process(cli, store):
    """CTRUN_SERVER=off: the CLI itself runs the command (the attached container's init
    is its child), while by default a worker of the server does."""
    _busybox(cli, store)
    script = 'trap "exit 0" TERM; echo up; while :; do sleep 0.1; done'
    for mode, by_server in (("off", False), ("", True)):
        env = dict(os.environ, CTRUN_SERVER=mode)
        p, init = _attached(cli, store, f"m{mode}", script, env=env)
        try:
            assert _served(store, init) == by_server
            if not by_server:
                assert parent_pid(init) == p.pid
        finally:
            p.terminate()
            assert p.wait(timeout=30) == 0


def test_gc_without_a_server_removes_a_dead_servers_socket(cli, store):
    _busybox(cli, store)
    os.kill(_server(store), signal.SIGKILL)
    until(lambda: not server_pids(store), what="the killed server's exit")
    env = dict(os.environ, CTRUN_SERVER="off")
    r = subprocess.run(_argv(store, "gc"), cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "removed the socket of a dead ctrun server" in r.stdout
    assert not (store / "run/server.sock").exists() and not server_pids(store)
    r = subprocess.run(_argv(store, "list", "--format", "json"), cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert json.loads(r.stdout) == [] and not server_pids(store)


def test_the_worker_takes_the_callers_cwd_umask_environment_and_limits(cli, store, tmp_path):
    """What a CLI inherits from its caller, a worker of a server started earlier (by another
    caller) takes from its client: a relative path is the caller's, a new file has its
    umask, $CTRUN_NETWORK is its, and so is an rlimit the container inherits."""
    _busybox(cli, store)
    r = subprocess.run(_argv(store, "image", "export", "busybox", "bb.tar"), cwd=tmp_path,
                       preexec_fn=lambda: os.umask(0o027), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.stat(tmp_path / "bb.tar").st_mode & 0o777 == 0o640
    host = subprocess.run(_argv(store, "run", "--rm", "busybox", "--", "cat", "/proc/net/dev"),
                          cwd=REPO, env=dict(os.environ, CTRUN_NETWORK="host"),
                          capture_output=True, text=True)
    own = cli("run", "--rm", "busybox", "--", "cat", "/proc/net/dev")  # CTRUN_NETWORK=none
    assert host.returncode == own.returncode == 0, host.stderr + own.stderr
    assert len(own.stdout.splitlines()) == 3   # lo alone
    assert len(host.stdout.splitlines()) > 3   # the host's interfaces
    r = subprocess.run(_argv(store, "run", "--rm", "busybox", "--", "sh", "-c", "ulimit -n"),
                       cwd=REPO, capture_output=True, text=True,
                       preexec_fn=lambda: __import__("resource").setrlimit(
                           __import__("resource").RLIMIT_NOFILE, (123, 456)))
    assert (r.returncode, r.stdout) == (0, "123\n"), r.stderr
    # and the container gets the caller's umask
    r = subprocess.run(_argv(store, "run", "--rm", "busybox", "--", "sh", "-c", "umask"),
                       cwd=REPO, capture_output=True, text=True,
                       preexec_fn=lambda: os.umask(0o027))
    assert (r.returncode, r.stdout) == (0, "0027\n"), r.stderr


def test_a_server_of_another_ctrun_gives_way(cli, store, tmp_path):
    """An upgrade (or another checkout) of ctrun: a client never runs on a server of other
    code; that server retires and the client's own ctrun serves it."""
    import shutil
    _busybox(cli, store)
    old = _server(store)
    shutil.copytree(REPO / "ctrun", tmp_path / "ctrun")
    r = subprocess.run(_argv(store, "run", "--rm", "busybox", "--", "sh", "-c", "exit 4"),
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                       capture_output=True, text=True)
    assert r.returncode == 4, r.stderr
    new = _server(store)
    assert new not in (None, old)
    assert str(tmp_path).encode() in open(f"/proc/{new}/environ", "rb").read()
    until(lambda: not os.path.exists(f"/proc/{old}"), what="the old server's exit")


def test_a_terminal_left_raw_by_a_killed_server_is_restored(cli, store):
    """-t puts the user's terminal in raw mode; a worker that dies relaying it (the server
    killed: its SIGHUP) cannot restore it, so the client does."""
    _busybox(cli, store)
    master, slave = os.openpty()

    def on_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    p = subprocess.Popen(_argv(store, "run", "-it", "--rm", "--name", "raw", "busybox", "--",
                               "sh", "-c", 'trap "exit 5" HUP; echo up; while :; do sleep 0.1; '
                               "done"), cwd=REPO, stdin=slave, stdout=slave, stderr=slave,
                         preexec_fn=on_terminal)
    try:
        _read_until(master, b"up")
        assert not termios.tcgetattr(slave)[3] & termios.ECHO  # raw while relaying
        os.kill(_server(store), signal.SIGKILL)
        assert p.wait(timeout=30) == 1
        _read_until(master, b"stopped during this command")
        lflag = termios.tcgetattr(slave)[3]
        assert lflag & termios.ECHO and lflag & termios.ICANON
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)
    # the worker died of the hang-up (a -t relay does not catch it), as a CLI on a hung-up
    # terminal: the container is left as such a CLI leaves it, for destroy (or gc)
    info = cli.json("inspect", "raw")
    assert info["state"] == "running" or info["exit_reason"] == "monitor-lost", info
    cli("destroy", "--force", "raw", check=True)



def test_the_server_is_the_monitors_child_and_hands_it_detached_starts(cli, store):
    """The client starts the store's monitor, which starts the server as its child: a
    detached container a worker launched is the monitor's child (orphaned to it, adopted),
    its output is logged and its exit recorded, and the monitor outlives the container
    while its server lives (no cold monitor start for the next one)."""
    _busybox(cli, store)
    server = _server(store)
    monitor = _monitor_pids(store)
    assert monitor == [parent_pid(server)]
    cli("run", "-d", "--name", "d", "busybox", "--", "sh", "-c",
        "echo hello; trap 'exit 3' USR1; while :; do sleep 0.1; done", check=True)
    pid = json.loads(cli("inspect", "d", check=True).stdout)["pid"]
    assert parent_pid(pid) == monitor[0]
    until(lambda: "hello" in cli("logs", "d", check=True).stdout, what="the output logged")
    os.kill(pid, signal.SIGUSR1)
    out = until(lambda: (o := json.loads(cli("inspect", "d", check=True).stdout))["state"]
                 == "stopped" and o, what="the container's exit")
    assert out["exit_code"] == 3
    cli("destroy", "d", check=True)
    time.sleep(1.6)  # past the idle grace of a monitor with no server (0.5 s, checked each 1 s)
    assert _monitor_pids(store) == monitor and _server(store) == server


def test_the_idle_monitor_leaves_with_its_server(cli, store):
    _busybox(cli, store)
    monitor = _monitor_pids(store)
    assert monitor
    os.kill(_server(store), signal.SIGKILL)
    until(lambda: not _monitor_pids(store), timeout=3,
           what="the idle monitor's exit once its server is gone")


def test_a_server_whose_monitor_died_serves_the_call_then_gives_way(cli, store):
    """Its start goes to a new monitor; then it leaves, and the next call starts a server
    that new monitor adopts starts from (no cold launcher per start)."""
    _busybox(cli, store)
    server, monitor = _server(store), _monitor_pids(store)
    os.kill(monitor[0], signal.SIGKILL)
    until(lambda: not _monitor_pids(store), what="the killed monitor's exit")
    cli("run", "-d", "--name", "d", "busybox", "--", "sleep", "100", check=True)
    new = _monitor_pids(store)
    assert new and new != monitor
    pid = json.loads(cli("inspect", "d", check=True).stdout)["pid"]
    assert parent_pid(pid) == new[0]
    until(lambda: server not in server_pids(store), what="the orphaned server's exit")
    cli("list", check=True)
    assert _monitor_pids(store) == new
    assert parent_pid(_server(store)) == new[0]
    cli("destroy", "-f", "d", check=True)


def test_a_client_waits_for_a_leaving_monitor_and_its_server_is_adopted(cli, store):
    """A monitor that holds the store's lock but no longer answers is leaving: the new
    monitor the client starts waits for that lock, and starts the server as its child,
    instead of a server on its own (which would start each detached container through a
    cold launcher for all its life)."""
    cli("image", "build", "busybox", check=True)   # in-process: no monitor, no server
    lock = os.open(store / "run" / "monitor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    leave = threading.Timer(0.5, os.close, (lock,))
    leave.start()
    try:
        cli("list", check=True)
    finally:
        leave.join()
    server = _server(store)
    assert server and "--adopted" in open(f"/proc/{server}/cmdline").read().split("\0")
    assert [parent_pid(server)] == _monitor_pids(store)


def test_a_call_is_taken_by_the_spare_worker_forked_before_it(cli, store):
    """Between calls the server forks the next call's worker (off the call's path); the
    call takes it, and another is forked for the one after."""
    _busybox(cli, store)
    spare = _spare(store)
    assert spare and parent_pid(spare) == _server(store)
    r = cli("run", "--rm", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (r.returncode, r.stdout, r.stderr) == (4, "out\n", "err\n")
    # it was the call's worker, and is gone (reaped just after it sent the exit code)
    until(lambda: not os.path.exists(f"/proc/{spare}"), what="the reaping of the worker")
    assert _spare(store) not in (None, spare)


def test_a_lost_spare_is_replaced_and_leaves_with_its_server(cli, store):
    _busybox(cli, store)
    spare = _spare(store)
    os.kill(spare, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{spare}"), what="the killed spare's reaping")
    assert cli("list", check=True).returncode == 0
    spare = _spare(store)
    assert spare
    os.kill(_server(store), signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{spare}"), timeout=5,
           what="the spare's exit with its server")


def test_the_spare_goes_when_calls_stop_and_comes_back_with_the_next(cli, store):
    """The spare's pages are the server's largest idle cost: with no call for
    CTRUN_SERVER_SPARE_IDLE seconds it goes; the next call forks its own worker, and the
    calls after it find a spare again."""
    _busybox(cli, store)
    os.kill(_server(store), signal.SIGKILL)
    until(lambda: not server_pids(store), what="the killed server's exit")
    env = dict(os.environ, CTRUN_SERVER_SPARE_IDLE="1")
    subprocess.run(_argv(store, "list"), cwd=REPO, env=env, check=True, capture_output=True)
    server, spare = _server(store), _spare(store)
    assert server and spare
    until(lambda: not os.path.exists(f"/proc/{spare}"), what="the idle spare's exit")
    assert server_named(store, "ctrun-spare") is None and _server(store) == server
    r = cli("run", "--rm", "busybox", "--", "sh", "-c", "echo out; exit 5")
    assert (r.returncode, r.stdout) == (5, "out\n"), r.stderr
    assert _spare(store) not in (None, spare) and _server(store) == server


def test_a_leaving_monitor_gives_the_store_back_before_it_stops_lxcfs(tmp_path, monkeypatch):
    """A monitor leaving with no container stops the LXCFS nothing uses, which may take
    its grace: the store's lock is free by then, so a new monitor is not kept waiting
    (after its wait for a leaving monitor, a client would start a server on its own)."""
    (tmp_path / "run").mkdir()

    def serve(say):   # a monitor with nothing to do: it leaves after its idle time
        def release():
            free = monitor.lock_if_free(str(tmp_path / "run" / "monitor.lock"))
            say(b"free" if free is not None else b"held")
        monkeypatch.setattr(monitor, "_release_lxcfs", release)
        monitor.Monitor(str(tmp_path)).serve()
    assert in_child(serve) == b"free"
