"""ctrun exec (and the init) against a hostile container: terminal injection, the joining
process's exposure, the working directory, capabilities and limits."""

import os
import shlex
import subprocess
import sys
import time

import pytest

from conftest import REPO


def _under_pty(store, *args):
    """The CLI run on a fresh pseudo-terminal (util-linux script), as from an operator's
    shell: its output, read from that terminal."""
    cmd = " ".join(shlex.quote(a) for a in
                   (sys.executable, "-m", "ctrun", "--root", str(store), *args))
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60, cwd=REPO)
    return r.returncode, dict(line.strip().split("=", 1) for line in r.stdout.splitlines()
                              if "=" in line)


@pytest.fixture
def sleeper(ct, probe):
    ct.create("hard", cmd=["sleep", "1000"], volumes=[f"{probe}:/probe:ro"],
              ulimits=["nofile=100:200"])
    ct.start("hard")
    return "hard"


def test_exec_without_tty_gets_no_controlling_terminal(store, sleeper):
    code, got = _under_pty(store, "exec", sleeper, "--", "/probe", "tty")
    print(got)
    assert code == 0
    assert got["tty_nr"] == "0"            # a session of its own, no controlling terminal
    assert got["tiocsti"] == "EPERM"       # the operator's terminal takes no keystrokes
    assert got["tiocsti_hibits"] == "EPERM"
    assert got["tioclinux"] == "EPERM"
    assert got["tcgets"] == "0"            # yet its stdio is still that terminal


def test_seccomp_refuses_tiocsti_even_on_the_containers_own_terminal(store, sleeper):
    # with -t the command's controlling terminal is the container's own pty, where the
    # kernel would allow TIOCSTI: only the seccomp profile stops it
    code, got = _under_pty(store, "exec", "-t", sleeper, "--", "/probe", "tty")
    print(got)
    assert code == 0
    assert got["tty_nr"] != "0"
    assert got["tiocsti"] == "EPERM"
    assert got["tiocsti_hibits"] == "EPERM"
    assert got["tioclinux"] == "EPERM"
    assert got["tcgets"] == "0"


@pytest.mark.slow
def test_joining_process_is_never_reachable_from_the_container(ct, probe, tmp_path):
    """A loop in the container opens /proc/PID/exe and /proc/PID/fd/N of every other
    process while the host joins it 100 times: it may only ever be refused."""
    out = tmp_path / "out"
    out.mkdir()
    ct.create("scan", cmd=["/probe", "scan", "/out/scan.txt"],
              volumes=[f"{probe}:/probe:ro", f"{out}:/out"])
    ct.start("scan")
    log = out / "scan.txt"
    deadline = time.monotonic() + 20
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(100):
        assert ct.exec("scan", ["true"]) == 0
    # the command itself, after execve, is an ordinary process of the container as before
    code, owner = ct.exec_output("scan", ["stat", "-c", "%u", "/proc/self/"], user="1000")
    assert (code, owner.strip()) == (0, "1000")
    (out / "scan.txt.stop").touch()
    deadline = time.monotonic() + 30
    while "done" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = log.read_text()
    print(seen)
    assert "done" in seen
    assert "LEAK" not in seen


def test_working_directory_cannot_lead_out_of_the_root(ct, cli, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host secret\n")
    ct.create("wd", cmd=["sleep", "1000"], workdir="/w")
    ct.start("wd")
    # a host directory fd in the process that runs exec, as any caller of the API may hold
    hostfd = os.open(host, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # the host's fd (gone before the join now), a magic link that does exist there,
        # and a relative link climbing above the root
        for target in (f"/proc/self/fd/{hostfd}", "/proc/self/cwd", "../../.."):
            code, out = ct.exec_output("wd", ["sh", "-c", f"rm -rf /w && ln -s {target} /w"],
                                       workdir="/")
            assert code == 0, out
            code, out = ct.exec_output("wd", ["sh", "-c", "pwd; cat secret"])
            print(target, code, out)
            assert "host secret" not in out
            assert code != 0 and out.count("\n") == 1 and "working directory" in out, out
        r = cli("exec", "wd", "--", "pwd")
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr and "working directory" in r.stderr
    finally:
        os.close(hostfd)
    # a symlink that stays inside the root is followed as before
    ct.exec_output("wd", ["sh", "-c", "rm -f /w && ln -s /etc /w"], workdir="/")
    assert ct.exec_output("wd", ["sh", "-c", "ls passwd"]) == (0, "passwd\n")


def test_exec_applies_the_containers_ulimits(ct, sleeper):
    code, out = ct.exec_output(sleeper, ["sh", "-c", "ulimit -n; ulimit -Hn"])
    assert (code, out.split()) == (0, ["100", "200"])


def _with_ambient_chown():
    import ctypes
    import prctl
    prctl.cap_inheritable.chown = True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(47, 2, prctl.CAP_CHOWN, 0, 0) != 0:  # PR_CAP_AMBIENT_RAISE
        raise OSError(ctypes.get_errno(), "PR_CAP_AMBIENT_RAISE")


def test_ambient_capabilities_do_not_reach_the_container(store, sleeper):
    """Whatever ambient set the caller of ctrun has, the container's processes have none."""
    def ambient(*args):
        r = subprocess.run([sys.executable, "-m", "ctrun", "--root", str(store), *args, "--",
                            "grep", "CapAmb", "/proc/self/status"], capture_output=True,
                           text=True, preexec_fn=_with_ambient_chown, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()[1]
    # the caller really has it (the check would prove nothing otherwise)
    check = subprocess.run(["grep", "CapAmb", "/proc/self/status"], capture_output=True,
                           text=True, preexec_fn=_with_ambient_chown)
    assert check.stdout.split()[1] == "0000000000000001"
    assert ambient("exec", sleeper) == "0000000000000000"
    assert ambient("run", "--rm", "busybox") == "0000000000000000"
