"""The container lifecycle's syscalls, in order, through the recording kernel double: the
mount plan of a root file system, and the steps of start and exec up to execve.  Nothing
reaches the kernel, so these run without root."""

import os
import shutil
import socket
import subprocess
import time

import pytest
from recording_kernel import Exited, kernel, rootfs_state  # noqa: F401 - fixtures

from ctrun import libc
from ctrun.libc import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
                        MS_RDONLY, MS_REC, MS_REMOUNT, MS_STRICTATIME)
from ctrun.namespaces import join as nsjoin
from ctrun.runtime import process, rootfs, security

NOSUID_NODEV_NOEXEC = MS_NOSUID | MS_NODEV | MS_NOEXEC



pytestmark = pytest.mark.usefixtures("rootfs_state")


def _spec(tmp_path, masked=(), readonly=()):
    for d in ("layer", "upper", "work", "root", "vol-rw", "vol-ro"):
        (tmp_path / d).mkdir()
    return {
        "root": {"path": str(tmp_path / "root"), "readonly": True},
        "hostname": "web",
        "mounts": [
            {"destination": "/data", "type": "bind", "source": str(tmp_path / "vol-rw"),
             "options": ["rbind", "rw"]},
            {"destination": "/etc/app", "type": "bind", "source": str(tmp_path / "vol-ro"),
             "options": ["rbind", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=755", "size=10m"]},
        ],
        "process": {"args": ["/bin/sh", "-c", "true"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                    "user": {"uid": 0, "gid": 0}, "noNewPrivileges": True,
                    "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]},
        "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "uts", "ipc", "network")],
                  "maskedPaths": list(masked), "readonlyPaths": list(readonly)},
        "annotations": {"run.ctrun.overlay": {"lower": [str(tmp_path / "layer")],
                                              "upper": str(tmp_path / "upper"),
                                              "work": str(tmp_path / "work")},
                        "run.ctrun.cgroup_layout": {"kind": "v2"},
                        "run.ctrun.mknod": False},
    }


def test_mount_plan_of_a_container_with_volumes_and_masked_paths(kernel, tmp_path,
                                                                 monkeypatch):
    """rootfs.prepare then rootfs.mask: / private, the overlay, the kernel file systems,
    /dev, the volumes (the :ro one made read-only down its whole tree), pivot_root into the
    new root and the old one detached, the root remounted read-only, then the masked paths
    covered and the read-only ones remounted."""
    # the container's /dev/null is bound, not made, here: hold the host's as the checked one
    monkeypatch.setattr(rootfs, "null_device",
                        lambda dir_fd, name: os.open("/dev/null", os.O_PATH | os.O_CLOEXEC))
    # paths as mask() finds them after pivot_root: here, on the host, below tmp_path
    (tmp_path / "kcore").write_text("")
    for d in ("firmware", "sys"):
        (tmp_path / d).mkdir()
    spec = _spec(tmp_path, masked=[str(tmp_path / n) for n in ("kcore", "firmware", "gone")],
                 readonly=[str(tmp_path / "sys")])
    rootfs.prepare(spec)
    rootfs.mask(spec)

    def short(arg):
        if isinstance(arg, str) and arg.startswith(str(tmp_path)):
            rel = arg[len(str(tmp_path)):]
            return rel[len("/root"):] or "/" if rel.startswith("/root") else "host:" + rel
        return arg
    plan = [(name, *(short(a) for a in args)) for name, args in kernel.calls]
    lower = f"lowerdir={tmp_path}/layer"
    dev_binds = [("mount", f"/dev/{n}", f"/dev/{n}", None, MS_BIND, None)
                 for n, _, _ in rootfs.DEVICES]
    assert plan == [
        ("mount", None, "/", None, MS_REC | MS_PRIVATE, None),
        ("mount", "overlay", "/", "overlay", 0,
         f"{lower},upperdir={tmp_path}/upper,workdir={tmp_path}/work"),
        ("mount", "proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        ("mount", "sysfs", "/sys", "sysfs", MS_RDONLY | NOSUID_NODEV_NOEXEC, None),
        ("mount", "cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID_NODEV_NOEXEC, None),
        ("mount", "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k"),
        *dev_binds,
        ("mount", "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
         "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ("mount", "shm", "/dev/shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k"),
        ("mount", "mqueue", "/dev/mqueue", "mqueue", NOSUID_NODEV_NOEXEC, None),
        ("mount", "host:/vol-rw", "/data", None, MS_BIND | MS_REC, None),
        ("mount", "host:/vol-ro", "/etc/app", None, MS_BIND | MS_REC, None),
        ("set_readonly_tree", "/etc/app"),
        ("mount", "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=10m"),
        ("fchdir", "/"),
        ("pivot_root", ".", "."),
        ("umount2", ".", MNT_DETACH),
        ("chdir", "/"),
        ("mount", None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, None),
        # mask: a file gets the null device, a directory an empty read-only tmpfs, a
        # missing path nothing
        ("mount", "/dev/null", "host:/kcore", None, MS_BIND, None),
        ("mount", "tmpfs", "host:/firmware", "tmpfs", MS_RDONLY, "size=0"),
        ("mount", "host:/sys", "host:/sys", None, MS_BIND | MS_REC, None),
        ("mount", None, "host:/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY | NOSUID_NODEV_NOEXEC,
         None),
    ]


class FakeChannel:
    """process.Channel without a peer: what is sent goes to the kernel log, recv answers
    from a script (the parent's "start")."""

    def __init__(self, log, replies):
        self.log, self.replies = log, replies
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def send(self, obj, fd=None):
        self.log.append(("send", (obj["type"],)))

    def recv(self):
        return self.replies.pop(0) if self.replies else None

    def close(self):
        self.sock.close()


def _stub_above_syscalls(kernel, monkeypatch):
    # steps with tests of their own, logged here as one step each
    kernel.stub(monkeypatch, security, "reset_signals")


# the shared tail of start and exec (process._final_exec), as security.py orders it:
# bounding set, ambient cleared, groups and ids, the capability sets kept by root,
# no_new_privs, every inherited fd closed, the cwd checked once they are, seccomp last
PRIVILEGES_TO_EXEC = [
    "reset_signals", "capbset_drop", "cap_limit", "clear_ambient_caps", "setgroups", "setgid",
    "setuid", "cap_limit", "set_no_new_privs", "close_range", "getcwd", "seccomp", "execve",
]


def _start_plan(kernel, tmp_path, monkeypatch):
    """A spec whose start process.launch runs down to the execve on the recording kernel
    (the root's and masks' steps logged as one each); (spec, its cgroup.procs file)."""
    spec = _spec(tmp_path)
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    spec["annotations"]["run.ctrun.cgroup_procs"] = [str(procs)]
    log = kernel.calls
    monkeypatch.setattr(process, "Channel", lambda sock: FakeChannel(log, [{"type": "start"}]))
    _stub_above_syscalls(kernel, monkeypatch)
    for step in ("prepare", "mask"):
        kernel.stub(monkeypatch, rootfs, step)
    kernel.stub(monkeypatch, process, "_loopback_up")
    return spec, procs


def test_start_runs_its_security_steps_in_order_and_seccomp_last(kernel, tmp_path,
                                                                 monkeypatch):
    """process.launch, followed down the intermediate and the init to the execve."""
    spec, procs = _start_plan(kernel, tmp_path, monkeypatch)
    bpf = b"\x06\x00\x00\x00\x00\x00\xff\x7f"  # one instruction: allow
    with pytest.raises(Exited):
        process.launch(spec, bpf=bpf)
    assert kernel.names()[:kernel.names().index("execve") + 1] == [
        "fork",                  # the intermediate
        "set_dumpable",          # its first step: no process of the start is ptraceable
        "cgroup_attach",         # while still host root; the init inherits the cgroup
        "unshare", "fork",       # the pid namespace, entered by the init
        "setsid", "unshare", "prepare", "mask", "sethostname", "_loopback_up",
        "setrlimit",             # rlimits before the ids change (root may still lower them)
        "fchdir",                # the cwd, resolved inside the new root
        "send",                  # "ready"; the parent answers "start"
        *PRIVILEGES_TO_EXEC,
    ]
    assert kernel.of("set_dumpable") == [(False,)]
    assert kernel.of("cgroup_attach") == [(str(procs),)]
    assert kernel.of("unshare")[0] == (libc.CLONE_NEWPID,)
    assert kernel.of("seccomp") == [(bpf, 0)]   # no SECCOMP_FILTER_FLAG_* bits
    assert kernel.of("execve")[0][:2] == ("/bin/sh", ["/bin/sh", "-c", "true"])
    # the bounding set keeps the configured capabilities only
    import prctl
    dropped = {args[0] for args in kernel.of("capbset_drop")}
    assert prctl.CAP_CHOWN not in dropped and prctl.CAP_KILL not in dropped
    assert prctl.CAP_SYS_ADMIN in dropped


@pytest.fixture
def other_namespaces():
    """A process in namespaces of its own (an unprivileged user namespace owns them)."""
    if not shutil.which("unshare"):
        pytest.skip("util-linux unshare is not installed")
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "--uts", "--ipc",
                          "--net", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{p.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.skip("this host refuses unprivileged user namespaces")
            time.sleep(0.01)
        yield p.pid
    finally:
        p.kill()
        p.wait()


def test_an_attached_start_forks_its_init_itself(kernel, tmp_path, monkeypatch):
    """process.launch(child=True) with nothing to join by path and no user namespace: the
    caller unshares the pid namespace for its next child and forks the init itself, which
    takes the intermediate's first steps (non-dumpable first, then its cgroup)."""
    spec, procs = _start_plan(kernel, tmp_path, monkeypatch)
    with pytest.raises(Exited):
        process.launch(spec, bpf=b"\x06\x00\x00\x00\x00\x00\xff\x7f", child=True)
    assert kernel.names()[:kernel.names().index("execve") + 1] == [
        "unshare", "fork",       # the pid namespace for the caller's next child: the init
        "set_dumpable", "cgroup_attach",
        "setsid", "unshare", "prepare", "mask", "sethostname", "_loopback_up",
        "setrlimit", "fchdir", "send", *PRIVILEGES_TO_EXEC,
    ]
    assert kernel.of("unshare")[0] == (libc.CLONE_NEWPID,)
    assert kernel.of("set_dumpable") == [(False,)]


def test_exec_closes_fds_before_joining_user_namespace_first_then_drops_privileges(
        kernel, tmp_path, monkeypatch, other_namespaces):
    """process._join_middle and _join_child (ctrun exec), down to the execve, in the order
    their docstring argues: non-dumpable, host fds closed while still on the host, the
    namespaces joined user first and mount last, the fork into the pid namespace, the
    cgroup, the cwd, then the privileges and seccomp."""
    _stub_above_syscalls(kernel, monkeypatch)
    ns_fds = nsjoin.open_all(other_namespaces, {"user", "mount", "uts", "ipc", "network"})
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    cg_fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    psock, csock = socket.socketpair()
    chan = FakeChannel(kernel.calls, [])
    proc = dict(_spec(tmp_path)["process"], args=["/bin/sh"])
    try:
        with pytest.raises(Exited):
            process._join_middle(chan, psock, ns_fds, [cg_fd], proc, "/", False, True, b"bpf")
    finally:
        csock.close()
        chan.close()
    assert kernel.names()[:kernel.names().index("execve") + 1] == [
        "set_dumpable", "close_range", "setns", "fork", "cgroup_attach", "setsid", "setrlimit",
        "fchdir", *PRIVILEGES_TO_EXEC,
    ]
    kinds = [args[0].split(":")[0] for args in kernel.of("setns")]
    assert kinds == ["user", "ipc", "uts", "net", "mnt"]
    assert kernel.of("cgroup_attach") == [(str(procs),)]
    # the middle's closing (before its first setns) spares the channel, the namespace and
    # the cgroup fds, and nothing else up to the largest possible fd
    before_setns = kernel.calls[:[n for n, _ in kernel.calls].index("setns")]
    ranges = [args[:2] for n, args in before_setns if n == "close_range"]
    kept = {chan.sock.fileno(), cg_fd, *(fd for _, fd in ns_fds)}
    assert ranges[-1][1] == 0xFFFFFFFF
    closed = sum(last - first + 1 for first, last in ranges)
    assert closed == 0xFFFFFFFF - 3 + 1 - len(kept)
    assert not any(first <= fd <= last for fd in kept for first, last in ranges)
