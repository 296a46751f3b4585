"""What ctrun-oci supports, as the runtime-spec's features document says it (`ctrun-oci
features`), and the default config.json of `ctrun-oci spec`."""

import json
import os

from .. import __version__
from ..errors import AlreadyExists


def _capabilities():
    """The names the runtime honours (runtime.security's table) that this kernel has."""
    from .. import libc
    from ..runtime.security import CAPS
    return sorted(n for n, i in CAPS.items() if i <= libc.cap_last_cap())


def document():
    from .. import namespaces
    from ..cgroups.detect import detect
    from ..runtime import mounts, seccomp_oci
    from . import hooks, vm
    layout = detect()
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": list(hooks.PHASES),
        # what runtime.mounts turns into mount(2) flags; any other option is passed to the
        # file system as data, which the document cannot promise
        "mountOptions": sorted(mounts.FLAGS.keys() | mounts.PROPAGATION.keys()),
        "linux": {
            "namespaces": sorted(namespaces.KINDS),
            "capabilities": _capabilities(),
            "cgroup": {"v1": layout.kind != "v2", "v2": bool(layout.v2),
                       "systemd": os.path.isdir("/run/systemd/system"),
                       "systemdUser": False, "rdma": False},
            "seccomp": seccomp_oci.features(),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
        },
        "annotations": {"run.ctrun.version": __version__,
                        "run.ctrun.modes": "container,vm" if vm.available() else "container"},
    }


def default_spec():
    """A config.json for a bundle whose root file system is ./rootfs, as `runc spec`
    writes one: sh on a terminal, a read-only root, the usual /proc /dev /sys mounts."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "ctrun",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount",
                                                 "cgroup")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


def write_default_spec(bundle, rootless=False):
    from ..errors import HostUnsupported
    if rootless:
        raise HostUnsupported("ctrun-oci runs as root only; drop --rootless")
    path = os.path.join(os.path.abspath(bundle), "config.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise AlreadyExists(f"{path!r} exists; remove it first") from None
    with os.fdopen(fd, "w") as f:
        json.dump(default_spec(), f, indent=2)
        f.write("\n")
