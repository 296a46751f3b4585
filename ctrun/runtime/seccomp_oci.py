"""Compile an OCI runtime-spec `linux.seccomp` object into a seccomp BPF program.

The program is built with libseccomp (Debian's python3-seccomp, as for ctrun's own
profile) and exported as bytes, the form ctrun.runtime.seccomp.install loads.  Where
the runtime-spec is silent the semantics are runc's, since clients write profiles for
it: SCMP_ACT_KILL kills the thread, ERRNO and TRACE return EPERM unless errnoRet says
otherwise, a rule whose action is the default one is dropped (libseccomp refuses it),
a syscall name libseccomp does not know is skipped (the profile names calls newer than
this host), several conditions in one rule must all hold unless two test the same
argument (libseccomp cannot AND those: each becomes a rule of its own), and no `flags`
at all means SECCOMP_FILTER_FLAG_SPEC_ALLOW where the kernel knows it.

ctrun-oci keeps what this compiles in its state root's cache, by the profile's whole text
(ctrun.oci.verbs), so a client's default profile is compiled once.
"""

import os
import re
from typing import NamedTuple

from ctrun import libc
from ctrun.errors import InvalidInput, quote
from ctrun.runtime.seccomp import export_bpf, import_seccomp

FIELD = "linux.seccomp"

# spec action -> name of the binding's action (ERRNO and TRACE take a return code)
_ACTIONS = {
    "SCMP_ACT_KILL": "KILL",  # libseccomp's KILL is KILL_THREAD
    "SCMP_ACT_KILL_THREAD": "KILL",
    "SCMP_ACT_KILL_PROCESS": "KILL_PROCESS",
    "SCMP_ACT_TRAP": "TRAP",
    "SCMP_ACT_ERRNO": "ERRNO",
    "SCMP_ACT_TRACE": "TRACE",
    "SCMP_ACT_ALLOW": "ALLOW",
    "SCMP_ACT_LOG": "LOG",
}
ACTIONS = tuple(_ACTIONS)
_RETURNING = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
EPERM = 1

OPERATORS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE",
             "SCMP_CMP_EQ": "EQ", "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT",
             "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}

# the runtime-spec's names; a name the installed binding lacks is refused when used
ARCHES = ("SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
          "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
          "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
          "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
          "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
          "SCMP_ARCH_LOONGARCH64")

# The filter flags go to seccomp(2) when the program is loaded (an exported program
# carries none; they are what libseccomp's CTL_LOG and CTL_SSB attributes would set).
# TSYNC is 0: the init installs the filter while single-threaded, so there is nothing
# to synchronise (runc ignores it too).
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 0, "SECCOMP_FILTER_FLAG_LOG": 2,
         "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}
_LISTENER_ONLY = {"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"}
_SPEC_ALLOW = FLAGS["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]

_MAX_ARGS = 6
_U64 = (1 << 64) - 1
_RET_DATA = 0xffff  # errno travels in SECCOMP_RET_DATA's 16 bits


class Program(NamedTuple):
    """A compiled profile: the BPF program and the SECCOMP_FILTER_FLAG_* bits to load it with."""

    bpf: bytes
    flags: int


def compile_spec(obj, field=FIELD):
    """The Program for the runtime-spec seccomp object `obj`, or None when it asks for no
    filter (absent, or neither a default action nor a syscall, as runc reads it).

    Every refusal is an InvalidInput naming the field."""
    if obj is None:
        return None
    _need(isinstance(obj, dict), f"{field} must be an object, not {quote(obj)}")
    for key in ("listenerPath", "listenerMetadata"):
        if obj.get(key):
            raise InvalidInput(f"{field}.{key} is not supported by ctrun (it has no seccomp "
                               "notify agent); remove it from config.json")
    if not obj.get("defaultAction") and not obj.get("syscalls"):
        return None
    flags = _flags(obj, field)
    seccomp = import_seccomp()
    default = _action(seccomp, obj.get("defaultAction"), obj, "defaultErrnoRet",
                      f"{field}.defaultAction", f"{field}.defaultErrnoRet")
    filt = seccomp.SyscallFilter(default)
    arches = _list(obj, "architectures", field)
    for i, name in enumerate(arches):
        _add_arch(seccomp, filt, name, f"{field}.architectures[{i}]")
    syscalls = _list(obj, "syscalls", field)
    if len(syscalls) > 32:
        # a binary tree of the syscalls; libseccomp 2.5 misbuilds it for an empty
        # filter, hence the floor (runc's); an older libseccomp has only the list
        try:
            filt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
        except (AttributeError, RuntimeError, ValueError):
            pass
    for i, rule in enumerate(syscalls):
        _add(seccomp, filt, default, rule, f"{field}.syscalls[{i}]")
    return Program(export_bpf(filt), flags)


def install(program):
    """Load a compiled Program on the calling thread, with its flags (no_new_privs first,
    as for ctrun.runtime.seccomp.install)."""
    libc.load_seccomp_bpf(program.bpf, program.flags)


def features():
    """The `linux.seccomp` part of the runtime-spec features document."""
    seccomp = import_seccomp()
    return {
        "enabled": True,
        "actions": sorted(ACTIONS),
        "operators": sorted(OPERATORS),
        "archs": sorted(a for a in ARCHES if _arch_usable(seccomp, a)),
        "knownFlags": sorted(FLAGS),
        "supportedFlags": sorted(n for n, bit in FLAGS.items()
                                 if not bit or libc.seccomp_flag_supported(bit)),
    }


def _arch_usable(seccomp, name):
    try:
        _add_arch(seccomp, seccomp.SyscallFilter(seccomp.ALLOW), name, "")
    except InvalidInput:
        return False
    return True


def _need(ok, message):
    if not ok:
        raise InvalidInput(message)


def _list(obj, key, field):
    value = obj.get(key)
    if value is None:
        return []
    _need(isinstance(value, list), f"{field}.{key} must be a list, not {quote(value)}")
    return value


def _uint(value, field, top):
    _need(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top,
          f"{field} {quote(value)} is not an integer from 0 to {top}")
    return value


def _one_of(value, known, field, what):
    _need(isinstance(value, str) and value in known,
          f"{field} {quote(value)} is not a seccomp {what}; use one of {', '.join(known)}")
    return value


def _flags(obj, field):
    names = obj.get("flags")
    if names is None:  # unset, not empty: runc's default
        return _SPEC_ALLOW if libc.seccomp_flag_supported(_SPEC_ALLOW) else 0
    flags = 0
    for i, name in enumerate(_list(obj, "flags", field)):
        where = f"{field}.flags[{i}]"
        if name in _LISTENER_ONLY:
            raise InvalidInput(f"{where} {name} needs a seccomp notify listener, which ctrun "
                               "does not support; remove it")
        bit = FLAGS[_one_of(name, tuple(FLAGS), where, "filter flag")]
        _need(not bit or libc.seccomp_flag_supported(bit),
              f"{where} {name} is not supported by this kernel; remove it")
        flags |= bit
    return flags


def _add_arch(seccomp, filt, name, field):
    _one_of(name, ARCHES, field, "architecture")
    arch = getattr(seccomp.Arch, name[len("SCMP_ARCH_"):], None)
    _need(arch is not None, f"{field} {name} is not supported by this host's libseccomp; "
                            "remove it")
    if filt.exist_arch(arch):  # the native one is there from the start
        return
    try:
        filt.add_arch(arch)
    except RuntimeError as e:
        # EDOM: one filter holds one byte order (and word size for the arguments)
        raise InvalidInput(f"{field} {name} cannot share a filter with this host's "
                           f"architecture ({_reason(e)}); remove it") from None


def _action(seccomp, name, obj, ret_key, field, ret_field):
    """The binding's action for the spec action `name`, with obj[ret_key] as its errno."""
    if name == "SCMP_ACT_NOTIFY":
        raise InvalidInput(f"{field} SCMP_ACT_NOTIFY is not supported by ctrun (it has no "
                           "seccomp notify agent); use another action")
    if name is None:
        raise InvalidInput(f"{field} is missing; use one of {', '.join(ACTIONS)}")
    kind = getattr(seccomp, _ACTIONS[_one_of(name, ACTIONS, field, "action")])
    ret = obj.get(ret_key)
    if name not in _RETURNING:
        _need(ret is None, f"{ret_field} is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE; "
                           "remove it")
        return kind
    return kind(EPERM if ret is None else _uint(ret, ret_field, _RET_DATA))


def _add(seccomp, filt, default, rule, field):
    _need(isinstance(rule, dict), f"{field} must be an object, not {quote(rule)}")
    names = rule.get("names")
    _need(isinstance(names, list) and names and all(isinstance(n, str) and n for n in names),
          f"{field}.names must be a non-empty list of syscall names")
    action = _action(seccomp, rule.get("action"), rule, "errnoRet",
                     f"{field}.action", f"{field}.errnoRet")
    conditions, indexes = [], []
    for j, arg in enumerate(_list(rule, "args", field)):
        conditions.append(_condition(seccomp, arg, f"{field}.args[{j}]"))
        indexes.append(arg["index"])
    if action == default:
        return  # libseccomp refuses a rule that changes nothing
    # libseccomp ANDs conditions on distinct arguments only: two on one argument
    # become alternatives, each a rule of its own, as runc does
    groups = ([[c] for c in conditions] if len(set(indexes)) < len(indexes)
              else [conditions])
    for name in names:
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1:
            continue  # unknown to libseccomp: newer than this host, or another OS's
        for group in groups:
            try:
                filt.add_rule(action, name, *group)
            except (RuntimeError, ValueError) as e:
                raise InvalidInput(f"{field} ({quote(name)}): libseccomp refused the rule "
                                   f"({_reason(e)}); fix or remove it") from None


def _condition(seccomp, arg, field):
    _need(isinstance(arg, dict), f"{field} must be an object, not {quote(arg)}")
    for key in ("index", "value", "op"):
        _need(key in arg, f"{field}.{key} is missing")
    index = _uint(arg["index"], f"{field}.index", _MAX_ARGS - 1)
    op = getattr(seccomp, OPERATORS[_one_of(arg["op"], tuple(OPERATORS), f"{field}.op",
                                            "operator")])
    value = _uint(arg["value"], f"{field}.value", _U64)
    value_two = _uint(arg.get("valueTwo", 0), f"{field}.valueTwo", _U64)
    # MASKED_EQ reads (mask, value): the spec's value is the mask, as in libseccomp
    return seccomp.Arg(index, op, value, value_two)


def _reason(exc):
    """'File exists' for the binding's 'Library error (errno = -17)'."""
    m = re.search(r"errno = -?(\d+)", str(exc))
    return os.strerror(int(m.group(1))) if m else str(exc)
