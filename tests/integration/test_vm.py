"""VM mode end to end: the busybox image booted by real QEMU (TCG here, KVM where it boots),
driven through the CLI with the same verbs as a container.

One VM is booted for the module and shared by the tests that only look at it (a boot costs
seconds under emulation); the tests that end a VM come last in the file, in order."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CLI, REPO, STORES, bridge_network, cleanup_store
from test_cli_errors import assert_clean_error, snapshot
from test_container import _in_pty

pytestmark = [pytest.mark.vm]

SUBNET_BYTE = 150 + os.getpid() % 50
PORT = 19000 + os.getpid() % 1000


def _guest_release():
    from ctrun.vm import kernel
    return kernel.find().release


@pytest.fixture(scope="module")
def vstore():
    root = Path(tempfile.mkdtemp(prefix="ctrun-store-vm-", dir="/var/tmp"))
    STORES.append(root)
    yield root
    cleanup_store(root)


@pytest.fixture(scope="module")
def vcli(vstore):
    return CLI(vstore)


@pytest.fixture(scope="module")
def vnet(vcli):
    with bridge_network(vcli, f"vn{os.getpid() % 10000}", f"10.215.{SUBNET_BYTE}.0/24") as n:
        yield n


@pytest.fixture(scope="module")
def vm(vcli, vnet):
    vcli("create", "vm1", "--vm", "--net", vnet, "--memory", "256M", "-p", f"{PORT}:80",
         check=True)
    r = vcli("start", "vm1", timeout=180)
    assert r.returncode == 0, r.stderr
    return vcli.json("inspect", "vm1")


def test_vm_runs_its_own_kernel(vcli, vm):
    assert vm["mode"] == "vm" and vm["state"] == "running"
    assert vm["accel"] in ("kvm", "tcg")
    rows = {r["name"]: r for r in vcli.json("list", "--format", "json")}
    assert rows["vm1"]["mode"] == "vm" and rows["vm1"]["accel"] == vm["accel"]
    r = vcli("exec", "vm1", "--", "uname", "-r", check=True)
    assert r.stdout.strip() == _guest_release()
    assert r.stdout.strip() != os.uname().release
    assert vcli("exec", "vm1", "--", "hostname", check=True).stdout.strip() == "vm1"


def test_exec_exit_code_stdin_and_streams(vcli, vm):
    r = vcli("exec", "vm1", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7 and r.stdout == "out\n" and r.stderr == "err\n"
    r = vcli("exec", "-i", "vm1", "--", "sh", "-c", "tr a-z A-Z; exit 3", input="hello vm\n")
    assert r.returncode == 3 and r.stdout == "HELLO VM\n"
    r = vcli("exec", "-e", "FOO=bar", "-w", "/etc", "-u", "65534:65534", "vm1", "--",
             "sh", "-c", 'echo $FOO $(pwd) $(id -u)', check=True)
    assert r.stdout.split() == ["bar", "/etc", "65534"]
    r = vcli("exec", "vm1", "--", "/no/such/command")
    assert r.returncode == 127 and "/no/such/command" in r.stderr


def test_exec_tty(vstore, vm):
    code, out = _in_pty([sys.executable, "-m", "ctrun", "--root", str(vstore), "exec", "-t",
                         "vm1", "--", "sh", "-c", "tty; stty size; exit 4"])
    assert code == 4 and b"/dev/pts/" in out, out


def test_guest_processes_are_invisible_to_the_host(vcli, vm):
    vcli("exec", "vm1", "--", "sh", "-c", "sleep 7777777 >/dev/null 2>&1 &", check=True)
    assert "7777777" in vcli("exec", "vm1", "--", "ps", check=True).stdout
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                assert b"7777777" not in (p / "cmdline").read_bytes()
            except OSError:
                pass


def test_container_and_vm_talk_tcp_over_the_bridge(vcli, vm, vnet):
    vcli("run", "-d", "--name", "web", "--net", vnet, "busybox", "--", "sh", "-c",
         "mkdir -p /www && echo hello-from-container > /www/index.html && "
         "exec httpd -f -p 80 -h /www", check=True)
    web_ip = vcli.json("inspect", "web")["network"]["ip"]
    r = vcli("exec", "vm1", "--", "sh", "-c",
             f"for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://{web_ip}/ && exit 0; "
             "sleep 0.5; done; exit 1")
    assert r.returncode == 0 and "hello-from-container" in r.stdout, r.stderr
    vcli("exec", "vm1", "--", "sh", "-c", "mkdir -p /www && echo hello-from-vm > "
         "/www/index.html && (httpd -p 80 -h /www >/dev/null 2>&1 &)", check=True)
    r = vcli("exec", "web", "--", "sh", "-c",
             f"for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://{vm['network']['ip']}/ "
             "&& exit 0; sleep 0.5; done; exit 1")
    assert r.returncode == 0 and "hello-from-vm" in r.stdout, r.stderr
    vcli("destroy", "-f", "web", check=True)
    # the VM's published port, through the same nftables rules as a container's
    from test_network import fetch
    assert "hello-from-vm" in fetch(f"http://{vm['network']['ip']}/")
    assert "hello-from-vm" in fetch(f"http://127.0.0.1:{PORT}/")


def test_inspect_stats_and_logs(vcli, vm):
    info = vcli.json("inspect", "vm1")
    assert info["qemu_pid"] == info["pid"] and info["pid"] > 0
    assert info["tap"] and Path(f"/sys/class/net/{info['tap']}").exists()
    assert Path(info["agent_channel"]).exists() and Path(info["console_log"]).exists()
    st = vcli.json("stats", "vm1", "--format", "json")["vm1"]
    assert 100 << 20 < st["guest"]["mem_total"] <= 256 << 20
    assert st["guest"]["processes"] > 0 and st["guest"]["cpus"] == 1
    assert st["memory"]["usage"] > 0  # QEMU's host-side cost, from its cgroup
    assert st["memory"]["limit"] > 256 << 20  # guest RAM plus QEMU's overhead
    logs = vcli("logs", "vm1", check=True).stdout
    assert "ctrun-init: starting /sbin/init" in logs


VSOCK_PROBE = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
int main(void)
{
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_LOCAL,
                            .svm_port = 1024};
    struct timeval tv = {20, 0};
    char hello[] = "H\5\0\0\0nonce", buf[64];
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    ssize_t n;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        printf("connect-failed %s\n", strerror(errno));
        return 1;
    }
    write(fd, hello, sizeof hello - 1);
    n = read(fd, buf, sizeof buf);
    printf(n > 0 ? "answered\n" : n == 0 || errno == ECONNRESET ? "closed\n" : "timeout\n");
    return 0;
}
"""


def _agent_frame(t, payload=b""):
    import struct
    return t.encode() + struct.pack("<I", len(payload)) + payload


def _unauthenticated_session(vmdir, frames):
    """Talk to the agent's last port as a client without the key would: the frames it got
    back before it went quiet."""
    import fcntl
    import socket
    import struct
    from ctrun.vm.qemu import PORTS
    lock = os.open(vmdir / f"agent{PORTS - 1}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    got = []
    try:
        s.connect(str(vmdir / f"agent{PORTS - 1}.sock"))
        # the port is one byte stream across connections: an answer the last session left
        # unread (a TCG guest answers late under load) would be read as this one's
        s.settimeout(0.5)
        try:
            while s.recv(65536):
                pass
        except socket.timeout:
            pass
        s.settimeout(10)
        buf = b""
        for f in frames:
            s.sendall(f)
            before = len(got)
            try:
                while True:  # until the answer to this frame (or silence)
                    while len(buf) >= 5 and len(buf) >= 5 + struct.unpack("<I", buf[1:5])[0]:
                        n = struct.unpack("<I", buf[1:5])[0]
                        got.append((chr(buf[0]), buf[5:5 + n]))
                        buf = buf[5 + n:]
                    if len(got) > before and got[-1][0] in "nchx":
                        break
                    buf += s.recv(65536)
            except socket.timeout:
                pass
    finally:
        s.close()
        os.close(lock)
    return got


@pytest.mark.slow
def test_the_agent_obeys_only_the_holder_of_the_vm_key(vstore, vcli, vm, tmp_path):
    """Issue 12 item 5: the agent trusted whoever connected.  Now a per-start key (0600, in
    the initramfs, never in an argv) must be proven first; QEMU runs sandboxed, with no
    capability; a guest process cannot reach the agent over vsock loopback."""
    cdir = vstore / "containers" / "vm1"
    vmdir = cdir / "vm"
    key = (vmdir / "agent.key").read_bytes()
    assert len(key) == 32
    for f in ("agent.key", "initrd.img"):
        assert os.stat(vmdir / f).st_mode & 0o777 == 0o600, f
    pid = vcli.json("inspect", "vm1")["qemu_pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"\0-sandbox\0on,obsolete=deny,elevateprivileges=deny,spawn=deny," \
           b"resourcecontrol=deny\0" in cmdline
    assert key not in cmdline and key.hex().encode() not in cmdline
    status = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    guest_cmdline = vcli("exec", "vm1", "--", "cat", "/proc/cmdline", check=True).stdout
    assert "console=ttyS0" in guest_cmdline and key.hex() not in guest_cmdline
    assert vcli("exec", "vm1", "--", "ls", "/ctrun/key").returncode != 0

    # a command with no hello at all, and one after a wrong proof: refused, never run
    got = _unauthenticated_session(vmdir, [
        _agent_frame("O", b"\0/\0000:0\0\0touch\0/pwned-no-hello\0")])
    assert [t for t, _ in got][-1:] == ["n"] and "x" not in [t for t, _ in got], got
    got = _unauthenticated_session(vmdir, [
        _agent_frame("H", b"0123456789abcdef"),
        _agent_frame("A", b"\0" * 32),
        _agent_frame("O", b"\0/\0000:0\0\0touch\0/pwned-bad-proof\0")])
    assert [t for t, _ in got if t != "r"][:2] == ["c", "n"], got
    assert "h" not in [t for t, _ in got] and "x" not in [t for t, _ in got], got
    r = vcli("exec", "vm1", "--", "sh", "-c", "ls /pwned-*")
    assert r.returncode != 0 and "pwned" not in r.stdout, r.stdout

    # vsock from inside the guest (loopback, CID 1): accepted by the kernel, closed by the
    # agent before it reads a byte
    src = tmp_path / "probe.c"
    src.write_text(VSOCK_PROBE)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp_path / "probe"), str(src)],
                   check=True, capture_output=True)
    p = subprocess.run([sys.executable, "-m", "ctrun", "--root", str(vstore), "exec", "-i",
                        "vm1", "--", "sh", "-c", "cat > /tmp/vprobe && chmod +x /tmp/vprobe"],
                       input=(tmp_path / "probe").read_bytes(), capture_output=True,
                       timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    r = vcli("exec", "vm1", "--", "/tmp/vprobe", timeout=60)
    assert r.stdout.strip() == "closed", (r.stdout, r.stderr)


def test_set_memory_inflates_the_balloon(vcli, vm):
    before = vcli.json("stats", "vm1", "--format", "json")["vm1"]["guest"]["mem_total"]
    vcli("set", "vm1", "--memory", "160M", check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = vcli.json("stats", "vm1", "--format", "json")["vm1"]["guest"]["mem_total"]
        if now < before - (64 << 20):
            break
        time.sleep(0.5)
    assert now < before - (64 << 20), (before, now)
    assert_clean_error(vcli("set", "vm1", "--memory", "1G"), "boot size")
    vcli("set", "vm1", "--memory", "256M", check=True)


def test_a_killed_client_frees_its_channel(vstore, vcli, vm):
    clients = [subprocess.Popen([sys.executable, "-m", "ctrun", "--root", str(vstore), "exec",
                                 "vm1", "--", "sleep", "555"], cwd=REPO)
               for _ in range(3)]
    deadline = time.monotonic() + 30
    while "sleep 555" not in vcli("exec", "vm1", "--", "ps", check=True).stdout:
        assert time.monotonic() < deadline
    for c in clients:
        c.kill()
        c.wait()
    deadline = time.monotonic() + 10
    while "sleep 555" in vcli("exec", "vm1", "--", "ps", check=True).stdout:
        assert time.monotonic() < deadline, "the guest kept a dead client's command"
        time.sleep(0.2)
    for _ in range(10):  # more sessions than channels: each was given back
        assert vcli("exec", "vm1", "--", "true").returncode == 0


def test_stop_is_orderly_and_leaves_nothing(vcli, vm):
    tap = vcli.json("inspect", "vm1")["tap"]
    r = vcli("stop", "vm1", "--time", "30", check=True)
    info = vcli.json("inspect", "vm1")
    assert info["state"] == "stopped" and info["exit_reason"] == "stopped", info
    assert not Path(f"/sys/class/net/{tap}").exists()
    assert not [p for p in Path("/sys/fs/cgroup").glob(f"*/{os.environ['CTRUN_CGROUP_PARENT']}"
                                                          "/vm1")], r


def test_qemu_killed_from_outside(vcli, vm):
    r = vcli("start", "vm1", timeout=180)
    assert r.returncode == 0, r.stderr
    info = vcli.json("inspect", "vm1")
    os.kill(info["qemu_pid"], signal.SIGKILL)
    info = vcli.wait_state("vm1", "stopped")
    assert info["exit_reason"] == "killed by SIGKILL"
    assert not Path(f"/sys/class/net/{info['config']['net']['veth']}").exists()
    assert vcli("exec", "vm1", "--", "true").returncode != 0
    vcli("destroy", "vm1", check=True)


def test_stop_falls_back_to_acpi_and_quit_without_the_agent(cli, store):
    cli("create", "na", "--vm", "--net", "none", check=True)
    assert cli("start", "na", timeout=180).returncode == 0
    # the agent gone (its channel refuses): stop must still end the VM, through QMP
    cli("exec", "na", "--", "sh", "-c", "kill -9 $(pidof ctrun-agent)")
    r = cli("stop", "na", "--time", "4", timeout=60)
    assert r.returncode == 0, r.stderr
    info = cli.json("inspect", "na")
    assert info["state"] == "stopped" and info["exit_reason"] == "stopped", info


def test_a_layered_image_boots_with_its_layers_merged(cli, store, tmp_path):
    """The VM's disk is the merged view of the image's layers: a later layer's file is
    there, a file it whites out is not."""
    from ctrun.images import store as images
    from test_images import oci_layout
    from ctrun.api import Ctrun
    images.get(Ctrun(store).store, "busybox")
    (bb,) = images.lowerdirs(Ctrun(store).store, "busybox")
    oci_layout(tmp_path / "layout", str(bb))
    cli("image", "import", str(tmp_path / "layout"), "layered", check=True)
    cli("create", "lv", "--vm", "--image", "layered", "--net", "none", "--", "/sbin/init",
        check=True)
    r = cli("start", "lv", timeout=180)
    assert r.returncode == 0, r.stderr
    r = cli("exec", "lv", "--", "sh", "-c", "cat /etc/layer2; ls /etc/gone")
    assert r.stdout == "second layer\n" and "No such file" in r.stderr, (r.stdout, r.stderr)


# ------------------------------------------------------------------ bad input and faults

def test_bad_vm_input_is_refused_without_state(cli, store):
    for args, words in [
        (["--memory", "64M"], ["below what a VM guest needs"]),
        (["--cpus", "0.5"], ["vCPU count"]),
        (["--volume", "/tmp:/mnt"], ["--volume does not apply to a VM"]),
        (["--", "/sbin/no-such-init"], ["/sbin/no-such-init"]),
    ]:
        r = cli("create", "bad", "--vm", "--net", "none", *args)
        assert_clean_error(r, *words)
        assert snapshot(store) == []
    r = cli("run", "--vm", "--net", "none", "busybox")
    assert_clean_error(r, "run --vm needs -d")
    cli("create", "tv", "--vm", "--net", "none", check=True)
    assert_clean_error(cli("template", "fromvm", "tv"), "is a VM")
    assert "fromvm" not in cli("image", "list", check=True).stdout


def test_missing_kernel_or_qemu_names_the_package(cli, store, monkeypatch):
    monkeypatch.setenv("CTRUN_VM_KERNEL", "/nonexistent/vmlinuz")
    assert_clean_error(cli("create", "nok", "--vm", "--net", "none"), "CTRUN_VM_KERNEL")
    monkeypatch.delenv("CTRUN_VM_KERNEL")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert_clean_error(cli("create", "noq", "--vm", "--net", "none"),
                       "apt-get install qemu-system-x86")
    assert snapshot(store) == []


def test_a_guest_that_never_answers_is_stopped_with_its_console(cli, store, monkeypatch):
    cli("create", "slow", "--vm", "--net", "none", check=True)
    monkeypatch.setenv("CTRUN_VM_BOOT_TIMEOUT", "0.5")
    r = cli("start", "slow")
    assert r.returncode != 0 and "did not become ready" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    info = cli.json("inspect", "slow")
    assert info["state"] == "stopped"


def test_accel_kvm_is_honest(cli, store):
    from ctrun.vm import accel, kernel
    verdict = accel.verdict(kernel.find())
    cli("create", "k", "--vm", "--net", "none", "--accel", "kvm", check=True)
    r = cli("start", "k", timeout=180)
    if verdict["kvm"]:
        assert r.returncode == 0, r.stderr
        assert cli.json("inspect", "k")["accel"] == "kvm"
    else:
        assert_clean_error(r, "--accel kvm")
        assert cli.json("inspect", "k")["state"] == "created"


def test_kvm_boot(cli, store):
    from ctrun.vm import accel, kernel
    verdict = accel.verdict(kernel.find())
    if not verdict["kvm"]:
        pytest.skip(f"KVM cannot boot a guest here: {verdict['why']}")
    cli("create", "kv", "--vm", "--net", "none", "--accel", "kvm", check=True)
    cli("start", "kv", check=True, timeout=60)
    assert cli("exec", "kv", "--", "true").returncode == 0
