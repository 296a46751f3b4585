"""The `ctrun` command line: a table of verbs (VERBS: help and arguments; DO: what each
does), each one parse, call ctrun.api, print.  Errors are one line; --debug shows the
traceback.  Heavy modules are imported by the verbs that need them."""

import argparse
import json
import os
import sys


def _create_opts(p):
    p.add_argument("--image", default="busybox", help="image name (default: busybox)")
    p.add_argument("--hostname", default="")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CT[:ro]")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("-u", "--user", default="", metavar="UID[:GID]")
    p.add_argument("--init", action="store_true", help="run a minimal reaper (tini) as PID 1")
    p.add_argument("--stop-signal", default="", metavar="SIGNAL",
                   help="what `stop` sends PID 1 (default: the image's; SIGRTMIN+3 to systemd)")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]")
    p.add_argument("--cap-add", action="append", default=[])
    p.add_argument("--cap-drop", action="append", default=[])
    p.add_argument("--privileged", action="store_true",
                   help="all capabilities, no seccomp, no masked paths")
    p.add_argument("--userns", action="store_true",
                   help="map container root to an unprivileged host id range")
    p.add_argument("--vm", action="store_true",
                   help="boot the image as a virtual machine under QEMU (--memory is guest "
                        "RAM, --cpus the vCPU count)")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"),
                   help="VM accelerator: auto tries KVM (proven once), else TCG emulation")
    _limit_opts(p)
    _net_opts(p)
    _vps_opts(p)


# vzctl set's VPS knobs: on create, run and set (--hostname and --nameserver are with the
# create options; set has its own); secrets come from stdin or a file, never from argv
def _vps_opts(p, on_set=False):
    if on_set:
        p.add_argument("--hostname", help="live: the running container's hostname too")
        p.add_argument("--nameserver", action="append", metavar="IP",
                       help="resolv.conf nameservers (repeat; replaces the old list), live")
    p.add_argument("--searchdomain", action="append", metavar="DOMAIN",
                   help="resolv.conf search domains (repeat)" + (
                       "; replaces the old list, live" if on_set else ""))
    p.add_argument("--onboot", metavar="yes|no",
                   help="start it at host boot (ctrun start --onboot, run by a systemd unit)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--userpasswd", metavar="-", help="- reads USER:PASSWORD from stdin and "
                   "sets that user's password inside the container")
    g.add_argument("--userpasswd-file", metavar="FILE", help="read USER:PASSWORD from FILE")
    p.add_argument("--ssh-key", action="append", metavar="FILE",
                   help="append a public key file to --ssh-user's ~/.ssh/authorized_keys")
    p.add_argument("--ssh-user", default="root", help="whose authorized_keys (default root)")


def _vps_kwargs(a):
    userpasswd = None
    if a.userpasswd is not None or a.userpasswd_file is not None:
        from .vps import read_userpasswd  # ctypes and more: not on every run's start path
        userpasswd = read_userpasswd(a.userpasswd, a.userpasswd_file)
    return dict(searchdomain=a.searchdomain, onboot=a.onboot, userpasswd=userpasswd,
                ssh_key=a.ssh_key or (), ssh_user=a.ssh_user)


def _net_opts(p):
    p.add_argument("--net", "--network", dest="net", metavar="NETWORK|none|host",
                   help="network to join (default: ctrun0)")
    p.add_argument("--ip", help="static address from the network's subnet")
    p.add_argument("--mac", help="MAC address of eth0")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[IP:]HOSTPORT:CTPORT[/tcp|udp]")
    p.add_argument("--ip-add", action="append", default=[], metavar="IP",
                   help="an extra address of eth0 (repeat; like vzctl set --ipadd)")
    p.add_argument("--dns", "--nameserver", dest="dns", action="append", default=[],
                   metavar="IP", help="resolv.conf nameserver (repeat)")


# resource limits: the same options on create, run and set (like vzctl set)
LIMIT_OPTS = (
    ("--memory", "-m", "hard memory limit (512M, 1G)"),
    ("--memory-swap", None, "memory+swap limit, -1 for unlimited swap"),
    ("--memory-reservation", None, "soft memory limit"),
    ("--cpus", None, "CPU time, in CPUs (0.5 = half of one)"),
    ("--cpu-shares", None, "relative CPU weight, cgroup v1 scale (1024 = default)"),
    ("--cpu-weight", None, "relative CPU weight, cgroup v2 scale (100 = default)"),
    ("--cpuset-cpus", None, "CPUs allowed (0-1, 0,2)"),
    ("--cpuset-mems", None, "memory nodes allowed"),
    ("--pids-limit", None, "most processes at once, -1 for unlimited"),
    ("--blkio-weight", None, "relative block I/O weight, 10-1000"),
)
DEVICE_OPTS = ("--device-read-bps", "--device-write-bps", "--device-read-iops",
               "--device-write-iops")


def _limit_opts(p):
    for long, short, hlp in LIMIT_OPTS:
        p.add_argument(*([long, short] if short else [long]), help=hlp)
    for long in DEVICE_OPTS:
        p.add_argument(long, action="append", metavar="DEVICE:RATE",
                       help="throttle a block device (/dev/vda:10mb)")
    p.add_argument("--ignore-unsupported", action="store_true",
                   help="apply what this host supports and skip the rest (named on stderr)")


def _limit_kwargs(a):
    names = [o[0] for o in LIMIT_OPTS] + list(DEVICE_OPTS)
    out = {n[2:].replace("-", "_"): getattr(a, n[2:].replace("-", "_")) for n in names}
    return {k: v for k, v in out.items() if v is not None}


def _create_kwargs(a):
    return dict(hostname=a.hostname, env=a.env, volumes=a.volume, workdir=a.workdir,
                user=a.user, init=a.init, ulimits=a.ulimit, cap_add=a.cap_add,
                cap_drop=a.cap_drop, privileged=a.privileged, userns=a.userns,
                stop_signal=a.stop_signal,
                limits=_limit_kwargs(a), ignore_unsupported=a.ignore_unsupported,
                net=a.net, ip=a.ip, mac=a.mac, publish=a.publish, dns=a.dns, vm=a.vm,
                accel=a.accel, ip_add=a.ip_add, **_vps_kwargs(a))


def _cmd(rest):
    return list(rest)


def _name(p):
    p.add_argument("name")


def _create(p):
    p.add_argument("name")
    _create_opts(p)
    p.add_argument("cmd", nargs="*", help="-- CMD [ARGS...]")


def _run(p):
    p.add_argument("--name")
    p.add_argument("--rm", action="store_true")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    _create_opts(p)
    p.add_argument("image_pos", metavar="IMAGE")
    p.add_argument("cmd", nargs="*", help="-- CMD [ARGS...]")


def _stop(p):
    p.add_argument("name")
    p.add_argument("-t", "--time", type=float, default=10.0, help="seconds before SIGKILL")


def _kill(p):
    p.add_argument("name")
    p.add_argument("signal", nargs="?", default="KILL")


def _exec(p):
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("name")
    p.add_argument("cmd", nargs="*", help="-- CMD [ARGS...]")


def _list(p):
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("--format", choices=("table", "json"), default="table")


def _logs(p):
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true")


def _destroy(p):
    p.add_argument("name", nargs="+")
    p.add_argument("-f", "--force", action="store_true")


def _image(p):
    isub = p.add_subparsers(dest="image_verb", metavar="ACTION")
    isub.required = True
    q = isub.add_parser("build", help="build an image from a built-in recipe")
    q.add_argument("name")
    q.add_argument("--force", action="store_true")
    q.add_argument("--suite", help="debian suite (default: the recipe's, bookworm)")
    q.add_argument("--variant", help="debootstrap variant: minbase, buildd or default")
    q.add_argument("--include", action="append", metavar="PKG,...",
                   help="extra debian packages, added to the recipe's")
    isub.add_parser("list", aliases=["ls"], help="list images")
    q = isub.add_parser("rm", help="remove images (refused while containers use them)")
    q.add_argument("name", nargs="+")
    q.add_argument("-f", "--force", action="store_true")
    q = isub.add_parser("import", help="import a rootfs tarball, OCI layout/archive or "
                                       "docker save archive")
    q.add_argument("file")
    q.add_argument("name")
    q.add_argument("--ref", help="which image of a multi-image archive (its ref name)")
    q.add_argument("--trusted", action="store_true", help="keep device nodes")
    q = isub.add_parser("pull", help="pull an image from a registry (Docker Registry API v2)")
    q.add_argument("reference", help="[HOST[:PORT]/]REPO[:TAG][@sha256:...]; docker.io "
                                     "without a host")
    q.add_argument("--name", help="the image's name in the store (default: the repository's "
                                  "last part, with -TAG unless it is latest)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--creds", metavar="USER:PASSWORD", help="registry credentials; - reads "
                                                            "them from stdin (kept out of ps)")
    g.add_argument("--creds-file", metavar="FILE", help="read USER:PASSWORD from FILE")
    q.add_argument("--authfile", help="containers-auth.json file (default: "
                                      "$REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json)")
    q.add_argument("--tls-verify", default="true", nargs="?", const="true",
                   choices=["true", "false"],
                   help="check the registry's TLS certificate; false also allows plain http")
    q.add_argument("--platform", help="os/arch[/variant] of a multi-platform image "
                                      "(default: this host's)")
    q.add_argument("--trusted", action="store_true", help="keep device nodes")
    q = isub.add_parser("export", help="write an image's root file system as a tarball")
    q.add_argument("name")
    q.add_argument("file", help="output (.tar, .tar.gz, .tar.xz)")
    q = isub.add_parser("inspect", help="show an image as JSON")
    q.add_argument("name")


def _template(p):
    p.add_argument("name", help="the new image")
    p.add_argument("container", help="the container to make it from")


def _set(p):
    p.add_argument("name")
    _limit_opts(p)
    p.add_argument("--ip-add", action="append", default=[], metavar="IP",
                   help="add an address to eth0 (like vzctl set --ipadd)")
    p.add_argument("--ip-del", action="append", default=[], metavar="IP")
    p.add_argument("--no-save", action="store_true",
                   help="change the running container only, not its saved config")
    _vps_opts(p, on_set=True)


def _set_vps_given(a):
    return any(v not in (None, [], ()) for v in (
        a.hostname, a.nameserver, a.searchdomain, a.onboot, a.userpasswd, a.userpasswd_file,
        a.ssh_key))


def _start(p):
    p.add_argument("name", nargs="?")
    p.add_argument("--onboot", action="store_true",
                   help="start every container marked --onboot yes (the boot hook)")


def _stats(p):
    p.add_argument("name", nargs="*")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--watch", action="store_true", help="refresh every second")


def _network(p):
    nsub = p.add_subparsers(dest="network_verb", metavar="ACTION")
    nsub.required = True
    q = nsub.add_parser("create", help="create a bridged network")
    q.add_argument("name")
    q.add_argument("--subnet", required=True, metavar="CIDR")
    q.add_argument("--gateway")
    q.add_argument("--no-nat", action="store_true", help="no outbound masquerade")
    q.add_argument("--allow-from", action="append", default=[], metavar="NETWORK",
                   help="let containers of NETWORK reach this one's (repeatable)")
    q.add_argument("--no-host-access", action="store_true",
                   help="containers cannot reach the host's addresses (but their DNS)")
    nsub.add_parser("list", aliases=["ls"], help="list networks")
    q = nsub.add_parser("inspect", help="show a network as JSON")
    q.add_argument("name")
    q = nsub.add_parser("rm", help="remove networks (refused while containers are attached)")
    q.add_argument("name", nargs="+")


def _lab(p):
    from .lab.main import add_arguments  # argparse only: the lab's work is imported later
    add_arguments(p)


def _demo(p):
    p.add_argument("--keep", action="store_true", help="leave the demo container running")


# verb -> (help, aliases, argument builder)
VERBS = {
    "create": ("record a container and prepare its file system", (), _create),
    "run": ("create, start and attach in one step", (), _run),
    "start": ("start a container in the background", (), _start),
    "stop": ("stop signal, then SIGKILL after --time seconds", (), _stop),
    "restart": ("stop then start", (), _stop),
    "kill": ("send a signal to the container's init", (), _kill),
    "exec": ("run a command inside a running container", (), _exec),
    "enter": ("interactive shell inside a running container", (), _name),
    "list": ("list containers", ("ls",), _list),
    "inspect": ("show a container as JSON", (), _name),
    "logs": ("stdout/stderr of a detached container", (), _logs),
    "destroy": ("remove a container", ("rm",), _destroy),
    "set": ("change limits and VPS knobs, live on a running container (like vzctl set)",
            (), _set),
    "stats": ("resource usage and OpenVZ-style beancounters", (), _stats),
    "freeze": ("suspend every process of a container", (), _name),
    "thaw": ("resume a frozen container", (), _name),
    "network": ("manage bridged networks", (), _network),
    "gc": ("clean up what crashed commands left behind", (), None),
    "image": ("manage images", (), _image),
    "template": ("make an image from a container (vzdump-style template)", (), _template),
    "demo": ("start a container and show what it sees next to the host", (), _demo),
    "lab": ("compare host, container and VM: figures, isolation probes, report", (), _lab),
}
ALIASES = {a: v for v, (_, aliases, _) in VERBS.items() for a in aliases}
SUB_ALIASES = {"ls": "list"}  # of the image and network actions
COMMAND_VERBS = ("create", "run", "exec")  # the verbs that take -- CMD [ARGS...]


def _verb_in(argv):
    """The verb of argv, found without building every sub-parser (start-up latency)."""
    it = iter(argv)
    for tok in it:
        if tok == "--root":
            next(it, None)
        elif not tok.startswith("-"):
            return ALIASES.get(tok, tok)
    return None


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter sized without importing shutil, which it does for every
    argument added, help or not (~3 ms of every verb)."""

    def __init__(self, prog, **kw):
        if kw.get("width") is None:
            try:
                cols = int(os.environ.get("COLUMNS") or os.get_terminal_size(1).columns)
            except (ValueError, OSError):
                cols = 80
            kw["width"] = cols - 2
        super().__init__(prog, **kw)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", _Formatter)
        # no prefixes: `create --name X` must not be read as --nameserver X
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)  # sub-parsers are made of this class too

    def error(self, message):
        """One line, like every other error (argparse prints its usage first, and joins
        unrecognized arguments raw, newlines and all)."""
        _error(f"{message}; see: {self.prog} --help")
        sys.exit(2)


def _error(message):
    """Print an error as exactly one line, whatever the message holds."""
    from .errors import one_line
    print(f"ctrun: error: {one_line(message)}", file=sys.stderr)


_PARSERS = {}


def parser(only=None):
    """The argument parser; with a known verb `only`, that verb's sub-parser alone (each
    sub-parser costs start-up time; an unknown verb gets the full parser and its error).
    Kept once built: the warm server builds them all before its first call."""
    if only not in _PARSERS:
        _PARSERS[only] = _build_parser(only)
    return _PARSERS[only]


def _build_parser(only):
    ap = _Parser(prog="ctrun", description="OpenVZ-style system containers")
    ap.add_argument("--root", help="store directory (default $CTRUN_ROOT or /var/lib/ctrun)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, (hlp, aliases, build) in VERBS.items():
        if only in VERBS and verb != only:
            continue
        p = sub.add_parser(verb, help=hlp, aliases=list(aliases))
        if build:
            build(p)
    return ap


def _table(rows, cols):
    from .errors import one_line  # a name an older ctrun let in must not break a row

    def cell(r, k):
        return one_line(r.get(k)) if r.get(k) is not None else "-"
    widths = [max(len(c), *(len(cell(r, k)) for r in rows)) if rows else len(c)
              for c, k in cols]
    lines = ["  ".join(c.ljust(w) for (c, _), w in zip(cols, widths)).rstrip()]
    for r in rows:
        lines.append("  ".join(cell(r, k).ljust(w) for (_, k), w in zip(cols, widths)).rstrip())
    return "\n".join(lines)


def _each(names, fn):
    """Apply fn to every name, reporting each failure and going on; the last error's code."""
    from .errors import CtrunError
    code = 0
    for n in names:
        try:
            fn(n)
        except CtrunError as e:
            _error(e)
            code = e.exit_code
    return code


def _print_json(obj):
    print(json.dumps(obj, indent=1))


def _do_create(ct, a):
    ct.create(a.name, image=a.image, cmd=_cmd(a.cmd), **_create_kwargs(a))
    print(a.name)


def _do_run(ct, a):
    return ct.run(image=a.image_pos, cmd=_cmd(a.cmd), name=a.name, rm=a.rm, detach=a.detach,
                  tty=a.tty, interactive=a.interactive, plumber=a.plumber, **_create_kwargs(a))


def _do_start(ct, a):
    if a.onboot == bool(a.name):
        from .errors import InvalidInput
        raise InvalidInput("start takes a container name or --onboot (every container "
                           "marked onboot), not both and not neither")
    if a.name:
        ct.start(a.name)
        return 0
    code = 0
    for n, err in ct.start_onboot():
        if err:
            print(f"ctrun: error: {n}: {err}", file=sys.stderr)
            code = 1
        else:
            print(n)
    return code


def _do_list(ct, a):
    rows = ct.list(all=a.all)
    if a.format == "json":
        return _print_json(rows)
    print(_table(rows, [("NAME", "name"), ("STATE", "state"), ("PID", "pid"),
                        ("IMAGE", "image"), ("MODE", "mode"), ("ACCEL", "accel"),
                        ("EXIT", "exit_code"), ("REASON", "exit_reason")]))


def _do_set(ct, a):
    vps = _set_vps_given(a)
    if vps:
        ct.set_vps(a.name, hostname=a.hostname, nameserver=a.nameserver, save=not a.no_save,
                   **_vps_kwargs(a))
    if a.ip_add or a.ip_del:
        ct.set_ips(a.name, add=a.ip_add, delete=a.ip_del, save=not a.no_save)
    if _limit_kwargs(a) or not (a.ip_add or a.ip_del or vps):
        ct.set(a.name, _limit_kwargs(a), save=not a.no_save,
               ignore_unsupported=a.ignore_unsupported)


def _do_stats(ct, a):
    from .stats import show
    return show(ct, a.name, fmt=a.format, watch=a.watch)


def _do_gc(ct, a):
    for line in ct.gc():
        print(line)


def _network_create(ct, a):
    ct.network_create(a.name, a.subnet, gateway=a.gateway, nat=not a.no_nat,
                      allow_from=a.allow_from, host_access=not a.no_host_access)
    print(a.name)


def _network_list(ct, a):
    print(_table(ct.network_list(), [("NAME", "name"), ("BRIDGE", "bridge"),
                                     ("SUBNET", "subnet"), ("GATEWAY", "gateway"),
                                     ("NAT", "nat"), ("CONTAINERS", "containers")]))


NETWORK_DO = {
    "create": _network_create,
    "list": _network_list,
    "inspect": lambda ct, a: _print_json(ct.network_inspect(a.name)),
    "rm": lambda ct, a: _each(a.name, ct.network_rm),
}


def _image_build(ct, a):
    ct.image_build(a.name, force=a.force, suite=a.suite, variant=a.variant, include=a.include)
    print(a.name)


def _image_list(ct, a):
    rows = [{**i, "size": f"{i['size'] / 1048576:.1f}M"} for i in ct.image_list()]
    print(_table(rows, [("NAME", "name"), ("BUILT BY", "built_by"), ("SIZE", "size"),
                        ("CONTAINERS", "users")]))


def _image_import(ct, a):
    ct.image_import(a.file, a.name, ref=a.ref, trusted=a.trusted)
    print(a.name)


def _image_pull(ct, a):
    from .images.registry import read_creds
    cfg = ct.image_pull(a.reference, name=a.name, creds=read_creds(a.creds, a.creds_file),
                        authfile=a.authfile, tls_verify=a.tls_verify == "true",
                        platform=a.platform, trusted=a.trusted)
    print(cfg["name"])


IMAGE_DO = {
    "build": _image_build,
    "list": _image_list,
    "rm": lambda ct, a: _each(a.name, lambda n: ct.image_rm(n, force=a.force)),
    "import": _image_import,
    "pull": _image_pull,
    "export": lambda ct, a: ct.image_export(a.name, a.file),
    "inspect": lambda ct, a: _print_json(ct.image_inspect(a.name)),
}


def _do_template(ct, a):
    ct.template(a.container, a.name)
    print(a.name)


def _do_lab(ct, a):
    from .lab.main import run
    return run(a)


def _do_demo(ct, a):
    from .demo import demo
    return demo(ct, keep=a.keep)


# verb -> what it does: parse (done by argparse from VERBS), call the API, print; the
# returned value (None: 0) is the exit code
DO = {
    "create": _do_create,
    "run": _do_run,
    "start": _do_start,
    "stop": lambda ct, a: ct.stop(a.name, a.time),
    "restart": lambda ct, a: ct.restart(a.name, a.time),
    "kill": lambda ct, a: ct.kill(a.name, a.signal),
    "exec": lambda ct, a: ct.exec(a.name, _cmd(a.cmd), tty=a.tty, interactive=a.interactive,
                                  env=a.env, workdir=a.workdir, user=a.user),
    "enter": lambda ct, a: ct.enter(a.name),
    "list": _do_list,
    "inspect": lambda ct, a: _print_json(ct.inspect(a.name)),
    "logs": lambda ct, a: ct.logs(a.name, follow=a.follow),
    "destroy": lambda ct, a: _each(a.name, lambda n: ct.destroy(n, force=a.force)),
    "set": _do_set,
    "stats": _do_stats,
    "freeze": lambda ct, a: ct.freeze(a.name),
    "thaw": lambda ct, a: ct.thaw(a.name),
    "network": lambda ct, a: NETWORK_DO[SUB_ALIASES.get(a.network_verb, a.network_verb)](ct, a),
    "gc": _do_gc,
    "image": lambda ct, a: IMAGE_DO[SUB_ALIASES.get(a.image_verb, a.image_verb)](ct, a),
    "template": _do_template,
    "demo": _do_demo,
    "lab": _do_lab,
}


def dispatch(a):
    from .api import Ctrun
    from .errors import one_line
    ct = Ctrun(a.root, warn=lambda m: print(f"ctrun: warning: {one_line(m)}", file=sys.stderr))
    result = DO[ALIASES.get(a.verb, a.verb)](ct, a)
    return result if type(result) is int else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # everything after the first "--" is the command, options included (sh -c ...); a verb
    # without a command keeps "--" as argparse's end of options (destroy -- -oddname)
    tail = []
    verb = _verb_in(argv)
    if "--" in argv and verb in COMMAND_VERBS:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    ap = parser(verb)
    a = ap.parse_args(argv)
    if tail:
        a.cmd = list(a.cmd or []) + tail
    if a.debug:
        os.environ["CTRUN_DEBUG"] = "1"
    from .errors import CtrunError
    a.plumber = None
    try:
        reads_only = a.verb == "lab" and (a.schema or a.list or a.compare)
        if os.geteuid() != 0 and not reads_only:
            _error("ctrun must run as root (try: sudo ctrun ...)")
            return 1
        net = (a.net or os.environ.get("CTRUN_NETWORK") or "ctrun0") if a.verb == "run" else None
        if a.verb == "run" and not a.detach and net not in ("none", "host"):
            # start loading pyroute2 (~160 ms) in a helper now, before anything else
            from .network.container import Plumber
            a.plumber = Plumber()
        return dispatch(a) or 0
    except CtrunError as e:
        if a.debug:
            raise
        _error(e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        if a.debug:
            raise
        from .errors import quote
        _error(f"{e.strerror or e}{': ' + quote(e.filename) if e.filename else ''}"
               " (rerun with --debug for details)")
        return 1
    finally:
        if a.plumber is not None:  # a run refused before it used its helper: reap it
            a.plumber.cancel()


if __name__ == "__main__":
    sys.exit(main())
