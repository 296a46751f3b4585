"""The debian-server image (systemd without udev: Debian's systemd does not pull it in), the
same image test_systemd boots as a container, booted as a VM: it reaches `running`, and
`ctrun stop` powers it off cleanly.  One TCG boot for the
whole file, checked from several sides: systemd's state and jobs, a service, the mask of
the serial getty; after the stop, QEMU gone with a clean exit, the root file system
unmounted cleanly and the guest's own journal ending in poweroff.target (the VM's disk
overlay persists, so its journal is read from the host after the stop)."""

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, copy_image, own_store

pytestmark = [pytest.mark.vm, pytest.mark.slow]

BOOT_DEADLINE = 300   # not a timing assertion: a bound on a wait, generous for loaded TCG hosts
ALLOWED_FAILED = set()  # units that may fail in the guest (and why): none


@pytest.fixture(scope="module")
def sd(debian_server_store):
    """The session's debian-server image (the one test_systemd boots as a container) booted
    as a VM, in a store of the module's own."""
    with own_store() as root:
        copy_image(debian_server_store, root, "debian-server")
        cli = CLI(root)
        r = cli("run", "-d", "--vm", "--name", "sd", "--net", "none", "debian-server",
                timeout=300)
        assert r.returncode == 0, r.stderr
        yield cli


def _guest(cli, *argv):
    return cli("exec", "sd", "--", *argv, timeout=60).stdout.strip()


def _wait_booted(cli):
    """is-system-running once the boot is over; fails naming the jobs still waiting."""
    deadline = time.monotonic() + BOOT_DEADLINE
    state = ""
    while time.monotonic() < deadline:
        state = _guest(cli, "systemctl", "is-system-running")
        if state in ("running", "degraded", "maintenance", "stopping"):
            return state
        time.sleep(2)
    jobs = _guest(cli, "systemctl", "list-jobs", "--no-pager")
    pytest.fail(f"the guest is still {state!r} after {BOOT_DEADLINE} s; waiting:\n{jobs}")


def _superblock(disk, workdir):
    """The ext4 superblock of the VM's disk (through its qcow2 overlay)."""
    out = workdir / "sb.raw"
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1024", "count=2",
                    f"if={disk}", f"of={out}"], check=True, capture_output=True)
    return out.read_bytes()[1024:]


def _guest_journal(disk, workdir):
    """The last lines of the guest's persistent journal, read off its disk (no mount):
    None when the image keeps no journal on disk."""
    raw = workdir / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)],
                   check=True, capture_output=True)
    subprocess.run(["debugfs", "-R", f"rdump /var/log/journal {workdir}", str(raw)],
                   check=True, capture_output=True)
    raw.unlink()
    files = sorted(map(str, (workdir / "journal").glob("*/system*.journal")))
    if not files:
        return None
    return subprocess.run(["journalctl", "--no-pager", "-o", "cat", "-n", "40",
                           *[f"--file={f}" for f in files]],
                          capture_output=True, text=True, check=True).stdout


def test_systemd_boots_in_a_vm_and_stop_powers_it_off(sd, tmp_path):
    state = _wait_booted(sd)
    failed = {line.split()[0] for line in _guest(sd, "systemctl", "--failed", "--plain",
                                                 "--no-legend", "--no-pager").splitlines()}
    assert state in ("running", "degraded") and failed <= ALLOWED_FAILED, (state, failed)
    assert _guest(sd, "readlink", "/proc/1/exe").endswith("/systemd")
    assert _guest(sd, "systemctl", "is-active", "ssh.service", "dbus.service", "cron.service",
                  "rsyslog.service", "systemd-journald.service", "systemd-logind.service"
                  ).split() == ["active"] * 6
    # the serial console has no input to log in from: its getty is masked, in the guest only
    assert _guest(sd, "systemctl", "is-enabled", "serial-getty@ttyS0.service") == "masked-runtime"
    assert _guest(sd, "systemctl", "list-jobs", "--no-pager") == "No jobs running."

    info = sd.json("inspect", "sd")
    qemu_pid, disk = info["qemu_pid"], info["vm"]["disk"]
    r = sd("stop", "sd", "--time", "120", timeout=180)
    assert r.returncode == 0, r.stderr
    info = sd.json("inspect", "sd")
    assert info["state"] == "stopped", info
    assert (info["exit_code"], info["exit_reason"]) == (0, "stopped"), info  # not SIGKILL
    assert not Path(f"/proc/{qemu_pid}").exists() or \
        "qemu" not in Path(f"/proc/{qemu_pid}/comm").read_text()
    sb = _superblock(disk, tmp_path)
    assert struct.unpack_from("<H", sb, 0x38)[0] == 0xEF53
    # ext4's "needs_recovery" flag is set while mounted read-write: a guest that was cut
    # off (QMP quit, SIGKILL) leaves it set, a clean power-off clears it
    assert not struct.unpack_from("<I", sb, 0x60)[0] & 0x4, "the guest's root was not unmounted"
    if not shutil.which("journalctl") or not shutil.which("debugfs"):
        return
    journal = _guest_journal(disk, tmp_path)
    if journal is None:
        pytest.skip("the image keeps no journal on disk")
    assert "Reached target poweroff.target" in journal, journal
