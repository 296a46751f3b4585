"""What this hybrid-cgroup host cannot show: ctrun's cgroup v2 code against a pure cgroup v2
kernel.  A Debian image (debootstrap, with python3 and pytest) boots as a VM whose init
mounts only cgroup2; ctrun's real-cgroup integration tests (limits applied and read back,
OOM kills counted, pids refusals, the freezer, stats) then run inside the guest, as root on
the guest's own kernel, and every one of them must pass there (the cgroup v1 ones are left
out: that kernel has no v1 hierarchy)."""

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from conftest import CLI, REPO, STORES, cleanup_store

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SUITES = ["tests/integration/test_cgroups_real.py", "tests/integration/test_cgroup_limits_real.py"]
MUST_PASS = [
    "test_cgroups_real.py::test_v2_manager_alone_kills_through_cgroup_kill",
    "test_cgroups_real.py::test_oom_kill_is_counted",
    "test_cgroup_limits_real.py::test_allocating_past_32m_is_oom_killed_and_counted",
    "test_cgroup_limits_real.py::test_pids_limit_stops_a_fork_loop",
    "test_cgroup_limits_real.py::test_freeze_and_thaw_a_running_process",
    "test_cgroup_limits_real.py::test_every_limit_at_once_then_stats",
]


@pytest.fixture(scope="module")
def guest():
    root = Path(tempfile.mkdtemp(prefix="ctrun-store-v2vm-", dir="/var/tmp"))
    STORES.append(root)
    cli = CLI(root)
    try:
        r = cli("image", "build", "debian", "--include", "python3,python3-pytest", timeout=900)
        assert r.returncode == 0, r.stderr
        cli("create", "v2", "--vm", "--image", "debian", "--memory", "512M", "--net", "none",
            check=True)
        r = cli("start", "v2", timeout=300)
        assert r.returncode == 0, r.stderr
        yield cli
    finally:
        cleanup_store(root)


def _source_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(REPO / "ctrun", "ctrun", filter=lambda i: None if "__pycache__" in i.name else i)
        t.add(REPO / "pyproject.toml", "pyproject.toml")
        for s in SUITES:
            t.add(REPO / s, s)
    return buf.getvalue()


def test_the_guest_is_a_pure_cgroup_v2_system(guest):
    mounts = guest("exec", "v2", "--", "cat", "/proc/self/mounts", check=True).stdout
    kinds = {line.split()[2] for line in mounts.splitlines()}
    assert "cgroup2" in kinds and "cgroup" not in kinds, mounts
    ctrls = guest("exec", "v2", "--", "cat", "/sys/fs/cgroup/cgroup.controllers",
                  check=True).stdout.split()
    assert {"cpu", "memory", "pids", "io"} <= set(ctrls)
    assert guest("exec", "v2", "--", "uname", "-r", check=True).stdout.strip() != os.uname().release


def test_cgroup_v2_integration_tests_pass_inside_the_guest(guest):
    p = subprocess.run([sys.executable, "-m", "ctrun", "--root", str(guest.root), "exec", "-i",
                        "v2", "--", "sh", "-c", "mkdir -p /opt/src && tar -x -m -C /opt/src"],
                       input=_source_tar(), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = guest("exec", "v2", "--", "sh", "-c",
              "cd /opt/src && PYTHONPATH=/opt/src python3 -m pytest -q -rA -p no:cacheprovider "
              "--noconftest -m 'not cgroup_v1' " + " ".join(SUITES) + " 2>&1", timeout=900)
    assert r.returncode == 0, r.stdout[-4000:]
    passed = {line.split()[1].rsplit("/", 1)[-1] for line in r.stdout.splitlines()
              if line.startswith("PASSED ")}
    missing = [t for t in MUST_PASS if t not in passed]
    assert not missing, f"did not pass inside the v2 guest: {missing}\n{r.stdout[-3000:]}"

