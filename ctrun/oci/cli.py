"""`ctrun-oci`: runc's command line, as containerd's shim, conmon and CRI-O call it.

Errors are one line on stderr and, with --log, a record in the log file in the format the
client reads (--log-format json: {"level", "msg", "time"} per line, as runc's logrus
writes it; the shim and conmon report its "msg").  The exit code of a failed verb is 1, as
runc's; `run` and a non-detached `exec` exit with the workload's code.
"""

import argparse
import json
import os
import sys
import time

from .. import __version__

SPEC_VERSION = "1.0.2"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        from ..errors import InvalidInput
        raise InvalidInput(f"{message}; see ctrun-oci {self.prog.split()[-1]} --help")


def _verbs():
    ap = _Parser(prog="ctrun-oci", description="ctrun's runc-compatible OCI runtime")
    ap.add_argument("--root", default=None, help="state directory (default /run/ctrun-oci)")
    ap.add_argument("--log", default=None, help="log file (errors and warnings)")
    ap.add_argument("--log-format", default="text", choices=("text", "json"))
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--systemd-cgroup", action="store_true",
                    help="cgroupsPath is slice:prefix:name")
    ap.add_argument("--criu", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rootless", default=None, help=argparse.SUPPRESS)
    ap.add_argument("-v", "--version", action="store_true")
    sub = ap.add_subparsers(dest="verb", parser_class=_Parser)

    def verb(name, help_, id_=True):
        p = sub.add_parser(name, help=help_)
        if id_:
            p.add_argument("id")
        return p

    for name in ("create", "run"):
        p = verb(name, "create a container from a bundle" if name == "create" else
                 "create and start a container, and wait for it unless --detach")
        p.add_argument("-b", "--bundle", default=None)
        p.add_argument("--console-socket", default=None)
        p.add_argument("--pid-file", default=None)
        p.add_argument("--no-pivot", action="store_true")
        p.add_argument("--no-new-keyring", action="store_true")
        p.add_argument("--preserve-fds", type=int, default=0)
        if name == "run":
            p.add_argument("-d", "--detach", action="store_true")
            p.add_argument("--keep", action="store_true")
            p.add_argument("--no-subreaper", action="store_true")
    verb("start", "run the user's process of a created container")
    p = verb("state", "print a container's state JSON")
    p = verb("list", "list containers", id_=False)
    p.add_argument("-f", "--format", default="table", choices=("table", "json"))
    p.add_argument("-q", "--quiet", action="store_true")
    p = verb("kill", "send a signal to the container's init (or every process with --all)")
    p.add_argument("signal", nargs="?", default="SIGTERM")
    p.add_argument("-a", "--all", action="store_true")
    p = verb("delete", "delete a stopped container (any with --force)")
    p.add_argument("-f", "--force", action="store_true")
    p = verb("exec", "run a process in a running container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.add_argument("-p", "--process", default=None)
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--pid-file", default=None)
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("--console-socket", default=None)
    p.add_argument("--cwd", default=None)
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-u", "--user", default=None)
    p.add_argument("-g", "--additional-gids", action="append", default=[])
    p.add_argument("-c", "--cap", action="append", default=[])
    p.add_argument("--no-new-privs", action="store_true")
    p.add_argument("--preserve-fds", type=int, default=0)
    p.add_argument("--process-label", default=None)
    p.add_argument("--apparmor", default=None)
    p.add_argument("--ignore-paused", action="store_true")
    p.add_argument("--cgroup", action="append", default=[])
    p = verb("ps", "list the container's processes")
    p.add_argument("ps_args", nargs=argparse.REMAINDER)
    p.add_argument("-f", "--format", default="table", choices=("table", "json"))
    verb("pause", "freeze every process of the container")
    verb("resume", "thaw a paused container")
    p = verb("update", "change a running container's resources")
    p.add_argument("-r", "--resources", default=None, help="LinuxResources JSON file, or -")
    for flag in ("--memory", "--memory-reservation", "--memory-swap", "--cpu-period",
                 "--cpu-quota", "--cpu-share", "--cpuset-cpus", "--cpuset-mems",
                 "--pids-limit", "--blkio-weight", "--cpu-rt-period", "--cpu-rt-runtime",
                 "--kernel-memory", "--kernel-memory-tcp", "--l3-cache-schema",
                 "--mem-bw-schema"):
        p.add_argument(flag, default=None)
    p = verb("events", "print the container's events (and stats) as JSON")
    p.add_argument("--stats", action="store_true")
    p.add_argument("--interval", default="5s")
    verb("features", "print the runtime's features document", id_=False)
    p = verb("spec", "write a default config.json", id_=False)
    p.add_argument("-b", "--bundle", default=None)
    p.add_argument("--rootless", action="store_true")
    return ap


class Log:
    """--log/--log-format: where errors and warnings go besides stderr."""

    def __init__(self, path, fmt):
        self.path, self.fmt = path, fmt

    def write(self, level, msg):
        if not self.path:
            return
        t = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"
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
        return json.loads(data)
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


def _dispatch(a, rt, out):
    from . import features
    v = a.verb
    if v == "create":
        rt.create(a.id, a.bundle, a.pid_file, a.console_socket, a.preserve_fds)
    elif v == "run":
        return rt.run(a.id, a.bundle, a.pid_file, a.console_socket, a.detach, a.preserve_fds)
    elif v == "start":
        rt.start(a.id)
    elif v == "state":
        out(json.dumps(rt.state(a.id), indent=2))
    elif v == "list":
        rows = rt.list()
        if a.quiet:
            out("\n".join(r["id"] for r in rows)) if rows else None
        elif a.format == "json":
            out(json.dumps(rows))
        else:
            lines = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")] + [
                (r["id"], str(r["pid"]), r["status"], r["bundle"], r["created"], "root")
                for r in rows]
            widths = [max(len(x[i]) for x in lines) for i in range(6)]
            for row in lines:
                out("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    elif v == "kill":
        rt.kill(a.id, a.signal, a.all)
    elif v == "delete":
        rt.delete(a.id, a.force)
    elif v == "exec":
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
    elif v == "ps":
        pids = rt.ps(a.id)
        if a.format == "json":
            out(json.dumps(pids))
        else:
            import subprocess
            args = [x for x in a.ps_args if x != "--"] or ["-ef"]
            res = subprocess.run(["ps", *args], capture_output=True, text=True)
            lines = res.stdout.splitlines()
            if not lines:
                return 0
            col = lines[0].split().index("PID") if "PID" in lines[0].split() else 1
            out(lines[0])
            for line in lines[1:]:
                f = line.split()
                if len(f) > col and f[col].isdigit() and int(f[col]) in pids:
                    out(line)
    elif v == "pause":
        rt.pause(a.id)
    elif v == "resume":
        rt.resume(a.id)
    elif v == "update":
        rt.update(a.id, _update_resources(a))
    elif v == "events":
        if a.stats:
            out(json.dumps(rt.events(a.id)))
            return 0
        interval = _seconds(a.interval)
        ooms = rt.oom_kills(a.id)
        while True:
            try:
                ev = rt.events(a.id)
            except Exception:  # noqa: BLE001 - the container is gone: the stream ends
                return 0
            n = rt.oom_kills(a.id)
            if n > ooms:
                out(json.dumps({"type": "oom", "id": a.id}))
                ooms = n
            out(json.dumps(ev))
            sys.stdout.flush()
            time.sleep(interval)
    elif v == "features":
        out(json.dumps(features.document(), indent=2))
    elif v == "spec":
        features.write_default_spec(a.bundle or os.getcwd(), a.rootless)
    return 0


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
        a = _verbs().parse_args(argv)
        log = Log(a.log, a.log_format)
        if a.version:
            print(f"ctrun-oci version {__version__}\nspec: {SPEC_VERSION}")
            return 0
        if not a.verb:
            return fail("a command is needed; see ctrun-oci --help")
        if a.debug:
            os.environ["CTRUN_DEBUG"] = "1"
        if os.geteuid() != 0 and a.verb not in ("features", "spec"):
            return fail("ctrun-oci must run as root")
        from .verbs import Runtime
        rt = Runtime(a.root, a.systemd_cgroup, warn=lambda m: log.write("warning", m))
        return _dispatch(a, rt, print) or 0
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
