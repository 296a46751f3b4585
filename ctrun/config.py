"""A container's persistent description (OpenVZ's per-container config), and input checks.

Config is the one reader and writer of a container's config.json: every key the store holds
is a field, so no module reads the file raw and a key cannot be spelled two ways.  Each
file records the VERSION that wrote it; a field missing from an older file takes its
default (a field is only ever added with a default that means "as before").

Everything a user types is validated here, before anything is written, so bad input never
leaves partial state behind.
"""

import os
import re
import resource
import signal

from .errors import InvalidInput, NotFound, quote

# always fullmatch: "$" also matches before a trailing newline, which let "abc\n" in
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Docker's default capability set: what a container's root keeps unless told otherwise.
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

RLIMITS = {n[len("RLIMIT_"):].lower(): getattr(resource, n) for n in dir(resource)
           if n.startswith("RLIMIT_")}


def all_caps():
    import prctl
    return tuple("CAP_" + n.upper() for n in prctl.ALL_CAP_NAMES if n != "last_cap")


DEFAULT_CGROUP_PARENT = "ctrun"

_DEFAULTS = {
    "image": "busybox", "hostname": "", "cmd": [], "env": [], "volumes": [], "workdir": "",
    "user": "", "init": False, "ulimits": {}, "cap_add": [], "cap_drop": [],
    "privileged": False, "userns": False, "userns_base": None, "mode": "container",
    "limits": {}, "limits_skip": [], "net": {}, "vm": {}, "onboot": False, "stop_signal": "",
    # where its cgroup lives (recorded at create: $CTRUN_CGROUP_PARENT may change later)
    "cgroup_parent": DEFAULT_CGROUP_PARENT, "cgroup_name": "", "created_at": None, "version": 0,
}
# 1: cgroup_parent, cgroup_name, created_at and version itself became fields
VERSION = 1
FILE = "config.json"


class Config:
    """The persistent description of one container (a plain class: dataclasses imports
    `inspect`, which costs ~8 ms of every command's start-up)."""

    __slots__ = ("name",) + tuple(_DEFAULTS)

    def __init__(self, name, **fields):
        unknown = set(fields) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown config fields {sorted(unknown)}")
        self.name = name
        for k, v in _DEFAULTS.items():
            value = fields.get(k, v)
            setattr(self, k, value.copy() if value is v and isinstance(v, (list, dict)) else value)

    def to_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], **{k: v for k, v in d.items() if k in _DEFAULTS})

    def __eq__(self, other):
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    @classmethod
    def load(cls, cdir):
        """The config of container directory `cdir`, or None when it has none (a crashed
        create's debris, a stray entry) or a torn one."""
        from .state import read_json
        d = read_json(os.path.join(cdir, FILE))
        if not isinstance(d, dict):
            return None
        return cls(d.get("name") or os.path.basename(cdir),
                   **{k: v for k, v in d.items() if k in _DEFAULTS})

    def save(self, cdir):
        from .state import write_json
        self.version = VERSION
        write_json(os.path.join(cdir, FILE), self.to_dict())

    def cgroup(self):
        """(parent, name) of the container's cgroup."""
        return self.cgroup_parent, self.cgroup_name or self.name


def load(cdir):
    return Config.load(cdir)


def check_name(name, what="container"):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(
            f"invalid {what} name {quote(name)}: use 1-64 characters from letters, digits, "
            "'_', '.', '-', starting with a letter or digit")
    return name


def check_hostname(h):
    if h and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                              r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", h):
        raise InvalidInput(f"invalid hostname {quote(h)}: use letters, digits, '-' and dots "
                           "(RFC 1123)")
    if len(h) > 64:
        raise InvalidInput(f"hostname {quote(h)} is longer than 64 characters; shorten it")
    return h


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"


def parse_searchdomains(items):
    """--searchdomain values: DNS domain names, as resolv.conf's `search` line takes them."""
    out = []
    for d in items or []:
        if not isinstance(d, str) or len(d) > 253 or not re.fullmatch(
                rf"{_LABEL}(\.{_LABEL})*\.?", d):
            raise InvalidInput(f"invalid --searchdomain {d!r}: give a domain name such as "
                               "example.com")
        out.append(d)
    if len(" ".join(out)) > 1024:
        raise InvalidInput("--searchdomain values are longer than 1024 characters together; "
                           "give fewer domains")
    return out


def parse_onboot(value):
    """--onboot yes|no (vzctl's words; true/false and on/off too) -> bool."""
    if value is None or isinstance(value, bool):
        return bool(value)
    v = str(value).lower() if value is not None else ""
    if re.fullmatch(r"yes|true|on|1", v):
        return True
    if re.fullmatch(r"no|false|off|0", v):
        return False
    raise InvalidInput(f"invalid --onboot {value!r}: use yes or no")


def read_secret_line(path, where, stdin=None):
    """The first line (USER:PASSWORD) of file `path`, or of stdin when path is None, without
    its line end and bounded: how a secret reaches ctrun without showing in `ps`."""
    import sys
    try:
        if path is None:
            return (stdin or sys.stdin).readline(4096).rstrip("\r\n")
        with open(path) as f:
            return f.readline(4096).rstrip("\r\n")
    except OSError as e:
        raise NotFound(f"cannot read {where} ({e.strerror}); give a readable file holding "
                       "USER:PASSWORD") from None
    except ValueError:
        raise InvalidInput(f"{where} is not text; give USER:PASSWORD on one line") from None


def parse_userpasswd(text, where):
    """USER:PASSWORD read from stdin or a file -> (user, password); the password never
    enters argv, the config or an error message."""
    m = re.fullmatch(r"([a-z_][a-z0-9_.-]{0,31}\$?):([^\n\r\0]+)", text or "")
    if not m:
        user = (text or "").partition(":")[0]
        if ":" not in (text or "") or not user:
            raise InvalidInput(f"no USER:PASSWORD on {where}; give one line such as "
                               "root:SECRET")
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}\$?", user):
            raise InvalidInput(f"invalid user name {user!r} on {where}: use a login name "
                               "such as root")
        raise InvalidInput(f"the password on {where} is empty or holds a NUL or newline; "
                           "give a non-empty one-line password")
    return m.group(1), m.group(2)


def parse_env(items):
    out = []
    for item in items or []:
        k, sep, _ = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise InvalidInput(f"invalid environment entry {quote(item)}: use KEY=VALUE")
        out.append(item)
    return out


def parse_volume(spec):
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidInput(f"invalid volume {quote(spec)}: use "
                           "HOST_PATH:CONTAINER_PATH[:ro|rw]")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidInput(f"invalid volume mode {quote(mode)} in {quote(spec)}: use ro or rw")
    if not os.path.isabs(src) or not os.path.isabs(dst):
        raise InvalidInput(f"volume paths must be absolute in {quote(spec)}")
    if not os.path.exists(src):
        raise InvalidInput(f"volume source {quote(src)} does not exist on the host; "
                           "create it first")
    if os.path.normpath(dst) == "/":
        raise InvalidInput(f"volume target cannot be / in {quote(spec)}")
    return {"source": os.path.realpath(src), "target": os.path.normpath(dst),
            "readonly": mode == "ro"}


def parse_user(user):
    if not user:
        return ""
    if not re.fullmatch(r"[0-9]+(:[0-9]+)?", user):
        raise InvalidInput(f"invalid user {quote(user)}: use numeric UID or UID:GID")
    return user


def _cap_sys_resource():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def parse_ulimit(spec):
    """NAME=SOFT[:HARD]; refuse what this host's hard limit forbids (no CAP_SYS_RESOURCE)."""
    name, sep, val = spec.partition("=")
    name = name.lower()
    if not sep or name not in RLIMITS:
        raise InvalidInput(f"invalid ulimit {quote(spec)}: use NAME=SOFT[:HARD] with NAME one "
                           "of "
                           + ", ".join(sorted(RLIMITS)))
    try:
        vals = [resource.RLIM_INFINITY if v in ("unlimited", "-1") else int(v)
                for v in val.split(":")]
    except ValueError:
        raise InvalidInput(f"invalid ulimit {quote(spec)}: values must be integers or "
                           "'unlimited'") from None
    if len(vals) not in (1, 2) or any(v < 0 and v != resource.RLIM_INFINITY for v in vals):
        raise InvalidInput(f"invalid ulimit {quote(spec)}: use NAME=SOFT[:HARD]")
    soft, hard = (vals[0], vals[0]) if len(vals) == 1 else vals

    def big(v):
        return float("inf") if v == resource.RLIM_INFINITY else v
    if big(soft) > big(hard):
        raise InvalidInput(f"ulimit {name}: soft limit {soft} is above hard limit {hard}")
    _, host_hard = resource.getrlimit(RLIMITS[name])
    if big(hard) > big(host_hard) and not _cap_sys_resource():
        raise InvalidInput(
            f"ulimit {name} hard limit {hard} is above this host's hard limit "
            f"{'unlimited' if host_hard == resource.RLIM_INFINITY else host_hard} and ctrun lacks "
            f"CAP_SYS_RESOURCE to raise it; use at most {host_hard}")
    return name, [soft, hard]


def parse_caps(names):
    valid = set(all_caps())
    out = []
    for n in names or []:
        if n.upper() == "ALL":
            out.append("ALL")
            continue
        cap = n.upper() if n.upper().startswith("CAP_") else "CAP_" + n.upper()
        if cap not in valid:
            raise InvalidInput(f"unknown capability {quote(n)}; see capabilities(7) for the "
                               "names")
        out.append(cap)
    return out


def effective_caps(cfg):
    """The capability set the container's processes get."""
    if cfg.privileged:
        return list(all_caps())
    caps = set(DEFAULT_CAPS)
    if "ALL" in cfg.cap_add:
        caps = set(all_caps())
    caps |= {c for c in cfg.cap_add if c != "ALL"}
    if "ALL" in cfg.cap_drop:
        caps = {c for c in cfg.cap_add if c != "ALL"}
    caps -= set(cfg.cap_drop)
    return sorted(caps)


def parse_signal(sig):
    s = str(sig).upper()
    if s.isdigit():
        n = int(s)
        if 0 < n < signal.NSIG:
            return n
    else:
        if not s.startswith("SIG"):
            s = "SIG" + s
        if s.startswith("SIGRTMIN+") and s[9:].isdigit():
            return signal.SIGRTMIN + int(s[9:])
        if hasattr(signal.Signals, s):
            return int(signal.Signals[s])
    raise InvalidInput(f"unknown signal {quote(sig)}; use a name such as TERM or KILL, or a "
                       "number")
