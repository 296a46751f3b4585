"""The default seccomp filter, loaded for real in forked children (needs root)."""

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from ctrun import libc
from ctrun.errors import HostUnsupported
from ctrun.runtime import seccomp as sc
from ctrun.runtime import seccomp_profile as profile

seccomp = pytest.importorskip("seccomp")
prctl = pytest.importorskip("prctl")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _nr(name):
    return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)


def _raw(name, *args):
    """syscall(2) by name: 0 or the errno it failed with."""
    ret = _libc.syscall(ctypes.c_long(_nr(name)), *(ctypes.c_long(a) for a in args))
    return ctypes.get_errno() if ret == -1 else 0


def _in_filtered_child(bpf, probe):
    """Run probe() in a forked child under the filter; return its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            signal.alarm(60)  # a wedged child dies instead of hanging the run
            prctl.set_no_new_privs(1)
            sc.install(bpf)
            out = {"ok": probe()}
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            out = {"error": repr(e)}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    try:
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child died: {status:#x}"
    result = json.loads(b"".join(chunks))
    assert "error" not in result, result["error"]
    return result["ok"]


def _errno_of(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno


def _spawn_true():
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(127)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _thread_runs():
    seen = []
    t = threading.Thread(target=seen.append, args=(1,))
    t.start()
    t.join()
    return seen == [1]


def _probe_default():
    return {
        "getpid": os.getpid() > 0,
        # NULL arguments: without the filter these fail with EFAULT/EINVAL, never succeed
        "add_key": _raw("add_key", 0, 0, 0, 0, 0),
        "keyctl": _raw("keyctl", 0, -1, 0),  # KEYCTL_GET_KEYRING_ID, thread keyring, no create
        "bpf": _raw("bpf", -1, 0, 0),
        "perf_event_open": _raw("perf_event_open", 0, 0, -1, -1, 0),
        "io_uring_setup": _raw("io_uring_setup", 0, 0),
        "clone3": _raw("clone3", 0, 0),
        "unshare_uts": _errno_of(lambda: libc.unshare(libc.CLONE_NEWUTS)),
        "unshare_files": _errno_of(lambda: libc.unshare(0x400)),  # CLONE_FILES: no namespace
        "mount": _errno_of(lambda: libc.mount("none", "/nonexistent/ctrun-test", "tmpfs")),
        "personality_query": _raw("personality", 0xFFFFFFFF),
        "personality_bsd": _raw("personality", 0x6),
        "socket_unix": _raw("socket", 1, 1, 0),
        "socket_vsock": _raw("socket", 40, 1, 0),
        "socket_vsock_highbits": _raw("socket", (1 << 32) | 40, 1, 0),
        "fork_exec_true": _spawn_true(),
        "subprocess_true": subprocess.run(["/bin/true"]).returncode,
        "thread": _thread_runs(),
    }


@pytest.fixture(scope="module")
def default_bpf():
    return sc.compile_bpf([])


def test_default_filter_in_child(default_bpf):
    got = _in_filtered_child(default_bpf, _probe_default)
    assert got["getpid"]
    assert got["add_key"] == errno.EPERM
    assert got["keyctl"] == errno.EPERM
    assert got["bpf"] == errno.EPERM
    assert got["perf_event_open"] == errno.EPERM
    assert got["io_uring_setup"] == errno.EPERM
    assert got["clone3"] == errno.ENOSYS
    assert got["unshare_uts"] == errno.EPERM
    assert got["unshare_files"] == 0
    assert got["mount"] == errno.EPERM
    assert got["personality_query"] == 0
    assert got["personality_bsd"] == errno.EPERM
    assert got["socket_unix"] == 0
    assert got["socket_vsock"] == errno.EPERM
    assert got["socket_vsock_highbits"] == errno.EPERM
    assert got["fork_exec_true"] == 0
    assert got["subprocess_true"] == 0
    assert got["thread"] is True


def test_userland_runs_under_filter(default_bpf):
    def confine():
        prctl.set_no_new_privs(1)
        sc.install(default_bpf)

    script = ("set -e; ls -la / >/dev/null; id -u >/dev/null; date >/dev/null; "
              "cat /etc/passwd | sort | sha256sum >/dev/null; ps -e >/dev/null; "
              "d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; echo x >$d/f; ln -s f $d/l; "
              "chmod 600 $d/f; mv $d/f $d/g; tar -cf $d/t.tar -C $d g; "
              "/usr/bin/python3 -c 'import threading, subprocess, socket; "
              "t = threading.Thread(target=print); t.start(); t.join(); "
              "subprocess.run([\"true\"], check=True); socket.socket().close()'")
    out = subprocess.run(["/bin/sh", "-c", script], preexec_fn=confine,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.root
def test_cap_sys_admin_lifts_namespace_rules():
    bpf = sc.compile_bpf(["CAP_SYS_ADMIN"])

    def probe():
        return {
            # a new UTS namespace for this throw-away child only
            "unshare_uts": _errno_of(lambda: libc.unshare(libc.CLONE_NEWUTS)),
            # clone3 now reaches the kernel, which rejects the NULL argument
            "clone3": _raw("clone3", 0, 0),
            "add_key": _raw("add_key", 0, 0, 0, 0, 0),
        }

    got = _in_filtered_child(bpf, probe)
    assert got["unshare_uts"] == 0
    assert got["clone3"] not in (0, errno.ENOSYS, errno.EPERM)
    assert got["add_key"] == errno.EPERM  # never allowed


@pytest.mark.root
def test_install_without_no_new_privs_explains(default_bpf):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        msg = "installed"
        try:
            os.close(r)
            os.setresuid(65534, 65534, 65534)  # no CAP_SYS_ADMIN, no no_new_privs
            sc.install(default_bpf)
        except OSError as e:
            msg = str(e)
        except BaseException as e:  # noqa: BLE001
            msg = repr(e)
        finally:
            os.write(w, msg.encode())
            os._exit(0)
    os.close(w)
    try:
        msg = os.read(r, 4096).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert "no_new_privs" in msg


def test_bpf_for_caches(tmp_path, monkeypatch):
    first = sc.bpf_for(["CAP_CHOWN"], tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("seccomp-") and files[0].endswith(".bpf")
    assert first and len(first) % 8 == 0

    def boom(*a, **k):
        raise AssertionError("recompiled although cached")

    monkeypatch.setattr(sc, "compile_bpf", boom)
    # caps the profile ignores share the cached program
    assert sc.bpf_for([], tmp_path) == first
    assert sc.bpf_for(["chown", "CAP_KILL"], tmp_path) == first
    monkeypatch.undo()

    admin = sc.bpf_for(["CAP_SYS_ADMIN"], tmp_path)
    assert admin != first
    assert len(list(tmp_path.iterdir())) == 2  # no temporary files left behind


def test_cached_load_does_not_import_binding(tmp_path):
    sc.bpf_for([], tmp_path)
    code = ("import sys; from pathlib import Path; from ctrun.runtime import seccomp as sc; "
            f"b = sc.bpf_for([], Path({str(tmp_path)!r})); "
            "assert 'seccomp' not in sys.modules, 'binding imported'; print(len(b))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0


def test_missing_binding_is_host_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "seccomp", None)  # makes `import seccomp` fail
    with pytest.raises(HostUnsupported, match="apt-get install python3-seccomp"):
        sc.compile_bpf([])


def test_compiles_for_other_arch():
    assert len(sc.compile_bpf(list(profile.CAP_GATED), arch_note="aarch64")) % 8 == 0


def test_profile_names_are_real_and_dangerous_ones_absent():
    listed = set(profile.ALLOW) | set(profile.ARG_RULES) | set(profile.ERRNO_RULES)
    for names in profile.CAP_GATED.values():
        listed.update(names)
    arches = [seccomp.Arch.X86_64, seccomp.Arch.AARCH64, seccomp.Arch.X86, seccomp.Arch.ARM]
    typos = [n for n in listed if n not in profile.UNIFIED_NR
             and all(seccomp.resolve_syscall(a, n) == -1 for a in arches)]
    assert not typos
    for n, num in profile.UNIFIED_NR.items():
        known = seccomp.resolve_syscall(seccomp.Arch.X86_64, n)
        assert known in (-1, num), n
    never = {"kexec_load", "kexec_file_load", "add_key", "request_key", "keyctl",
             "userfaultfd", "open_by_handle_at", "io_uring_setup", "io_uring_enter",
             "io_uring_register", "vm86", "vm86old", "nfsservctl", "get_kernel_syms"}
    assert not never & listed
    gated_only = {"init_module", "finit_module", "delete_module", "bpf", "perf_event_open",
                  "swapon", "swapoff", "acct", "lookup_dcookie", "quotactl", "quotactl_fd",
                  "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
                  "mount_setattr", "syslog", "mount", "setns", "pivot_root"}
    assert not gated_only & set(profile.ALLOW)
    assert len(set(profile.ALLOW)) == len(profile.ALLOW), "duplicate names in ALLOW"


def test_terminal_injection_ioctls_are_refused(default_bpf):
    """TIOCSTI and TIOCLINUX get EPERM, also with bits set above the 32 the kernel reads;
    other ioctls still reach the terminal."""
    import pty

    def probe():
        master, slave = pty.openpty()
        try:
            c = ctypes.c_char(b"\n")
            ioctl = lambda req: _raw("ioctl", slave, req, ctypes.addressof(c))  # noqa: E731
            return {"tiocsti": ioctl(0x5412), "tiocsti_hibits": ioctl((1 << 32) | 0x5412),
                    "tioclinux": ioctl(0x541C), "tioclinux_hibits": ioctl((7 << 40) | 0x541C),
                    "tiocgwinsz": _errno_of(lambda: __import__("fcntl").ioctl(
                        slave, 0x5413, b"\0" * 8)),
                    "fionread": ioctl(0x541B)}
        finally:
            os.close(master)
            os.close(slave)

    got = _in_filtered_child(default_bpf, probe)
    assert got == {"tiocsti": errno.EPERM, "tiocsti_hibits": errno.EPERM,
                   "tioclinux": errno.EPERM, "tioclinux_hibits": errno.EPERM,
                   "tiocgwinsz": 0, "fionread": 0}


def test_blocks_outside_cover_all_but_the_excluded():
    blocks = sc._blocks_outside([0x5412, 0x541C], 32)
    for x in (0, 1, 0x5411, 0x5412, 0x5413, 0x541B, 0x541C, 0x541D, 0xFFFFFFFF, 0x80045430):
        matches = sum((x & mask) == value for mask, value in blocks)
        assert matches == (0 if x in (0x5412, 0x541C) else 1), hex(x)
    assert sc._blocks_outside([], 32) == [(0, 0)]
