"""ctrun.runtime.seccomp_oci: runtime-spec seccomp profiles, compiled and loaded for real in
forked children (the filter binds only the child), and the one-line refusals."""

import ctypes
import errno
import json
import os
import signal
import stat
from pathlib import Path

import pytest

from ctrun.errors import InvalidInput
from ctrun.runtime import seccomp_oci as so

seccomp = pytest.importorskip("seccomp")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
PR_SET_NO_NEW_PRIVS = 38
BUSYBOX = "/bin/busybox"
PODMAN_PROFILE = Path("/usr/share/containers/seccomp.json")


def _raw(name, *args):
    """syscall(2) by name, bytes passed as pointers: 0 (or the result) or the errno."""
    nr = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    if nr < 0:
        pytest.skip(f"{name} is not a syscall on this architecture")
    cargs = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    ret = _libc.syscall(ctypes.c_long(nr), *cargs)
    return -ctypes.get_errno() if ret == -1 else ret


def _confine(program):
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    so.install(program)


def _in_child(program, probe):
    """Fork, load `program`, run probe() and send its JSON back: (result, wait status).

    result is None when the child died before writing (a kill action)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            signal.alarm(30)  # a wedged child dies instead of hanging the run
            _confine(program)
            out = json.dumps({"ok": probe()})
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            out = json.dumps({"error": repr(e)})
        try:
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = b"".join(iter(lambda: os.read(r, 65536), b""))
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if not data:
        return None, status
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result["ok"], status


def _exec_in_child(program, argv, cwd):
    """Fork, load `program`, exec argv: (exit code, stderr text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 2)
            os.chdir(cwd)
            signal.alarm(30)
            _confine(program)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(w)
    try:
        err = b"".join(iter(lambda: os.read(r, 65536), b""))
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err.decode(errors="replace")


def _rule(names, action="SCMP_ACT_ERRNO", **extra):
    return {"names": names, "action": action, **extra}


def _arg(index, value, op="SCMP_CMP_EQ", **extra):
    return {"index": index, "value": value, "op": op, **extra}


def test_allow_by_default_with_errno_and_argument_rules(tmp_path):
    target = tmp_path / "f"
    target.write_text("x")
    target.chmod(0o600)
    program = so.compile_spec({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            _rule(["mkdir"]),  # errnoRet unset: EPERM
            _rule(["chmod"], errnoRet=1, args=[_arg(1, 0o777)]),
            _rule(["rmdir"], errnoRet=errno.EROFS),
            _rule(["not_a_syscall_anywhere", "getppid"], errnoRet=errno.ENOTSUP),
        ]})
    made = tmp_path / "made"
    kept = tmp_path / "kept"
    kept.mkdir()

    def probe():
        return {
            "mkdir": _raw("mkdir", bytes(made), 0o755),
            "chmod_777": _raw("chmod", bytes(target), 0o777),
            "chmod_640": _raw("chmod", bytes(target), 0o640),
            "rmdir": _raw("rmdir", bytes(kept)),
            "getppid": _raw("getppid"),
            "getpid": _raw("getpid"),
        }

    got, status = _in_child(program, probe)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got["mkdir"] == -errno.EPERM and not made.exists()
    assert got["chmod_777"] == -errno.EPERM
    assert got["chmod_640"] == 0 and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert got["rmdir"] == -errno.EROFS and kept.is_dir()
    assert got["getppid"] == -errno.ENOTSUP  # the unknown name beside it was skipped
    assert got["getpid"] > 0


def test_conditions_on_distinct_arguments_all_hold_on_one_argument_any():
    program = so.compile_spec({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            # dup3(0, 99, 0) only: both conditions must hold
            _rule(["dup3"], args=[_arg(0, 0), _arg(1, 99)]),
            # runc splits two tests of one argument into alternatives
            _rule(["dup3"], errnoRet=errno.EXDEV, args=[_arg(1, 97), _arg(1, 96)]),
        ]})

    def probe():
        return {k: _raw("dup3", old, new, 0) for k, (old, new) in {
            "0_99": (0, 99), "0_98": (0, 98), "1_99": (1, 99),
            "1_97": (1, 97), "1_96": (1, 96)}.items()}

    got, _ = _in_child(program, probe)
    assert got["0_99"] == -errno.EPERM
    assert got["0_98"] == 98 and got["1_99"] == 99
    assert got["1_97"] == -errno.EXDEV and got["1_96"] == -errno.EXDEV


def test_masked_eq_reads_value_as_the_mask():
    program = so.compile_spec({
        "defaultAction": "SCMP_ACT_ALLOW",
        # dup3 whose new fd has bit 6 set (64..127): value is the mask, valueTwo the datum
        "syscalls": [_rule(["dup3"], args=[_arg(1, 0x40, "SCMP_CMP_MASKED_EQ", valueTwo=0x40)])]})

    got, _ = _in_child(program, lambda: [_raw("dup3", 0, 70, 0), _raw("dup3", 0, 50, 0)])
    assert got == [-errno.EPERM, 50]


def test_kill_process_and_trace_actions():
    kill = so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [_rule(["getppid"], "SCMP_ACT_KILL_PROCESS")]})
    got, status = _in_child(kill, lambda: _raw("getppid"))
    assert got is None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS

    # no tracer: the kernel answers ENOSYS without running the call
    trace = so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW",
                             "syscalls": [_rule(["getppid"], "SCMP_ACT_TRACE")]})
    got, _ = _in_child(trace, lambda: _raw("getppid"))
    assert got == -errno.ENOSYS


def test_flags_go_to_seccomp_and_the_filter_still_holds():
    program = so.compile_spec({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                  "SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls": [_rule(["getppid"])]})
    assert program.flags == 2 | 4
    assert so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW", "flags": []}).flags == 0
    # no flags key at all: runc's default, speculative store bypass left as the task set it
    assert so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW"}).flags == 4

    def probe():
        with open("/proc/self/status") as f:
            mode = [ln.split()[1] for ln in f if ln.startswith("Seccomp:")]
        return [_raw("getppid"), mode]

    got, _ = _in_child(program, probe)
    assert got == [-errno.EPERM, ["2"]]


# what `busybox true` (static) calls, and what python calls between the filter and execve
BUSYBOX_TRUE = ["execve", "brk", "arch_prctl", "set_tid_address", "set_robust_list", "rseq",
                "prlimit64", "readlink", "getrandom", "mprotect", "getuid", "prctl",
                "exit_group", "exit", "write", "rt_sigprocmask", "rt_sigaction"]


@pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed")
def test_errno_default_allows_only_the_listed_calls(tmp_path):
    program = so.compile_spec({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EROFS,
        "syscalls": [_rule(BUSYBOX_TRUE, "SCMP_ACT_ALLOW")]})
    assert _exec_in_child(program, [BUSYBOX, "true"], tmp_path) == (0, "")
    code, err = _exec_in_child(program, [BUSYBOX, "mkdir", "d"], tmp_path)
    # mkdir is not listed: it fails with the default errno and nothing is made
    assert code != 0 and "Read-only file system" in err, err
    assert not (tmp_path / "d").exists()


def _from_containers_profile(profile, caps):
    """The runtime-spec object podman builds from a containers/common profile for a
    container holding `caps` (its includes/excludes resolved for this architecture)."""
    go_arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    native = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}.get(go_arch)
    if native is None:
        pytest.skip("the profile test knows x86_64 and aarch64 only")
    arches = [native] + next((m["subArchitectures"] for m in profile["archMap"]
                              if m["architecture"] == native), [])
    syscalls = []
    for rule in profile["syscalls"]:
        inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
        if (inc.get("arches") and go_arch not in inc["arches"]
                or inc.get("caps") and not set(inc["caps"]) <= caps
                or go_arch in (exc.get("arches") or ())
                or set(exc.get("caps") or ()) & caps):
            continue
        syscalls.append({k: rule[k] for k in ("names", "action", "errnoRet", "args")
                         if rule.get(k) is not None})
    return {"defaultAction": profile["defaultAction"],
            "defaultErrnoRet": profile.get("defaultErrnoRet"),
            "architectures": arches, "syscalls": syscalls}


@pytest.mark.skipif(not PODMAN_PROFILE.exists(), reason="no containers seccomp.json here")
def test_podmans_default_profile_compiles_and_holds(tmp_path):
    spec = _from_containers_profile(json.loads(PODMAN_PROFILE.read_text()), {"CAP_CHOWN"})
    listed = {n for rule in spec["syscalls"] for n in rule["names"]}
    assert "add_key" not in listed and "chroot" in listed  # the shape this test relies on
    chroot_err = next(r.get("errnoRet", errno.EPERM) for r in spec["syscalls"]
                      if "chroot" in r["names"])
    program = so.compile_spec(spec)

    def probe():
        return {
            "getpid": _raw("getpid"),
            "add_key": _raw("add_key", 0, 0, 0, 0, 0),  # unlisted: the default errno
            "chroot": _raw("chroot", bytes(tmp_path)),
            "netlink_route": _raw("socket", 16, 3, 0),  # AF_NETLINK, SOCK_RAW
            "netlink_audit": _raw("socket", 16, 3, 9),  # without CAP_AUDIT_WRITE: EINVAL
        }

    got, _ = _in_child(program, probe)
    assert got["getpid"] > 0
    assert got["add_key"] == -spec["defaultErrnoRet"]
    assert got["chroot"] == -chroot_err
    assert got["netlink_route"] >= 0
    assert got["netlink_audit"] == -errno.EINVAL
    # an x86 (int 0x80) call is filtered by the profile too, not killed as a foreign ABI
    assert len(program.bpf) > len(so.compile_spec(dict(spec, architectures=[])).bpf)


def test_no_profile_is_no_filter():
    assert so.compile_spec(None) is None
    assert so.compile_spec({}) is None


def test_programs_are_not_cached():
    spec = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["getppid"])]}
    first = so.compile_spec(spec)
    spec["syscalls"][0]["errnoRet"] = errno.EIO
    assert so.compile_spec(spec).bpf != first.bpf


@pytest.mark.parametrize("obj, message", [
    ("x", "linux.seccomp must be an object, not 'x'"),
    ({"syscalls": [_rule(["getppid"])]},
     "linux.seccomp.defaultAction is missing; use one of SCMP_ACT_KILL,"),
    ({"defaultAction": "SCMP_ACT_FOO"},
     "linux.seccomp.defaultAction 'SCMP_ACT_FOO' is not a seccomp action; use one of "
     "SCMP_ACT_KILL,"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 5},
     "linux.seccomp.defaultErrnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE; "
     "remove it"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1},
     "linux.seccomp.defaultErrnoRet '-1' is not an integer from 0 to 65535"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"},
     "linux.seccomp.defaultAction SCMP_ACT_NOTIFY is not supported by ctrun"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]},
     "linux.seccomp.architectures[0] 'SCMP_ARCH_VAX' is not a seccomp architecture; use one "
     "of SCMP_ARCH_X86,"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": "SCMP_ARCH_X86"},
     "linux.seccomp.architectures must be a list, not 'SCMP_ARCH_X86'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]},
     "linux.seccomp.flags[0] 'SECCOMP_FILTER_FLAG_NOPE' is not a seccomp filter flag"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]},
     "linux.seccomp.flags[0] SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a seccomp notify "
     "listener"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"},
     "linux.seccomp.listenerPath is not supported by ctrun (it has no seccomp notify agent); "
     "remove it from config.json"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "listenerMetadata": "x"},
     "linux.seccomp.listenerMetadata is not supported by ctrun"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"]), _rule(["b"]), _rule(["c"]),
                                                      _rule(["d"], "SCMP_ACT_FOO")]},
     "linux.seccomp.syscalls[3].action 'SCMP_ACT_FOO' is not a seccomp action; use one of "),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"], "SCMP_ACT_NOTIFY")]},
     "linux.seccomp.syscalls[0].action SCMP_ACT_NOTIFY is not supported by ctrun"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"], "SCMP_ACT_LOG", errnoRet=1)]},
     "linux.seccomp.syscalls[0].errnoRet is only valid with SCMP_ACT_ERRNO"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule([])]},
     "linux.seccomp.syscalls[0].names must be a non-empty list of syscall names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]},
     "linux.seccomp.syscalls[0].names must be a non-empty list"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["mkdir"]},
     "linux.seccomp.syscalls[0] must be an object, not 'mkdir'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"], args=[_arg(6, 0)])]},
     "linux.seccomp.syscalls[0].args[0].index '6' is not an integer from 0 to 5"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"], args=[_arg(0, 1 << 64)])]},
     "linux.seccomp.syscalls[0].args[0].value '18446744073709551616' is not an integer from 0 "
     "to 18446744073709551615"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"], args=[_arg(0, True)])]},
     "linux.seccomp.syscalls[0].args[0].value 'True' is not an integer"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"], args=[_arg(0, 1, "LIKE")])]},
     "linux.seccomp.syscalls[0].args[0].op 'LIKE' is not a seccomp operator; use one of "
     "SCMP_CMP_NE,"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [_rule(["a"], args=[{"index": 0,
                                                                          "value": 1}])]},
     "linux.seccomp.syscalls[0].args[0].op is missing"),
])
def test_refusals_are_one_line_naming_the_field(obj, message):
    with pytest.raises(InvalidInput) as e:
        so.compile_spec(obj)
    text = str(e.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_a_rule_libseccomp_refuses_names_the_rule():
    # one call, one condition, two actions: libseccomp refuses the second
    with pytest.raises(InvalidInput) as e:
        so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            _rule(["getppid"], args=[_arg(0, 1)]),
            _rule(["getppid"], "SCMP_ACT_KILL", args=[_arg(0, 1)])]})
    assert str(e.value) == ("linux.seccomp.syscalls[1] ('getppid'): libseccomp refused the "
                            "rule (File exists); fix or remove it")


def test_an_architecture_of_the_other_byte_order_is_refused():
    other = "SCMP_ARCH_S390X" if os.uname().machine != "s390x" else "SCMP_ARCH_X86_64"
    with pytest.raises(InvalidInput) as e:
        so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [other]})
    assert str(e.value) == (f"linux.seccomp.architectures[0] {other} cannot share a filter "
                            "with this host's architecture (Numerical argument out of domain); "
                            "remove it")
    assert other not in so.features()["archs"]


def test_a_rule_repeating_the_default_action_is_dropped():
    base = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "syscalls": [_rule(["getppid"], "SCMP_ACT_ALLOW")]}
    same = dict(base, syscalls=base["syscalls"] + [_rule(["mkdir"], errnoRet=1)])
    assert so.compile_spec(same).bpf == so.compile_spec(base).bpf


def test_features_lists_what_compiles():
    f = so.features()
    assert "SCMP_ACT_NOTIFY" not in f["actions"] and "SCMP_ACT_KILL_PROCESS" in f["actions"]
    for arch in f["archs"]:
        assert so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch]})
    for flag in f["supportedFlags"]:
        assert so.compile_spec({"defaultAction": "SCMP_ACT_ALLOW", "flags": [flag]})
