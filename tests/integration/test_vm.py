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
