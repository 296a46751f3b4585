"""The mount plan of an OCI spec (what ctrun-oci hands the runtime) through the recording
kernel double: the root directory bound onto itself, only the spec's mounts in order with
their options and propagation, the default and listed devices, the root's propagation
last.  Nothing reaches the kernel."""

import os

import pytest

from recording_kernel import kernel, rootfs_state  # noqa: F401 - fixtures
from ctrun.libc import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
                        MS_RDONLY, MS_REC, MS_REMOUNT, MS_STRICTATIME)
from ctrun.runtime import devices, mounts, rootfs

NOSUID_NODEV_NOEXEC = MS_NOSUID | MS_NODEV | MS_NOEXEC



pytestmark = pytest.mark.usefixtures("rootfs_state")


def _spec(tmp_path):
    for d in ("root", "vol"):
        (tmp_path / d).mkdir()
    return {
        "root": {"path": str(tmp_path / "root"), "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/data", "type": "none", "source": str(tmp_path / "vol"),
             "options": ["rbind", "ro", "nosuid", "rprivate"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nodev", "mode=755", "size=10m"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "user")],
                  "rootfsPropagation": "rshared",
                  "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]},
        "annotations": {"run.ctrun.oci": True, "run.ctrun.cgroup_layout": {"kind": "v2"}},
    }


def test_mount_plan_of_an_oci_spec_in_a_user_namespace(kernel, tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "null_device",
                        lambda dir_fd, name: os.open("/dev/null", os.O_PATH | os.O_CLOEXEC))
    spec = _spec(tmp_path)
    rootfs.prepare(spec)
    rootfs.mask(spec)
    root = str(tmp_path / "root")

    def short(arg):
        if isinstance(arg, str) and arg.startswith(root):
            return arg[len(root):] or "/"
        return arg
    plan = [(name, *(short(a) for a in args)) for name, args in kernel.calls]
    shared = mounts.MS_SHARED | MS_REC
    # in a user namespace mknod is refused: the host's nodes are bound
    dev_binds = [("mount", f"/dev/{n}", f"/dev/{n}", None, MS_BIND, None)
                 for n, _, _ in devices.DEFAULT]
    assert plan == [
        ("mount", None, "/", None, shared, None),
        # pivot_root refuses shared mounts around it: the mount holding the root, and /
        *[("mount", None, p, None, MS_PRIVATE, None)
          for p in dict.fromkeys((rootfs._mount_point_of(root), "/"))],
        ("mount", "/", "/", None, MS_BIND | MS_REC, None),
        ("mount", "proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        ("mount", "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k"),
        *dev_binds,
        ("mount", str(tmp_path / "vol"), "/data", None, MS_BIND | MS_REC, None),
        ("mount", None, "/data", None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_RDONLY, None),
        ("set_readonly_tree", "/data"),
        ("mount", None, "/data", None, MS_PRIVATE | MS_REC, None),
        ("mount", "cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID_NODEV_NOEXEC | MS_RDONLY, None),
        ("mount", "tmpfs", "/run", "tmpfs", MS_NODEV, "mode=755,size=10m"),
        ("mount", "/dev/fuse", "/dev/fuse", None, MS_BIND, None),
        ("fchdir", "/"),
        ("pivot_root", ".", "."),
        ("umount2", ".", MNT_DETACH),
        ("chdir", "/"),
        ("mount", None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, None),
        ("mount", None, "/", None, shared, None),   # the root's propagation, last
    ]
    # the default symlinks are in the root's /dev, not the host's
    assert os.readlink(tmp_path / "root/dev/ptmx") == "pts/ptmx"

