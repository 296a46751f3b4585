"""--userns: container root is an unprivileged host uid, and files carry the right owners."""

import os
from pathlib import Path

from test_container import _exec


def test_userns_maps_root_to_a_private_host_range(ct, store):
    ct.create("u1", cmd=["sleep", "1000"], userns=True)
    ct.create("u2", cmd=["sleep", "1000"], userns=True)
    b1 = ct.inspect("u1")["config"]["userns_base"]
    b2 = ct.inspect("u2")["config"]["userns_base"]
    assert b1 and b2 and b1 != b2 and abs(b1 - b2) >= 65536
    pid = ct.start("u1")["pid"]
    # seen from the host, the container's root is the unprivileged base uid
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(b1)] * 4
    code, out = _exec(ct, "u1", "sh", "-c",
                      "id -u; cat /proc/self/uid_map; stat -c '%u:%g' /bin/busybox /etc/passwd; "
                      "echo made > /root/file; stat -c '%u' /root/file")
    assert code == 0, out
    lines = out.split("\n")
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(b1), "65536"]
    assert lines[2:4] == ["0:0", "0:0"]  # image files appear owned by the container's root
    assert lines[4] == "0"
    # on the host, what the container wrote belongs to the mapped uid; the image is untouched
    upper = store / "containers/u1/upper/root/file"
    assert upper.stat().st_uid == b1
    from ctrun.images import store as images
    from ctrun.state import Store
    (layer,) = images.lowerdirs(Store(store), "busybox")
    assert (layer / "bin/busybox").stat().st_uid == 0
    # nothing of the image was copied for the container: its layers are idmapped mounts
    cdir = store / "containers/u1"
    assert not (cdir / "lower").exists()
    size = sum(p.lstat().st_size for p in cdir.rglob("*"))
    assert size < (layer / "bin/busybox").stat().st_size / 4, size


def test_userns_root_cannot_use_host_privileges(cli, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host only")
    os.chmod(secret, 0o600)
    r = cli("run", "--rm", "--userns", "-v", f"{tmp_path}:/host:ro", "busybox", "--", "sh", "-c",
            "cat /host/secret || echo DENIED; stat -c '%u' /host")
    assert "DENIED" in r.stdout and "host only" not in r.stdout
    assert r.stdout.split()[-1] == "65534"  # host root is unmapped: nobody inside
    assert r.returncode == 0


def test_userns_container_of_an_older_ctrun_keeps_its_shifted_copy(ct, store):
    """Containers created before idmapped layers have `lower`: a copy of the image with
    owners shifted into their range, used as their only layer."""
    import subprocess
    from ctrun.images import store as images
    from ctrun.state import Store
    ct.create("old", cmd=["sleep", "1000"], userns=True)
    base = ct.inspect("old")["config"]["userns_base"]
    (layer,) = images.lowerdirs(Store(store), "busybox")
    lower = store / "containers/old/lower"
    subprocess.run(["cp", "-a", f"{layer}/.", str(lower)], check=True)
    (lower / "etc/copied").write_text("from the copy\n")
    subprocess.run(["chown", "-R", f"{base}:{base}", str(lower)], check=True)
    ct.start("old")
    code, out = _exec(ct, "old", "sh", "-c", "cat /etc/copied; stat -c '%u' /bin/busybox")
    assert code == 0, out
    assert out.split() == ["from", "the", "copy", "0"]


def test_userns_start_without_idmapped_mounts_fails_cleanly(ct, monkeypatch):
    """A kernel or store file system without idmapped mounts (simulated: mount_setattr
    refused) gives a one-line error naming the need and the fixes, and leaves no process."""
    import errno

    import pytest
    from ctrun.errors import HostUnsupported
    from ctrun.kernel import linux

    def refuse(tree_fd, userns_fd):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(linux, "idmap_tree", refuse)
    # an attached run launches in this process (a detached start, in the monitor)
    with pytest.raises(HostUnsupported) as e:
        ct.run(name="noidmap", cmd=["true"], userns=True)
    assert "idmapped mounts" in str(e.value) and "--root" in str(e.value)
    assert "\n" not in str(e.value)
    assert ct.inspect("noidmap")["state"] != "running"
    assert not ct.inspect("noidmap")["cgroup"] or not any(
        os.path.isdir(p) for p in ct.inspect("noidmap")["cgroup"].values())
    monkeypatch.undo()
    assert ct.start("noidmap")["pid"]  # the same container starts once the kernel allows it
