"""Every isolation probe can report more than one outcome: classify() is fed what a host,
a container and a VM observe (the integration tests show the real observations)."""

import pytest

from ctrun.lab import probes

BOOT = "5eb451f4-e6b3-4ac0-81e9-8feea07e8bd9"
HOST = {"shared_kernel": True}
GUEST = {"shared_kernel": False}

# probe -> [(observations, expected outcome), ...]: at least two different outcomes each
CASES = {
    "kernel": [
        ({**HOST, "release": "6.1", "host_release": "6.1", "boot_id": BOOT,
          "host_boot_id": BOOT}, "shared"),
        ({**GUEST, "release": "6.1", "host_release": "6.1", "boot_id": "other",
          "host_boot_id": BOOT}, "isolated"),
    ],
    "processes": [
        ({**HOST, "marker_seen": True, "visible": 80, "marker": "m"}, "shared"),
        ({**HOST, "marker_seen": False, "visible": 3, "marker": "m"}, "isolated"),
    ],
    "mounts": [
        ({**HOST, "host_mounts": 2, "matched": ["/"]}, "shared"),
        ({**HOST, "host_mounts": 2, "matched": []}, "isolated"),
        ({**GUEST, "host_mounts": 2, "matched": ["/"]}, "isolated"),
    ],
    "procsys": [
        ({**HOST, "value": "60", "write": "0"}, "shared"),
        ({**HOST, "value": "60", "write": "EROFS"}, "blocked"),
        ({**GUEST, "value": "60", "write": "0"}, "isolated"),
    ],
    "module": [
        ({**HOST, "finit_module": "EBADF"}, "shared"),
        ({**HOST, "finit_module": "EPERM"}, "blocked"),
        ({**HOST, "finit_module": "ENOSYS"}, "blocked"),
        ({**GUEST, "finit_module": "EBADF"}, "isolated"),
    ],
    "rawdisk": [
        ({**HOST, "disk": "vda", "dev": "254:0", "open": "0", "read": "512"}, "shared"),
        ({**HOST, "disk": "vda", "dev": "254:0", "open": "EPERM"}, "blocked"),
        ({**HOST, "disk": "vda", "dev": "254:0", "mknod": "EPERM"}, "blocked"),
        ({**GUEST, "disk": "vda", "dev": "254:0", "open": "0"}, "isolated"),
        ({**HOST, "disk": "none"}, "isolated"),
    ],
    "clock": [
        ({**HOST, "settime": "0"}, "shared"),
        ({**HOST, "settime": "EPERM"}, "blocked"),
        ({**GUEST, "settime": "0"}, "isolated"),
    ],
    "dmesg": [
        ({**HOST, "klog_read": "0", "klog_bytes": "200"}, "shared"),
        ({**HOST, "klog_read": "EPERM", "klog_bytes": "0"}, "blocked"),
        ({**GUEST, "klog_read": "0", "klog_bytes": "200"}, "isolated"),
    ],
    "cgroup-escape": [
        ({**HOST, "escaped": True, "evidence": "moved to /"}, "shared"),
        ({**HOST, "escaped": False, "evidence": "still inside"}, "blocked"),
        ({**GUEST, "escaped": False, "evidence": "QEMU stays"}, "isolated"),
    ],
    "forkbomb": [
        ({**HOST, "contained": False, "evidence": "200 forks, cap"}, "shared"),
        ({**HOST, "contained": True, "evidence": "30 forks, EAGAIN"}, "blocked"),
        ({**GUEST, "contained": True, "evidence": "inside the guest"}, "isolated"),
        ({**HOST, "not_run": probes.HOST_NOT_RUN}, "not run"),
    ],
    "memhog": [
        ({**HOST, "contained": False, "evidence": "touched 144 MiB"}, "shared"),
        ({**HOST, "contained": True, "evidence": "killed"}, "blocked"),
        ({**GUEST, "contained": True, "evidence": "guest OOM"}, "isolated"),
        ({**HOST, "not_run": probes.HOST_NOT_RUN}, "not run"),
    ],
    "kernel-fault": [
        (HOST, "shared"),
        (GUEST, "isolated"),
    ],
}


def test_every_probe_has_cases():
    assert set(CASES) == set(probes.PROBES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_probe_reports_each_outcome(name):
    seen = set()
    for obs, want in CASES[name]:
        outcome, evidence = probes.classify(name, obs)
        assert outcome == want, (obs, outcome, evidence)
        assert evidence and "\n" not in evidence
        seen.add(outcome)
    assert len(seen - {"not run"}) >= 2


def test_mount_keys_ignore_pseudo_file_systems():
    info = ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
            "22 27 0:21 / /proc rw - proc proc rw\n"
            "42 27 254:0 /run/netns /run/netns rw shared:1 - ext4 /dev/vda rw\n")
    assert probes.mount_keys(info) == {("254:0", "/", "/", "ext4", "/dev/vda"),
                                       ("254:0", "/run/netns", "/run/netns", "ext4",
                                        "/dev/vda")}


def test_host_kernel_reads_boot_id():
    k = probes.host_kernel()
    assert k["release"] and len(k["boot_id"]) == 36
