"""systemd as PID 1 of a default (not privileged) container: the debian-server image boots to
`running`, journald works, `ctrun logs` shows the boot from /dev/console, and `ctrun stop`
ends in systemd's own clean halt, leaving no process or cgroup; the same with --userns.
The image build takes a minute or more and needs Debian's archive: it is built once for the
session (conftest's debian_server_store), marked slow."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conftest
from test_cli_errors import assert_clean_error
from test_debian_image import needs_debootstrap

# units that fail in every container, whatever the runtime does: none seen with this image
ALLOWED_FAILED = frozenset()

pytestmark = [pytest.mark.slow, needs_debootstrap]


@pytest.fixture(scope="module")
def server(debian_server_store):
    """A CLI on a store of the module's own holding the session's debian-server image."""
    with conftest.own_store() as root:
        conftest.copy_image(debian_server_store, root, "debian-server")
        yield conftest.CLI(root)


def _booted(cli, name, timeout=90):
    """`systemctl is-system-running --wait` inside, bounded; the container's logs on failure."""
    deadline = time.monotonic() + timeout
    while True:
        r = cli("exec", name, "--", "systemctl", "is-system-running", "--wait",
                timeout=timeout)
        state = r.stdout.strip()
        if state in ("running", "degraded") or time.monotonic() > deadline \
                or "is not running" in r.stderr:
            break
        time.sleep(0.5)  # systemd's bus may not answer in its first instants
    assert state in ("running", "degraded"), (r.stderr, cli("logs", name).stdout[-3000:])
    return state


def _out(cli, name, *argv):
    return cli("exec", name, "--", *argv, check=True).stdout


@pytest.mark.parametrize("opts", [(), ("--userns",)], ids=["default", "userns"])
def test_systemd_boots_in_a_default_container_and_halts_cleanly(server, opts):
    cli, name = server, "srv"
    cli("run", "-d", "--name", name, *opts, "debian-server", check=True)
    try:
        state = _booted(cli, name)
        failed = set(_out(cli, name, "systemctl", "--failed", "--plain", "--no-legend")
                     .split()[::4]) if state == "degraded" else set()
        assert failed <= ALLOWED_FAILED, failed
        journal = _out(cli, name, "journalctl", "-b", "--no-pager", "-q").splitlines()
        assert len(journal) > 10 and any("systemd-journald" in x for x in journal)
        # systemd knows its manager; the container has its own machine-id
        assert _out(cli, name, "cat", "/run/systemd/container") == "ctrun\n"
        assert _out(cli, name, "cat", "/run/host/container-manager") == "ctrun\n"
        mid = _out(cli, name, "cat", "/etc/machine-id").strip()
        assert re.fullmatch(r"[0-9a-f]{32}", mid)
        assert (cli.root / "containers" / name / "machine-id").read_text().strip() == mid
        mounts = {f[4]: (f[f.index("-") + 1], f[5]) for f in (
            line.split() for line in _out(cli, name, "cat", "/proc/1/mountinfo").splitlines())}
        for d in ("/run", "/run/lock", "/tmp"):
            assert mounts[d][0] == "tmpfs" and {"nosuid", "nodev"} <= set(
                mounts[d][1].split(",")), (d, mounts.get(d))
        if opts:   # container root is an unprivileged id of the host
            assert _out(cli, name, "cat", "/proc/1/uid_map").split()[:2] != ["0", "0"]
        # still the hardened default: no CAP_SYS_ADMIN, no_new_privs, seccomp
        status = dict(line.split(":\t", 1) for line in
                      _out(cli, name, "cat", "/proc/1/status").splitlines() if ":\t" in line)
        assert not int(status["CapEff"], 16) & (1 << 21)
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        logs = cli("logs", name, check=True).stdout
        assert "Reached target multi-user.target" in logs, logs[-3000:]
        # enter: the distribution's login shell, as root in root's home
        r = cli("enter", name, input='echo "$HOME $PWD $0"; shopt -q login_shell && echo LOGIN\n')
        assert r.stdout.split() == ["/root", "/root", "/bin/bash", "LOGIN"], r
        info = cli.json("inspect", name)
        pid, cgroups = info["pid"], [Path(p) for p in info["cgroup"].values()]
        _exec_after_delegation(cli, name, info["cgroup"].get("cgroup2"))
        assert cli.json("inspect", name)["config"]["stop_signal"] == ""
        assert json.loads((cli.root / "containers" / name / "spec.json").read_text())[
            "annotations"]["run.ctrun.stop_signal"] == "SIGRTMIN+3"

        cli("stop", name, timeout=60, check=True)
        info = cli.json("inspect", name)
        assert (info["exit_code"], info["exit_reason"]) == (0, "stopped"), info
        logs = cli("logs", name, check=True).stdout
        assert "Reached target shutdown.target" in logs and "Exiting container" in logs
        assert not Path(f"/proc/{pid}").exists()
        assert not [p for p in cgroups if p.exists()]
    finally:
        cli("destroy", "--force", name)


def _exec_after_delegation(cli, name, v2):
    """On a pure cgroup2 host systemd enables controllers below the container's cgroup once
    it sits in init.scope; the kernel then refuses new processes there (EBUSY), and exec
    must join the init's cgroup instead.  A hybrid host's systemd does not, so do it here."""
    if not v2 or not (Path(v2) / "ct/cgroup.controllers").read_text().split():
        return
    ct = Path(v2) / "ct"
    if not (ct / "cgroup.subtree_control").read_text().split():
        first = (ct / "cgroup.controllers").read_text().split()[0]
        (ct / "cgroup.subtree_control").write_text("+" + first)
    own = [x for x in _out(cli, name, "cat", "/proc/self/cgroup").splitlines()
           if x.startswith("0::")]
    assert own == ["0::/init.scope"]


def test_attached_run_stops_on_sigterm(server):
    """`timeout N ctrun run --rm` of a systemd image: the CLI's SIGTERM becomes systemd's stop
    signal (systemd ignores SIGTERM as PID 1), so the run ends, and --rm removes it."""
    cli = server
    # booted: first running (an exec before the run's start would be refused), then up
    assert conftest.sigterm_attached_run(
        cli, "att", ["debian-server"],
        lambda: cli.wait_state("att", "running") and _booted(cli, "att")) == 0


def test_stop_signal_option(server):
    cli = server
    cli("create", "sig", "--image", "debian-server", "--stop-signal", "SIGPWR", check=True)
    try:
        assert cli.json("inspect", "sig")["config"]["stop_signal"] == "SIGPWR"
    finally:
        cli("destroy", "--force", "sig")
    r = cli("create", "bad", "--image", "debian-server", "--stop-signal", "NOPE")
    assert_clean_error(r, "'NOPE'")
    assert cli("inspect", "bad").returncode != 0


def _ssh(key, ip, *argv):
    return subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                           "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"root@{ip}",
                           *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("opts", [(), ("--userns",)], ids=["default", "userns"])
def test_server_answers_ssh_and_sees_its_own_resources(server, tmp_path, opts):
    """The VPS of an OpenVZ host: booted on a bridge, reached by ssh from the host with the
    key --ssh-key gave, and free and nproc inside show its --memory and --cpus (one boot
    for all of it)."""
    import os
    cli, name = server, "vps"
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ctrun-test",
                    "-f", str(key)], check=True)
    sub = f"10.223.{os.getpid() % 250}.0/24"   # a /16 no other test uses
    with conftest.bridge_network(cli, f"vs{os.getpid() % 10000}", sub) as net:
        # a --userns container's files are written once it runs: its key is set live
        on_create = [] if opts else ["--ssh-key", f"{key}.pub"]
        cli("run", "-d", "--name", name, "--net", net, *on_create,
            "--memory", "512M", "--cpus", "1", *opts, "debian-server", check=True)
        _booted(cli, name)
        if opts:
            cli("set", name, "--ssh-key", f"{key}.pub", check=True)
        ip = cli.json("inspect", name)["network"]["ip"]
        deadline = time.monotonic() + 60   # sshd may still be binding once systemd is up
        while True:
            r = _ssh(key, ip, "cat", "/proc/1/comm")
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert (r.returncode, r.stdout) == (0, "systemd\n"), (r, _out(cli, name, "systemctl",
                                                              "status", "ssh", "--no-pager"))
        mem = [line.split() for line in _ssh(key, ip, "free", "-m").stdout.splitlines()
               if line.startswith("Mem:")]
        assert mem and mem[0][1] == "512", mem
        assert _ssh(key, ip, "nproc").stdout.strip() == "1"
        cli("stop", name, timeout=60, check=True)
        assert cli.json("inspect", name)["exit_code"] == 0


def _where(pid):
    """What a stuck process and its children wait on (for a failure message)."""
    out = []
    for p in [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text()
                      .split()] if Path(f"/proc/{pid}").exists() else []:
        try:
            state = [x for x in Path(f"/proc/{p}/status").read_text().splitlines()
                     if x.startswith("State")]
            out.append((p, Path(f"/proc/{p}/cmdline").read_bytes()[:120], state,
                        Path(f"/proc/{p}/wchan").read_text()))
        except OSError:
            pass
    return out


def test_attached_tty_run_shows_the_boot(server):
    """`ctrun run -it debian-server`: the run's terminal is systemd's /dev/console too, so the
    user watches the boot as on a machine's console."""
    import os
    import pty
    import select
    cli = server
    pid, fd = pty.fork()
    if pid == 0:   # the CLI as a user runs it, on a terminal
        try:
            os.chdir(conftest.REPO)
            os.execv(sys.executable, [sys.executable, "-m", "ctrun", "--root", str(cli.root),
                                      "run", "-it", "--rm", "--name", "tty", "debian-server"])
        finally:
            os._exit(127)
    seen, deadline = b"", time.monotonic() + 90
    try:
        while b"Reached target" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:   # EIO: the run ended
                    break
        assert b"Welcome to Debian" in seen and b"Reached target" in seen, (
            seen[-3000:], _where(pid), cli("list", "-a").stdout)
        cli("stop", "tty", timeout=60, check=True)
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            try:   # keep draining: a full terminal would block the relay
                select.select([fd], [], [], 0.2)[0] and os.read(fd, 65536)
            except OSError:
                time.sleep(0.1)
        assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, done
        pid = None
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
        cli("destroy", "--force", "tty")


class _Cgroup2OnlyCLI(conftest.CLI):
    """Each call in a private mount namespace that sees only cgroup2 at /sys/fs/cgroup (the
    host's hierarchies unmounted there, the unified one mounted in their place): ctrun, its
    server and monitor (started by the first call, in its namespace) and the systemd it
    boots see a pure cgroup v2 host.  (On this hybrid host the kernel keeps its controllers
    in the v1 hierarchies, so the v2 one has few; a pure v2 host delegates them all, which
    tests/integration/test_vm_cgroup_v2.py covers for the limits.)"""
    SETUP = ('umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && '
             'exec "$0" "$@"')

    def __call__(self, *args, input=None, check=False, timeout=60):
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            self.SETUP, sys.executable, "-m", "ctrun", "--root",
                            str(self.root), *args],
                           capture_output=True, text=True, input=input, timeout=timeout,
                           cwd=conftest.REPO)
        if check and r.returncode != 0:
            raise AssertionError(f"ctrun {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r


def test_systemd_boots_and_halts_on_a_cgroup2_only_host(debian_server_store):
    from ctrun.cgroups.detect import detect
    unified = detect().v2   # where this host mounts the cgroup2 hierarchy
    assert unified, "no cgroup2 hierarchy on this host"
    with conftest.own_store() as root:
        conftest.copy_image(debian_server_store, root, "debian-server")
        cli, name = _Cgroup2OnlyCLI(root), "v2"
        cli("run", "-d", "--name", name, "debian-server", check=True)
        try:
            state = _booted(cli, name)
            failed = set(_out(cli, name, "systemctl", "--failed", "--plain", "--no-legend")
                         .split()[::4]) if state == "degraded" else set()
            assert failed <= ALLOWED_FAILED, failed
            # systemd runs in unified mode, in its own init.scope of the container's subtree
            assert _out(cli, name, "stat", "-fc", "%T", "/sys/fs/cgroup") == "cgroup2fs\n"
            info = cli.json("inspect", name)
            assert set(info["cgroup"]) == {"cgroup2"}, info["cgroup"]
            own = Path(unified) / Path(info["cgroup"]["cgroup2"]).relative_to("/sys/fs/cgroup")
            assert (own / "ct" / "init.scope" / "cgroup.procs").read_text().split() == \
                [str(info["pid"])]
            cli("stop", name, timeout=60, check=True)
            info = cli.json("inspect", name)
            assert (info["exit_code"], info["exit_reason"]) == (0, "stopped"), info
            assert "Reached target shutdown.target" in cli("logs", name, check=True).stdout
            assert not own.exists()
        finally:
            cli("destroy", "--force", name)
