"""`ctrun-oci`: runc's command line, as containerd's shim, conmon and CRI-O call it.

Errors are one line on stderr and, with --log, a record in the log file in the format the
client reads (--log-format json: {"level", "msg", "time"} per line, as runc's logrus
writes it; the shim and conmon report its "msg").  The exit code of a failed verb is 1, as
runc's; `run` and a non-detached `exec` exit with the workload's code.
"""

import os
import sys
import time

from .. import __version__

SPEC_VERSION = "1.0.2"
SERVED = False   # True in the workers of the root's warm server (ctrun.oci.serving)


# flag kinds: a bool takes no value; str, int and list (repeatable) take one
B, S, I, L = "bool", "str", "int", "list"
_CREATE = [("--bundle -b", S), ("--console-socket", S), ("--pid-file", S), ("--no-pivot", B),
           ("--no-new-keyring", B), ("--preserve-fds", I)]
_UPDATE = [("--resources -r", S)] + [(f, S) for f in (
    "--memory", "--memory-reservation", "--memory-swap", "--cpu-period", "--cpu-quota",
    "--cpu-share", "--cpuset-cpus", "--cpuset-mems", "--pids-limit", "--blkio-weight",
    "--cpu-rt-period", "--cpu-rt-runtime", "--kernel-memory", "--kernel-memory-tcp",
    "--l3-cache-schema", "--mem-bw-schema")]
_EXEC = [("--process -p", S), ("--detach -d", B), ("--pid-file", S), ("--tty -t", B),
         ("--console-socket", S), ("--cwd", S), ("--env -e", L), ("--user -u", S),
         ("--additional-gids -g", L), ("--cap -c", L), ("--no-new-privs", B),
         ("--preserve-fds", I), ("--process-label", S), ("--apparmor", S),
         ("--ignore-paused", B), ("--cgroup", L)]
_FORMAT = ("--format -f", S, "table", ("table", "json"))
GLOBAL = [("--root", S, None), ("--log", S, None), ("--log-format", S, "text", ("text", "json")),
          ("--debug", B), ("--systemd-cgroup", B), ("--criu", S), ("--rootless", S),
          ("--version -v", B), ("--help -h", B)]
DEFAULTS = {B: False, S: None, I: 0, L: None}
POSITIONAL_DEFAULTS = {"signal": "SIGTERM"}


class Args:
    """The parsed command line: one attribute per flag (dashes as underscores) and
    positional."""


def _table(flags):
    out = {}
    for spec in flags:
        names, kind = spec[0].split(), spec[1]
        dest = names[0].lstrip("-").replace("-", "_")
        default = spec[2] if len(spec) > 2 else DEFAULTS[kind]
        choices = spec[3] if len(spec) > 3 else None
        for n in names:
            out[n] = (dest, kind, default, choices)
    return out


def _flags(argv, i, flags, a, where):
    """Parse the flags from argv[i] up to the first positional (or "--"); returns its
    index.  --flag value, --flag=value, and runc's single-dash long forms (-bundle)."""
    for dest, kind, default, _ in flags.values():
        setattr(a, dest, [] if kind == L else default)
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-", "--"):
        name, eq, value = argv[i].partition("=")
        if not name.startswith("--") and len(name) > 2:
            name = "-" + name
        if name not in flags:
            raise _bad(f"unknown option {argv[i]!r} for {where}", where)
        dest, kind, _, choices = flags[name]
        if kind == B:
            setattr(a, dest, value.lower() not in ("false", "0") if eq else True)
            i += 1
            continue
        if not eq:
            i += 1
            if i == len(argv):
                raise _bad(f"option {name} needs a value", where)
            value = argv[i]
        if choices and value not in choices:
            raise _bad(f"option {name} {value!r} is not one of {', '.join(choices)}", where)
        if kind == I:
            if not value.lstrip("-").isdigit():
                raise _bad(f"option {name} {value!r} is not a number", where)
            value = int(value)
        if kind == L:
            getattr(a, dest).append(value)
        else:
            setattr(a, dest, value)
        i += 1
    return i


def _bad(message, where):
    from ..errors import InvalidInput
    return InvalidInput(f"{message}; see {where} --help")


def parse(argv):
    a = Args()
    i = _flags(argv, 0, _table(GLOBAL), a, "ctrun-oci")
    a.verb = argv[i] if i < len(argv) else None
    if a.verb is None or a.help:
        return a
    if a.verb not in VERBS:
        raise _bad(f"unknown command {a.verb!r}", "ctrun-oci")
    where = f"ctrun-oci {a.verb}"
    _, positionals, flags, _ = VERBS[a.verb]
    i = _flags(argv, i + 1, _table(flags + [("--help -h", B)]), a, where)
    rest = argv[i:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    for p in positionals:
        if p.endswith("*"):
            setattr(a, p[:-1], rest[1:] if rest[:1] == ["--"] else rest)
            rest = []
        elif p.endswith("?"):
            setattr(a, p[:-1], rest.pop(0) if rest else POSITIONAL_DEFAULTS.get(p[:-1]))
        elif a.help:
            setattr(a, p, None)
        elif not rest:
            raise _bad(f"{a.verb} needs a container {p.upper()}", where)
        else:
            setattr(a, p, rest.pop(0))
    if rest and not a.help:
        raise _bad(f"unexpected argument {rest[0]!r}", where)
    return a


def usage(verb=None):
    """The --help text, made from the same tables."""
    def flags_text(flags):
        return "\n".join(f"  {', '.join(reversed(f[0].split()))}"
                         f"{'' if f[1] == B else ' VALUE'}" for f in flags)
    if verb in VERBS:
        what, positionals, flags, _ = VERBS[verb]
        args = " ".join(p.rstrip("*?").upper() + ("..." if p.endswith("*") else "")
                        for p in positionals)
        return f"usage: ctrun-oci [global options] {verb} [options] {args}\n\n{what}\n\n" \
               f"options:\n{flags_text(flags) or '  (none)'}"
    verbs = "\n".join(f"  {v:<9} {w}" for v, (w, *_) in VERBS.items())
    return (f"usage: ctrun-oci [global options] COMMAND [options] ...\n\nctrun's "
            f"runc-compatible OCI runtime.\n\ncommands:\n{verbs}\n\nglobal options:\n"
            f"{flags_text(GLOBAL)}")


class Log:
    """--log/--log-format: where errors and warnings go besides stderr."""

    def __init__(self, path, fmt):
        self.path, self.fmt = path, fmt

    def write(self, level, msg):
        if not self.path:
            return
        from .store import now
        json, stamp = _json(), now()
        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f'time="{stamp}" level={level} msg={json.dumps(msg)}'
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def _process_from_flags(a, spec_proc):
    """exec ARGS... with flags: the container's own process (env, cwd, user, capabilities)
    with the command and the flags' changes, as runc builds it."""
    from ..errors import InvalidInput
    cmd = list(a.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise InvalidInput("exec needs a command or --process FILE; e.g. ctrun-oci exec ID "
                           "-- sh")
    proc = dict(spec_proc)
    proc.update(args=cmd, terminal=a.tty)
    env = {}
    for e in list(proc.get("env") or []) + a.env:
        k, sep, v = e.partition("=")
        if not sep:
            raise InvalidInput(f"--env {e!r} is not KEY=VALUE")
        env[k] = v
    proc["env"] = [f"{k}={v}" for k, v in env.items()]
    if a.cwd:
        proc["cwd"] = a.cwd
    if a.user:
        uid, _, gid = a.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise InvalidInput(f"--user {a.user!r} is not UID[:GID]")
        proc["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if a.additional_gids:
        proc.setdefault("user", {})["additionalGids"] = [int(g) for g in a.additional_gids]
    if a.cap:
        caps = {k: list(v) for k, v in (proc.get("capabilities") or {}).items()}
        for k in ("bounding", "effective", "permitted", "inheritable", "ambient"):
            caps[k] = sorted(set(caps.get(k, [])) | set(a.cap)) if k != "ambient" \
                else caps.get(k, [])
        proc["capabilities"] = caps
    if a.no_new_privs:
        proc["noNewPrivileges"] = True
    return proc


def _read_json_arg(path, what):
    from ..errors import InvalidInput
    try:
        data = sys.stdin.read() if path == "-" else open(path).read()
        return _json().loads(data)
    except OSError as e:
        raise InvalidInput(f"{what} {path!r}: {e.strerror}; give a readable file") from None
    except ValueError:
        raise InvalidInput(f"{what} {path!r} is not valid JSON; fix the file") from None


def _update_resources(a):
    from ..cgroups.limits import parse_size
    from ..errors import InvalidInput
    res = _read_json_arg(a.resources, "--resources") if a.resources else {}
    mem, cpu = res.setdefault("memory", {}) or {}, res.setdefault("cpu", {}) or {}
    res["memory"], res["cpu"] = mem, cpu
    for flag, key in (("memory", "limit"), ("memory_reservation", "reservation"),
                      ("memory_swap", "swap")):
        if getattr(a, flag) is not None:
            mem[key] = parse_size(getattr(a, flag), "--" + flag.replace("_", "-"))
    for flag, key in (("cpu_period", "period"), ("cpu_quota", "quota"), ("cpu_share", "shares")):
        if getattr(a, flag) is not None:
            try:
                cpu[key] = int(getattr(a, flag))
            except ValueError:
                raise InvalidInput(f"--{flag.replace('_', '-')} {getattr(a, flag)!r} is not a "
                                   "number") from None
    for flag, key in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if getattr(a, flag) is not None:
            cpu[key] = getattr(a, flag)
    if a.pids_limit is not None:
        res["pids"] = {"limit": int(a.pids_limit)}
    if a.blkio_weight is not None:
        res["blockIO"] = {"weight": int(a.blkio_weight)}
    for flag in ("cpu_rt_period", "cpu_rt_runtime", "kernel_memory", "kernel_memory_tcp",
                 "l3_cache_schema", "mem_bw_schema"):
        if getattr(a, flag) is not None:
            raise InvalidInput(f"--{flag.replace('_', '-')} is not supported by ctrun-oci")
    return res


def _json():
    # loaded by the verbs that print or read JSON only: it brings `re` and `enum` along
    import json
    return json


def _state_json(doc):
    from .store import dumps   # json.dumps(doc, indent=2) without json's imports
    return dumps(doc)


def _list(a, rt, out):
    rows = rt.list()
    if a.quiet:
        out("\n".join(r["id"] for r in rows)) if rows else None
    elif a.format == "json":
        out(_json().dumps(rows))
    else:
        lines = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")] + [
            (r["id"], str(r["pid"]), r["status"], r["bundle"], r["created"], "root")
            for r in rows]
        widths = [max(len(x[i]) for x in lines) for i in range(6)]
        for row in lines:
            out("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _exec(a, rt, out):
    from . import bundle
    if a.process:
        proc = _read_json_arg(a.process, "--process")
        if not isinstance(proc, dict):
            from ..errors import InvalidInput
            raise InvalidInput(f"--process {a.process!r} must hold a JSON object")
    else:
        ct = rt.root.load(a.id)
        proc = _process_from_flags(a, ct.spec()["process"])
    proc = bundle.process_for(proc) if proc.get("args") else proc
    return rt.exec(a.id, proc, a.detach, a.pid_file, a.console_socket)


def _ps(a, rt, out):
    pids = rt.ps(a.id)
    if a.format == "json":
        out(_json().dumps(pids))
        return
    import subprocess
    args = [x for x in a.ps_args if x != "--"] or ["-ef"]
    res = subprocess.run(["ps", *args], capture_output=True, text=True)
    lines = res.stdout.splitlines()
    if not lines:
        return
    col = lines[0].split().index("PID") if "PID" in lines[0].split() else 1
    out(lines[0])
    for line in lines[1:]:
        f = line.split()
        if len(f) > col and f[col].isdigit() and int(f[col]) in pids:
            out(line)


def _events(a, rt, out):
    json = _json()
    if a.stats:
        out(json.dumps(rt.events(a.id)))
        return
    interval = _seconds(a.interval)
    ooms = rt.oom_kills(a.id)
    while True:
        try:
            ev = rt.events(a.id)
        except Exception:  # noqa: BLE001 - the container is gone: the stream ends
            return
        n = rt.oom_kills(a.id)
        if n > ooms:
            out(json.dumps({"type": "oom", "id": a.id}))
            ooms = n
        out(json.dumps(ev))
        sys.stdout.flush()
        time.sleep(interval)


def _features(a, rt, out):
    from . import features
    out(_json().dumps(features.document(), indent=2))


def _spec(a, rt, out):
    from . import features
    features.write_default_spec(a.bundle or os.getcwd(), a.rootless)


def _seconds(text):
    from ..errors import InvalidInput
    s = str(text).strip()
    try:
        for unit, mul in (("ms", 0.001), ("s", 1), ("m", 60)):
            if s.endswith(unit):
                return float(s[:-len(unit)]) * mul
        return float(s)
    except ValueError:
        raise InvalidInput(f"--interval {text!r} is not a duration such as 5s") from None


# verb -> (what it does, positionals (NAME? optional, NAME* the rest), flags, handler): the
# parser, --help and the dispatch all read this one table.  A handler takes (the parsed
# Args, the Runtime, print) and returns the exit code (None: 0).
VERBS = {
    "create": ("set a container up from a bundle; it waits for start", ["id"], _CREATE,
               lambda a, rt, out: rt.create(a.id, a.bundle, a.pid_file, a.console_socket,
                                            a.preserve_fds)),
    "start": ("run the user's process of a created container", ["id"], [],
              lambda a, rt, out: rt.start(a.id)),
    "run": ("create and start, then wait for the container unless --detach", ["id"],
            _CREATE + [("--detach -d", B), ("--keep", B), ("--no-subreaper", B)],
            lambda a, rt, out: rt.run(a.id, a.bundle, a.pid_file, a.console_socket, a.detach,
                                      a.preserve_fds)),
    "state": ("print a container's state JSON", ["id"], [],
              lambda a, rt, out: out(_state_json(rt.state(a.id)))),
    "list": ("list the containers", [], [_FORMAT, ("--quiet -q", B)], _list),
    "kill": ("signal the init (every process with --all); SIGNAL defaults to TERM",
             ["id", "signal?"], [("--all -a", B)],
             lambda a, rt, out: rt.kill(a.id, a.signal, a.all)),
    "delete": ("delete a stopped container (any with --force)", ["id"], [("--force -f", B)],
               lambda a, rt, out: rt.delete(a.id, a.force)),
    "exec": ("run a process (--process FILE, or the command) in a running container",
             ["id", "command*"], _EXEC, _exec),
    "ps": ("list the container's processes", ["id", "ps_args*"], [_FORMAT], _ps),
    "pause": ("freeze every process of the container", ["id"], [],
              lambda a, rt, out: rt.pause(a.id)),
    "resume": ("thaw a paused container", ["id"], [], lambda a, rt, out: rt.resume(a.id)),
    "update": ("change a running container's resources", ["id"], _UPDATE,
               lambda a, rt, out: rt.update(a.id, _update_resources(a))),
    "events": ("print the container's stats as JSON events", ["id"],
               [("--stats", B), ("--interval", S, "5s")], _events),
    "features": ("print the runtime-spec features document", [], [], _features),
    "spec": ("write a default config.json", [], [("--bundle -b", S), ("--rootless", B)], _spec),
}


# the verbs the root's warm server runs (ctrun.oci.serving; client.c's list): a cold call
# of one starts that server
STARTS = ("state", "start", "kill", "delete")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    from ..errors import CtrunError, one_line
    log = Log(None, "text")
    debug = "--debug" in argv

    def fail(msg, code=1):
        msg = one_line(msg)
        log.write("error", msg)
        print(f"ctrun-oci: {msg}", file=sys.stderr)
        return code

    try:
        a = parse(argv)
        log = Log(a.log, a.log_format)
        if a.version:
            print(f"ctrun-oci version {__version__}\nspec: {SPEC_VERSION}")
            return 0
        if a.help:
            print(usage(a.verb))
            return 0
        if not a.verb:
            return fail("a command is needed; see ctrun-oci --help")
        if a.debug:
            os.environ["CTRUN_DEBUG"] = "1"
        if os.geteuid() != 0 and a.verb not in ("features", "spec"):
            return fail("ctrun-oci must run as root")
        if not SERVED and a.verb in STARTS:
            from .spawn import spawn
            spawn(a.root)   # for the calls that follow: this one runs here
        from .verbs import Runtime
        rt = Runtime(a.root, a.systemd_cgroup, warn=lambda m: log.write("warning", m))
        return VERBS[a.verb][3](a, rt, print) or 0
    except CtrunError as e:
        if debug:
            raise
        return fail(str(e))
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        if debug:
            raise
        return fail(f"{e.strerror or e}{': ' + repr(e.filename) if e.filename else ''} "
                    "(rerun with --debug for details)")
