"""sysvinit (Debian's sysvinit-core) as PID 1 of a default (not privileged) container: it
boots to runlevel 2 and starts that runlevel's services, `ctrun logs` shows its boot from
/dev/console, and `ctrun stop` halts it through a runlevel request (sysvinit ignores
SIGTERM): its shutdown scripts run and the halt ends the container, well before the
SIGKILL deadline; the same with --userns, and as a VM, whose stop powers it off.  The
image (debian with sysvinit-core) is built once for the session (conftest's debian_store),
marked slow."""

import struct
import time
from pathlib import Path

import pytest

import conftest
from test_debian_image import needs_debootstrap

pytestmark = [pytest.mark.slow, needs_debootstrap]

HALTED = 128 + 2   # the kernel ends a PID namespace whose init halted with SIGINT (reboot(2))


@pytest.fixture
def sysv(debian_store, store, cli):
    conftest.copy_image(debian_store, store, "debian")
    return cli


def _wait_for(cli, name, argv, want, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        r = cli("exec", name, "--", *argv)
        if r.stdout.strip() == want or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert r.stdout.strip() == want, (r, cli("logs", name).stdout[-3000:])


@pytest.mark.parametrize("opts", [(), ("--userns",)], ids=["default", "userns"])
def test_sysvinit_boots_and_halts_cleanly(sysv, tmp_path, opts):
    cli, name = sysv, "sv"
    # a runlevel-2 service: Debian's rc.local runs /etc/rc.local (S02 in /etc/rc2.d)
    rc_local = tmp_path / "rc.local"
    rc_local.write_text("#!/bin/sh\necho up > /run/rc.local.ran\n")
    rc_local.chmod(0o755)
    cli("run", "-d", "--name", name, "-v", f"{rc_local}:/etc/rc.local:ro", *opts, "debian",
        "--", "/sbin/init", check=True)
    try:
        _wait_for(cli, name, ["cat", "/run/rc.local.ran"], "up")
        _wait_for(cli, name, ["runlevel"], "N 2")
        assert cli("exec", name, "--", "cat", "/proc/1/comm", check=True).stdout == "init\n"
        status = dict(line.split(":\t", 1) for line in cli(
            "exec", name, "--", "cat", "/proc/1/status", check=True).stdout.splitlines()
            if ":\t" in line)
        caps = int(status["CapEff"], 16)
        # CAP_SYS_BOOT, for the halt's reboot(2) that ends the namespace; still hardened
        assert caps & (1 << 22) and not caps & (1 << 21), status["CapEff"]
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        info = cli.json("inspect", name)
        pid, cgroups = info["pid"], [Path(p) for p in info["cgroup"].values()]
        assert "INIT: Entering runlevel: 2" in cli("logs", name, check=True).stdout

        cli("stop", "--time", "60", name, timeout=120, check=True)
        info = cli.json("inspect", name)
        assert (info["exit_code"], info["exit_reason"]) == (HALTED, "stopped"), info
        logs = cli("logs", name, check=True).stdout
        assert "Asking all remaining processes to terminate" in logs, logs[-3000:]
        assert "Will now halt" in logs, logs[-3000:]
        assert not Path(f"/proc/{pid}").exists()
        assert not [p for p in cgroups if p.exists()]
    finally:
        cli("destroy", "--force", name)


def test_attached_run_halts_on_sigterm(sysv):
    """`timeout N ctrun run --rm` of a sysvinit image: the CLI's SIGTERM becomes the
    runlevel-0 request (sysvinit ignores SIGTERM as PID 1), so the run ends with the halt's
    exit code after the shutdown scripts ran, and --rm removes the container."""
    cli = sysv
    assert conftest.sigterm_attached_run(cli, "att", ["debian", "--", "/sbin/init"],
                                         lambda: _wait_for(cli, "att", ["runlevel"], "N 2")) \
        == HALTED


@pytest.mark.vm
def test_sysvinit_vm_powers_off_on_stop(sysv, tmp_path):
    """The same image as a VM: the guest agent writes the runlevel request, and the halt
    powers the machine off (SIGTERM and the ACPI button reach no sysvinit without acpid,
    so QEMU used to be quit after half the timeout, its disk not unmounted)."""
    from test_vm_systemd import _superblock
    cli, name = sysv, "svm"
    r = cli("run", "-d", "--vm", "--name", name, "--net", "none", "debian", "--",
            "/sbin/init", timeout=300)
    assert r.returncode == 0, r.stderr
    _wait_for(cli, name, ["runlevel"], "N 2", timeout=300)
    info = cli.json("inspect", name)
    qemu_pid, disk = info["qemu_pid"], info["vm"]["disk"]
    cli("stop", name, "--time", "120", timeout=180, check=True)
    info = cli.json("inspect", name)
    assert (info["state"], info["exit_code"], info["exit_reason"]) == ("stopped", 0, "stopped")
    assert not Path(f"/proc/{qemu_pid}").exists() or \
        "qemu" not in Path(f"/proc/{qemu_pid}/comm").read_text()
    assert "Will now halt" in cli("logs", name, check=True).stdout
    # ext4's needs_recovery flag: cleared when the guest remounted its root read-only
    assert not struct.unpack_from("<I", _superblock(disk, tmp_path), 0x60)[0] & 0x4
