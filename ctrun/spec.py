"""Build the OCI runtime-spec (config.json) for a container: the single input of the runtime.

ctrun-specific facts that have no OCI field travel as annotations under "run.ctrun.":
the overlay layers (lower: the image's layer directories, top first; the runtime mounts the
overlay itself, inside the container's own mount namespace, so the kernel removes it with
the namespace), the cgroup's procs files, the seccomp profile name and whether a tini
reaper is bind-mounted.
"""

from .config import RLIMITS, effective_caps
from .runtime import pid1, systemd, sysvinit

TINI = "/usr/bin/tini-static"

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/proc/interrupts", "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

NAMESPACES = ["pid", "mount", "uts", "ipc", "network", "cgroup"]


def build(cfg, image_cfg, cdir, image_rootfs, cgroup_procs, privileged_devices=True,
          lxcfs=()):
    """cfg: config.Config; image_cfg: the image's defaults; cdir: the container directory;
    image_rootfs: the image's layers (ctrun.images.layers.View); lxcfs: [host file,
    container file] pairs that give the container its own /proc view
    (ctrun.runtime.lxcfs.binds)."""
    env = _merge_env(image_cfg.get("env", []), cfg.env)
    args = list(cfg.cmd) or list(image_cfg.get("cmd") or ["/bin/sh"])
    if cfg.init:
        args = ["/dev/init", "--"] + args
    uid, gid = _user(cfg.user or image_cfg.get("user", "0:0"), image_rootfs)
    caps = effective_caps(cfg)
    mounts = [
        {"destination": "/etc/hosts", "type": "bind", "source": str(cdir / "etc/hosts"),
         "options": ["rbind", "rw"]},
        {"destination": "/etc/hostname", "type": "bind", "source": str(cdir / "etc/hostname"),
         "options": ["rbind", "rw"]},
        {"destination": "/etc/resolv.conf", "type": "bind",
         "source": str(cdir / "etc/resolv.conf"), "options": ["rbind", "rw"]},
    ]
    for v in cfg.volumes:
        mounts.append({"destination": v["target"], "type": "bind", "source": v["source"],
                       "options": ["rbind", "ro" if v["readonly"] else "rw"]})
    if cfg.init:
        mounts.append({"destination": "/dev/init", "type": "bind", "source": TINI,
                       "options": ["bind", "ro"]})
    # a --userns container sees the image's layers idmapped; one made by an older ctrun
    # has a copy with shifted owners instead (its `lower` directory)
    copied = cfg.userns and (cdir / "lower").is_dir()
    lower = [str(cdir / "lower")] if copied else list(image_rootfs.dirs)
    rlimits = [{"type": "RLIMIT_" + n.upper(), "soft": s, "hard": h}
               for n, (s, h) in sorted(cfg.ulimits.items()) if n in RLIMITS]
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cfg.workdir or image_cfg.get("workdir") or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": rlimits,
            "noNewPrivileges": not cfg.privileged,
        },
        "root": {"path": str(cdir / "rootfs"), "readonly": False},
        "hostname": cfg.hostname or cfg.name,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in NAMESPACES + (["user"] if cfg.userns else [])
                           if not (t == "network" and (cfg.net or {}).get("network") == "host")],
            **({"uidMappings": [{"containerID": 0, "hostID": cfg.userns_base, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": cfg.userns_base, "size": 65536}]}
               if cfg.userns else {}),
            "maskedPaths": [] if cfg.privileged else MASKED_PATHS,
            "readonlyPaths": [] if cfg.privileged else READONLY_PATHS,
        },
        "annotations": {
            "run.ctrun.name": cfg.name,
            "run.ctrun.overlay": {"lower": lower, "upper": str(cdir / "upper"),
                                  "work": str(cdir / "work"),
                                  "idmap": bool(cfg.userns and not copied)},
            "run.ctrun.cgroup_procs": [str(p) for p in cgroup_procs],
            "run.ctrun.seccomp": None if cfg.privileged else "default",
            "run.ctrun.mknod": privileged_devices and not cfg.userns,
            "run.ctrun.userns_base": cfg.userns_base if cfg.userns else None,
            "run.ctrun.stop_signal": cfg.stop_signal or image_cfg.get("stop_signal", "SIGTERM"),
            "run.ctrun.lxcfs": [list(b) for b in lxcfs],
            # sysinfo(2) answered from the cgroup too (runtime.sysinfo), where LXCFS serves
            "run.ctrun.sysinfo": bool(lxcfs) and not cfg.privileged,
        },
    }
    init = init_of(cfg, image_cfg, image_rootfs)
    if init == pid1.SYSTEMD:
        systemd.adjust(spec, cdir)
        spec["annotations"]["run.ctrun.stop_signal"] = cfg.stop_signal or systemd.STOP_SIGNAL
    elif init == pid1.SYSVINIT:
        sysvinit.adjust(spec, cdir, cfg.cap_drop if not cfg.privileged else ())
        if cfg.stop_signal:   # the user's signal, not the runlevel request
            spec["annotations"]["run.ctrun.halt"] = None
        spec["annotations"]["run.ctrun.stop_signal"] = cfg.stop_signal or sysvinit.STOP_SIGNAL
    return spec


def init_of(cfg, image_cfg, image_rootfs):
    """Which init system (pid1.SYSTEMD, pid1.SYSVINIT or None) the container's command
    starts as PID 1; none under --init (tini is PID 1 then)."""
    if cfg.init:
        return None
    env = _merge_env(image_cfg.get("env", []), cfg.env)
    args = list(cfg.cmd) or list(image_cfg.get("cmd") or ["/bin/sh"])
    return pid1.kind(image_rootfs, args, _env_dict(env).get("PATH", ""))


def _env_dict(env):
    return dict(e.split("=", 1) for e in env)


def _merge_env(base, extra):
    out = {}
    for item in list(base) + list(extra):
        k, _, v = item.partition("=")
        out[k] = v
    if "PATH" not in out:
        out["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return [f"{k}={v}" for k, v in out.items()]


def _user(s, rootfs=None):
    """UID[:GID] as numbers; an image's user given by name (OCI "User": "nginx") is looked
    up in the image's own /etc/passwd, resolved in its merged layers (a layers.View)."""
    user, _, group = str(s or "0").partition(":")
    if user.isdigit() and (not group or group.isdigit()):
        return int(user), int(group) if group else 0
    entries = {}
    if rootfs is not None:
        from .errors import CtrunError
        try:
            for line in rootfs.read_text("/etc/passwd").splitlines():
                parts = line.split(":")
                if len(parts) >= 4:
                    entries[parts[0]] = (int(parts[2]), int(parts[3]))
        except (OSError, ValueError, CtrunError):
            pass
    if not user.isdigit() and user not in entries:
        from .errors import InvalidInput
        raise InvalidInput(f"user {user!r} of the image is not in its /etc/passwd; "
                           "give --user UID[:GID]")
    uid, gid = (int(user), 0) if user.isdigit() else entries[user]
    return uid, int(group) if group.isdigit() else gid


def __getattr__(name):
    """host_resolvers and write_etc_files moved to ctrun.network.etc (the /etc files)."""
    if name in ("host_resolvers", "write_etc_files"):
        from .network import etc
        return getattr(etc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
