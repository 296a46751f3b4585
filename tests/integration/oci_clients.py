"""The real OCI clients (podman with conmon and netavark, containerd with its runc v2 shim)
driving the runtime under test, each in private roots, for the tests and bench_oci.py.

The runtime under test is $CTRUN_OCI_RUNTIME (default /usr/local/bin/ctrun-oci); with
CTRUN_OCI_RUNTIME=/usr/sbin/runc the same tests check the harness against runc.  A client
never calls it directly: it calls a logging wrapper (Wrapper) that appends its argv, one JSON
line per call, to a log and execs the runtime, so a test can assert which verbs the client
called and with what.

Everything a client makes lives in directories of the harness's own (their names hold
"ctrun", so the session leak check sees a mount left there) and in a cgroup parent the
caller names; what a client still writes outside them (podman's lock and IPAM files, netavark's
iptables chains, containerd's shim socket dir...) is snapshotted before (HostState) and
removed afterwards if it is new.  Teardown runs even when a test fails and reports what it
had to remove by force (a client or the runtime should have removed it itself).

Fixtures (import them into a test module by name):
  oci_runtime      the runtime's path (fails, naming the fix, when it is not executable)
  oci_wrapper      the Wrapper standing in for it (module-wide; mark() / since())
  busybox_archive  ctrun's busybox image as an OCI archive named IMAGE
  podman           a Podman (module-wide) with IMAGE loaded and a bridge `podman.network`
  containerd       a running Containerd (module-wide) with IMAGE imported
  oci_calls        the session's CallLog; CTRUN_OCI_CALLS=FILE writes it as markdown
A missing client binary fails the test with the Debian package to install; it never skips.

pytest is optional at import: benchmarks/bench_oci.py uses the classes with Debian's python
(all but Containerd, whose start polls with conftest's until).
"""

import contextlib
import hashlib
import ipaddress
import io
import json
import os
import pty
import select
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

RUNTIME_ENV = "CTRUN_OCI_RUNTIME"
DEFAULT_RUNTIME = "/usr/local/bin/ctrun-oci"
IMAGE = "localhost/ctrun-oci-busybox:test"

# binary -> the Debian package shipping it (a missing client is a failure, never a skip)
PACKAGES = {"podman": "podman", "conmon": "conmon", "/usr/lib/podman/netavark": "netavark",
            "containerd": "containerd", "ctr": "containerd",
            "containerd-shim-runc-v2": "containerd", "iptables": "iptables"}

# runc's global flags that take a value: the verb is the first word after them
_VALUED_GLOBALS = {"--root", "--log", "--log-format", "--criu", "--rootless"}


class HarnessError(RuntimeError):
    pass


def require(binary):
    """The path of a client binary, or a one-line error naming its Debian package."""
    path = binary if binary.startswith("/") and os.access(binary, os.X_OK) \
        else shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not path:
        raise HarnessError(f"{binary} is not installed; apt-get install "
                           f"{PACKAGES.get(binary, binary)} (setup.sh lists it)")
    return path


def runtime_under_test():
    """$CTRUN_OCI_RUNTIME, or ctrun-oci where setup.sh installs it."""
    path = os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
    if not os.access(path, os.X_OK):
        raise HarnessError(f"the runtime under test {path} is not executable; install it "
                           f"(./setup.sh) or set {RUNTIME_ENV}, e.g. {RUNTIME_ENV}=/usr/sbin/runc")
    return path


def run(argv, timeout=120, env=None, check=False, input=None):
    p = subprocess.run(argv, stdin=None if input is not None else subprocess.DEVNULL,
                       input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise HarnessError(f"`{shlex.join(argv)}` failed ({p.returncode}): "
                           f"{(p.stderr.strip() or p.stdout.strip())[-2000:]}")
    return p


def in_pty(argv, env=None, timeout=60):
    """Run argv with a new pty as its controlling terminal and stdio, as a user's terminal
    would: (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execve(argv[0], argv, env if env is not None else os.environ)
        finally:
            os._exit(127)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise HarnessError(f"`{shlex.join(argv)}` on a pty did not finish in "
                                   f"{timeout} s; output so far: {out[-500:]!r}")
            if not select.select([fd], [], [], min(left, 0.1))[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:   # EIO: every holder of the pty's slave side closed it
                break
            if not chunk:
                break
            out += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def cgroup_of(pid, controller):
    """The directory of pid's cgroup for a v1 controller, else its cgroup v2 directory."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return Path(f"/sys/fs/cgroup/{controller}{path}")
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup" + line[3:])
    raise HarnessError(f"process {pid} has no {controller} cgroup")


def frozen(pid):
    """Whether the freezer holds pid's cgroup (v1 freezer.state, v2 cgroup.events)."""
    cg = cgroup_of(pid, "freezer")
    if (cg / "freezer.state").exists():
        return (cg / "freezer.state").read_text().strip() == "FROZEN"
    return "frozen 1" in (cg / "cgroup.events").read_text()


# ------------------------------------------------------------------ the logging wrapper
WRAPPER = """#!/usr/bin/python3 -S
# written by ctrun's OCI client tests: log this call, then become the runtime under test
import json, os, sys, time
argv = sys.argv[1:]
# the environment as the client gave it (Python's locale coercion may have added to environ)
with open("/proc/self/environ", "rb") as f:
    env = dict(v.split(b"=", 1) for v in f.read().split(b"\\0") if b"=" in v)
line = json.dumps({{"t": time.time(), "pid": os.getpid(), "argv": argv,
                   "env": sorted(k.decode() for k in env)}}) + "\\n"
fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
os.write(fd, line.encode())
os.close(fd)
root = {root!r}
if root and not any(a == "--root" or a.startswith("--root=") for a in argv):
    argv = ["--root", root] + argv
env.update((k.encode(), v.encode()) for k, v in {env!r}.items())
os.execve({real!r}, [{real!r}] + argv, env)
"""


class Wrapper:
    """An executable placed as the client's runtime: logs every call's argv (one JSON line)
    to `log` and execs `real`.  A call without --root (rootful podman names none, so the
    runtime would keep its state in the host's default directory) gets `--root root` added
    AFTER it is logged: the log holds what the client sent.  `env` is added to the
    environment the client gave (conmon gives the runtime only PATH, podman's exit command
    not even that: PYTHONPATH makes a Python runtime run the checkout under test).
    calls() reads the log back (argv, and the names of the variables the client set);
    mark() / since() give the calls one client command made."""

    def __init__(self, directory, real, name="ctrun-oci", root=None, env=None):
        self.real = real
        self.root = Path(root) if root else Path(directory) / "state"
        self.path = Path(directory) / name
        self.log = Path(directory) / f"{name}.calls.jsonl"
        self.path.write_text(WRAPPER.format(log=str(self.log), real=real, root=str(self.root),
                                            env=dict(env or {})))
        self.path.chmod(0o755)
        self._mark = 0

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(ln) for ln in self.log.read_text().splitlines() if ln.strip()]

    def mark(self):
        self._mark = len(self.calls())

    def since(self, full=False):
        """argv of every call after the last mark() (full: the log entries)."""
        new = self.calls()[self._mark:]
        return new if full else [c["argv"] for c in new]


def verb(argv):
    """The runc verb of a runtime call: the first word after the global flags."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            i += 1 if "=" in a or a not in _VALUED_GLOBALS else 2
            continue
        return a
    return None


def verbs(calls):
    return [verb(a) for a in calls]


# ------------------------------------------------------------------ the image
def _tar_add(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _blob(tar, data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    _tar_add(tar, f"blobs/sha256/{digest}", data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def oci_archive(rootfs, out, ref=IMAGE, cmd=("sh",)):
    """An OCI image layout tarball (what `podman load` and `ctr image import` read) of one
    uncompressed layer holding the directory rootfs, owned by root, named ref."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        def owner(info):
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            return info
        for entry in sorted(os.listdir(rootfs)):
            t.add(os.path.join(rootfs, entry), arcname=entry, filter=owner)
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": list(cmd)},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        lay = _blob(t, layer, "application/vnd.oci.image.layer.v1.tar")
        cfg = _blob(t, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg, "layers": [lay]}
        man = _blob(t, json.dumps(manifest).encode(), manifest["mediaType"])
        man.update(platform={"architecture": "amd64", "os": "linux"},
                   annotations={"io.containerd.image.name": ref,
                                "org.opencontainers.image.ref.name": ref})
        _tar_add(t, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _tar_add(t, "index.json", json.dumps({"schemaVersion": 2, "manifests": [man]}).encode())
    return out


def busybox_rootfs(dest):
    """ctrun's busybox image (Debian's static busybox, its applets, /etc skeleton) built
    in-process into the new directory dest."""
    from ctrun.images import recipe
    dest = Path(dest)
    dest.mkdir()
    recipe.build(recipe.load_recipe("busybox"), dest)
    return dest


# ------------------------------------------------------------------ host state
def _links():
    return set(os.listdir("/sys/class/net"))


def _netns():
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _ipt(tool, table):
    p = run([tool, "-w", "-t", table, "-S"], timeout=30)
    return p.stdout.splitlines() if p.returncode == 0 else []


def _nft_tables():
    p = run(["nft", "list", "tables"], timeout=30)
    return set(p.stdout.splitlines()) if p.returncode == 0 else set()


def _mounts():
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f]


def cgroup_mounts():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] in ("cgroup", "cgroup2"):
                out.append(left.split()[4])
    return out


def cgroup_dirs(rel):
    """Every cgroup directory at or below /rel in every hierarchy, deepest first."""
    out = []
    for mnt in cgroup_mounts():
        base = Path(mnt) / rel.strip("/")
        if base.is_dir():
            out += [Path(d) for d, _, _ in os.walk(base)]
    return sorted(out, key=lambda p: len(p.parts), reverse=True)


def _procs(d):
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_cgroups(rel, problems, what, shared=()):
    """rmdir every cgroup at or below /rel.  /rel itself is the parent the client was given
    and `shared` the cgroups it makes below it for all its containers (podman's conmon):
    it leaves those.  Any other is a container's, which the client or the runtime should
    have removed: reported (its processes killed first)."""
    for d in cgroup_dirs(rel):
        procs = _procs(d)
        if procs or d.name not in (Path(rel).name, *shared):
            problems.append(f"{what}: cgroup {d} left" + (f" holding processes {procs}: killed"
                                                         if procs else ""))
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        for _ in range(40):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        else:
            problems.append(f"{what}: cgroup {d} could not be removed")


class HostState:
    """What a client writes outside its private directories, as it was before; restore()
    removes what is new of it and returns one line per thing removed.  Only what the client
    is known to make is looked at (its bridges, its netns, NETAVARK iptables chains, the
    paths and top-level cgroups it names): other tests may be making interfaces on this host
    at the same time.  The one snapshot of podman's host state: benchmarks/bench_network.py
    uses it too."""

    IPT_TABLES = ("nat", "filter")

    def __init__(self, paths=(), bridges=(), cgroups=()):
        self.paths = {p: os.path.lexists(p) for p in paths}
        self.bridges = [b for b in bridges if b not in _links()]
        # podman's own parent (libpod_parent) when it is given no --cgroup-parent
        self.cgroups = [c for c in cgroups if not cgroup_dirs(c)]
        self.netns, self.nft = _netns(), _nft_tables()
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
        self.ipt = {(tool, t): set(_ipt(tool, t))
                    for tool in ("iptables", "ip6tables") if shutil.which(tool)
                    for t in self.IPT_TABLES}

    def restore(self):
        """(what the client should have removed itself, what it is expected to leave)."""
        leaks, done = [], []
        for name in self.bridges:
            if name in _links():
                ports = os.listdir(f"/sys/class/net/{name}/brif") \
                    if os.path.isdir(f"/sys/class/net/{name}/brif") else []
                for port in ports:
                    run(["ip", "link", "del", port], timeout=30)
                run(["ip", "link", "del", name], timeout=30)
                leaks.append(f"bridge {name}" + (f" and its ports {ports}" if ports else ""))
        for name in sorted(_netns() - self.netns):
            if not name.startswith("netns-"):   # podman's; others are not ours
                continue
            path = f"/run/netns/{name}"
            if path in _mounts():
                subprocess.run(["umount", "-l", path], capture_output=True)
            with contextlib.suppress(OSError):
                os.unlink(path)
            leaks.append(f"netns {name}")
        for (tool, t), before in self.ipt.items():
            new = [ln for ln in _ipt(tool, t) if ln not in before and "NETAVARK" in ln]
            for ln in new:   # rules first (they may jump to the chains), then the chains
                if ln.startswith("-A "):
                    run([tool, "-w", "-t", t, "-D", *shlex.split(ln)[1:]], timeout=30)
            for ln in new:
                if ln.startswith("-N "):
                    run([tool, "-w", "-t", t, "-F", ln.split()[1]], timeout=30)
                    run([tool, "-w", "-t", t, "-X", ln.split()[1]], timeout=30)
            if new:
                done.append(f"{tool} -t {t}: {len(new)} NETAVARK rule(s)/chain(s)")
        for table in sorted(_nft_tables() - self.nft):
            # iptables-nft makes `ip nat`/`ip filter` on first use; keep one holding rules
            fam, name = table.split()[1:3]
            if name not in self.IPT_TABLES:
                continue
            p = run(["nft", "-j", "list", "table", fam, name], timeout=30)
            if p.returncode == 0 and '"rule"' not in p.stdout:
                run(["nft", "delete", "table", fam, name], timeout=30)
                done.append(f"nft table {fam} {name} (empty)")
        new = [p for p, existed in self.paths.items() if not existed and os.path.lexists(p)]
        for p in new:
            if any(p.startswith(q + "/") for q in new):
                continue   # goes with its (also new) parent
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            done.append(p)
        for rel in self.cgroups:
            removed = 0
            for d in cgroup_dirs(rel):
                procs = _procs(d)
                if procs:
                    leaks.append(f"cgroup {d} still holds processes {procs}: left in place")
                    continue
                with contextlib.suppress(OSError):
                    d.rmdir()
                    removed += 1
            if removed:
                done.append(f"{removed} empty cgroup dir(s) /{rel}")
        if Path("/proc/sys/net/ipv4/ip_forward").read_text() != self.ip_forward:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
            done.append("net.ipv4.ip_forward put back")
        return leaks, done


def umount_under(*dirs):
    """Unmount everything below dirs, deepest first; returns the mount points."""
    marks = [str(d).rstrip("/") + "/" for d in dirs]
    left = sorted({m for m in _mounts() if any((m + "/").startswith(k) for k in marks)},
                  key=len, reverse=True)
    for m in left:
        subprocess.run(["umount", "-l", m], capture_output=True)
    return left


def private_dirs(label):
    """(a data dir in /var/tmp, a short run dir in /run: podman refuses a runroot longer
    than 50 characters, and unix socket paths must stay short)."""
    return (Path(tempfile.mkdtemp(prefix=f"ctrun-oci-{label}-", dir="/var/tmp")),
            Path(tempfile.mkdtemp(prefix=f"ctrun-oci-{label}-", dir="/run")))


# ------------------------------------------------------------------ podman
class Podman:
    """Rootful podman (conmon, netavark) with every directory of its own and its own
    containers.conf: the runtimes table names `runtimes` ({name: path}), the ulimits this
    host can grant (root may not raise rlimits here), cgroupfs, a file events log, and one
    bridge network `network` of its own (bridge `bridge`, `subnet`).  cmd() adds --root /
    --runroot; every container must be made with create_args() (its cgroup parent).
    teardown() removes containers, images, networks and everything it wrote on the host."""

    # what rootful podman 4.3 / netavark 1.4 write outside its private directories: these
    # paths, its default bridge, and its default cgroup parent (with no --cgroup-parent)
    HOST_PATHS = ("/dev/shm/libpod_lock", "/run/containers/networks", "/run/containers",
                  "/var/lib/containers/cache", "/var/lib/containers", "/run/libpod",
                  "/etc/containers/networks")
    BRIDGES = ("podman0", "cni-podman0")
    CGROUP_PARENT = "libpod_parent"

    @classmethod
    def host_state(cls, bridges=(), cgroups=()):
        """The HostState of what podman writes on the host, plus `bridges` and `cgroups`
        (the bridge of a network of the caller's, podman's CGROUP_PARENT)."""
        return HostState(cls.HOST_PATHS, (*bridges, *cls.BRIDGES), cgroups)

    def __init__(self, runtimes, cgroup_parent, network=None, bridge=None, subnet=None,
                 default_runtime=None):
        for b in ("podman", "conmon", "/usr/lib/podman/netavark", "iptables"):
            require(b)
        self.cgroup_parent = "/" + cgroup_parent.strip("/")
        self.network, self.bridge, self.subnet = network, bridge, subnet
        self.problems = []
        self.host = self.host_state([bridge] if bridge else [])
        self.cleaned = []
        self.dir, self.rundir = private_dirs("podman")
        self.root, self.runroot = self.dir / "root", self.rundir / "rr"
        for d in (self.root, self.runroot, self.dir / "tmp", self.dir / "netconf",
                  self.dir / "copytmp", self.dir / "libpod-tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "containers.conf"
        self.storage_conf = self.dir / "storage.conf"
        table = "".join(f'{n} = ["{p}"]\n' for n, p in runtimes.items())
        names = ", ".join(f'"{n}"' for n in ["crun", "runc", "kata", "runsc", "krun",
                                                *runtimes])
        self.conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'runtime = "{default_runtime or next(iter(runtimes))}"\n'
            f'tmp_dir = "{self.dir / "libpod-tmp"}"\n'
            f'static_dir = "{self.root / "libpod"}"\n'
            f'volume_path = "{self.root / "volumes"}"\n'
            f'image_copy_tmp_dir = "{self.dir / "copytmp"}"\n'
            # runc's peers: told to write their errors as JSON (--log-format json)
            f"runtime_supports_json = [{names}]\n"
            "[engine.runtimes]\n" + table +
            "[network]\n"
            'network_backend = "netavark"\n'
            + (f'default_network = "{network}"\n' if network else "") +
            f'network_config_dir = "{self.dir / "netconf"}"\n')
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root}"\n'
            f'runroot = "{self.runroot}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf),
                    "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
                    "TMPDIR": str(self.dir / "tmp"),
                    "XDG_RUNTIME_DIR": str(self.rundir)}
        self.images = []
        if network:
            self.write_network()

    def cmd(self, *args):
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
                "--tmpdir", str(self.dir / "libpod-tmp"), *args]

    def __call__(self, *args, timeout=120, check=False, input=None):
        return run(self.cmd(*args), timeout=timeout, env=self.env, check=check, input=input)

    def create_args(self):
        """Options every `run`/`create` needs: its cgroups go below the caller's parent."""
        return ["--cgroup-parent", self.cgroup_parent]

    def load(self, archive):
        self("load", "-i", str(archive), check=True)
        self.images.append(IMAGE)
        return IMAGE

    def write_network(self):
        """The bridge network (podman's default here), defined in the private config dir
        as `podman network create` would, but with the bridge named self.bridge (a name the
        session leak check watches; podman 4.3 cannot name it) and no DNS server."""
        net = ipaddress.ip_network(self.subnet)
        (self.dir / "netconf" / f"{self.network}.json").write_text(json.dumps({
            "name": self.network, "id": hashlib.sha256(self.network.encode()).hexdigest(),
            "driver": "bridge", "network_interface": self.bridge,
            "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": str(net), "gateway": str(net[1])}],
            "ipv6_enabled": False, "internal": False, "dns_enabled": False,
            "ipam_options": {"driver": "host-local"}}))

    def background(self):
        """podman processes still working on this store: conmon's exit command (`podman
        container cleanup`) may outlive the client command."""
        mark = str(self.root)
        return [p for p in _pids() if p != os.getpid() and mark in (c := _cmdline(p))
                and os.path.basename(c.split(" ")[0]) == "podman"]

    def settle(self, timeout=20):
        left = self.background()
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if _alive(p)]
        return left

    def teardown(self):
        """Everything podman made goes; returns the problems (what had to go by force)."""
        p = self.problems
        for pid in self.settle():
            p.append(f"podman process {pid} ({_cmdline(pid)[:100]}) still running: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ids = self("ps", "-aq").stdout.split()
        if ids:
            r = self("rm", "-af", "-t", "0", timeout=180)
            if r.returncode != 0:
                p.append(f"podman rm -af: {r.stderr.strip()[-300:]}")
        for img in self.images:
            self("rmi", "-f", img)
        self.settle()
        # (no `podman system reset`: it also clears host-wide caches; the overlay driver's
        # mounts go with their containers, and any left is reported below)
        left = umount_under(self.dir, self.rundir)
        if left:
            p.append(f"mounts left by podman: {', '.join(left)}")
        remove_cgroups(self.cgroup_parent, p, "podman", shared=("conmon",))
        leaks, self.cleaned = self.host.restore()
        p += [f"left by podman, removed: {what}" for what in leaks]
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)
        return p


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _alive(pid):
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return raw[raw.rindex(b")") + 2:].split()[0] != b"Z"


# ------------------------------------------------------------------ containerd
class Containerd:
    """containerd started as a child with its own --root, --state, --address and config (no
    CRI plugin, the native snapshotter), in namespace `namespace`; ctr() is its client.
    Containers made by ctr run get their cgroup below /cgroup_parent (run_args()), and the
    runc v2 shim keeps the runtime's state in a private --runc-root."""

    # the runc v2 shim of containerd 1.6 puts its sockets in /run/containerd/s whatever
    # --state says
    HOST_PATHS = ("/run/containerd/s", "/run/containerd")

    def __init__(self, cgroup_parent, namespace="ctrun-oci-test"):
        for b in ("containerd", "ctr", "containerd-shim-runc-v2"):
            require(b)
        self.cgroup_parent = "/" + cgroup_parent.strip("/")
        self.namespace = namespace
        self.problems = []
        self.host = HostState(self.HOST_PATHS)
        self.cleaned = []
        self.dir, self.rundir = private_dirs("containerd")
        self.root, self.state = self.dir / "root", self.rundir / "state"
        self.address = self.rundir / "containerd.sock"
        self.runc_root = self.rundir / "runc"
        self.config = self.dir / "config.toml"
        disabled = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp"]
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            f"disabled_plugins = {json.dumps(disabled)}\n"
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            "[metrics]\n"
            '  address = ""\n'
            '[plugins."io.containerd.service.v1.diff-service"]\n'
            '  default = ["walking"]\n'
            '[plugins."io.containerd.gc.v1.scheduler"]\n'
            "  pause_threshold = 0.02\n")
        self.log = self.dir / "containerd.log"
        self.proc = None

    def start(self, timeout=30):
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config), "--root", str(self.root),
                 "--state", str(self.state), "--address", str(self.address)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        def ready():
            if self.proc.poll() is not None:
                raise HarnessError(f"containerd exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-1500:]}")
            return self.address.exists() and self("version").returncode == 0
        from conftest import until   # (containerd runs under pytest only: its fixture)
        until(ready, timeout, f"containerd answering on {self.address}", interval=0.1,
              error=HarnessError)
        return self

    def cmd(self, *args):
        return ["ctr", "--address", str(self.address), "--namespace", self.namespace, *args]

    def __call__(self, *args, timeout=120, check=False, input=None):
        return run(self.cmd(*args), timeout=timeout, check=check, input=input)

    def run_args(self, runtime, cid):
        """`ctr run` options putting the task on the runtime (through the runc v2 shim) in
        a cgroup below the caller's parent."""
        return ["--runc-binary", str(runtime), "--runc-root", str(self.runc_root),
                "--cgroup", f"{self.cgroup_parent}/{cid}"]

    def import_image(self, archive):
        self("image", "import", str(archive), check=True)
        return IMAGE

    def shims(self):
        mark = str(self.address)
        return [p for p in _pids() if "containerd-shim" in _cmdline(p)
                and mark in _cmdline(p)]

    def teardown(self):
        p = self.problems
        if self.proc and self.proc.poll() is None:
            for task in self("task", "ls", "-q").stdout.split():
                self("task", "kill", "-s", "SIGKILL", task)
                r = self("task", "delete", "-f", task)
                p.append(f"containerd task {task} left running by the test: killed"
                         + ("" if r.returncode == 0 else f" ({r.stderr.strip()})"))
            for c in self("container", "ls", "-q").stdout.split():
                self("container", "delete", c)
            for img in self("image", "ls", "-q").stdout.split():
                self("image", "rm", "--sync", img)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.append("containerd did not exit 20 s after SIGTERM: killed")
                self.proc.kill()
                self.proc.wait()
        for pid in self.shims():
            p.append(f"containerd shim {pid} outlived containerd: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = umount_under(self.dir, self.rundir)
        if left:
            p.append(f"mounts left by containerd: {', '.join(left)}")
        remove_cgroups(self.cgroup_parent, p, "containerd")
        leaks, self.cleaned = self.host.restore()
        p += [f"left by containerd, removed: {what}" for what in leaks]
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)
        return p


# ------------------------------------------------------------------ the calls, as a note
class CallLog:
    """Each client command a test ran and the runtime calls it made, with the harness's
    private paths and the 64-hex container ids replaced by names; written out as markdown
    (CallLog.write) for the issue's note."""

    def __init__(self):
        self.entries = []   # (client, what, client argv, [runtime argv])
        self.subs = {}

    def substitute(self, path, name):
        self.subs[str(path)] = name

    # the random parts of temporary names and pids, so that the note compares run to run
    _VARYING = ((r"\b[0-9a-f]{64}\b", "<id>"), (r"/proc/[0-9]+/", "/proc/<pid>/"),
                (r"(/tmp/runc-process|/tmp/pty|exec-process-)[0-9]+", r"\1<n>"),
                (r"(conmon-term\.)\w+", r"\1<x>"))

    def _clean(self, text):
        import re
        for path, name in sorted(self.subs.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(path, name)
        for pattern, repl in self._VARYING:
            text = re.sub(pattern, repl, text)
        return text

    def traced(self, wrapper, client, what, argv, runner, settle=None):
        """runner() (a client command: argv as recorded), then settle() (the client's
        background work); returns (its result, the runtime argv it made, in order)."""
        wrapper.mark()
        result = runner()
        if settle:
            settle()
        calls = wrapper.since(full=True)
        self.add(client, what, argv, calls)
        return result, [c["argv"] for c in calls]

    @staticmethod
    def _env(names):
        """What environment the client gave the runtime, in a few words."""
        if len(names) > 4:
            return f"the client's own environment ({len(names)} variables)"
        return "environment: " + (" ".join(names) if names else "empty")

    def add(self, client, what, client_argv, calls):
        self.entries.append((client, what, self._clean(shlex.join(client_argv)),
                             [self._clean(shlex.join(["RUNTIME", *c["argv"]]))
                              + f"    # {self._env(c.get('env', []))}" for c in calls]))

    def markdown(self):
        out = ["# The runtime calls of podman and containerd",
               "",
               "Recorded by tests/integration/test_oci_podman.py and test_oci_containerd.py "
               "(the logging wrapper, tests/integration/oci_clients.py): each client command "
               "and every command line it made the runtime run, in order.  RUNTIME is the "
               "runtime under test; `<id>` a 64-hex container id; `$...` the harness's "
               "private directories.  Regenerate with "
               "`CTRUN_OCI_CALLS=tests/integration/oci_calls.md pytest "
               "tests/integration/test_oci_podman.py tests/integration/test_oci_containerd.py`.",
               ""]
        for client in dict.fromkeys(e[0] for e in self.entries):
            out += [f"## {client}", ""]
            for c, what, argv, calls in self.entries:
                if c != client:
                    continue
                out += [f"### {what}", "", "```", f"$ {argv}"]
                out += [f"  {ln}" for ln in calls] or ["  (no runtime call)"]
                out += ["```", ""]
        return "\n".join(out)


def runtime_leftovers(wrapper, *roots):
    """Containers still in the runtime's state dirs once the client removed its own: what
    the client's delete did not remove.  Each is deleted (--force) and reported."""
    out = []
    for root in (wrapper.root, *roots):
        if not Path(root).is_dir():
            continue
        for cid in sorted(os.listdir(root)):
            if cid.startswith(".") or not (Path(root) / cid).is_dir():
                continue   # a lock, the runtime's cache: not a container
            r = run([wrapper.real, "--root", str(root), "delete", "--force", cid], timeout=60)
            out.append(f"runtime state of {cid} left in {root}: deleted"
                       + ("" if r.returncode == 0 else f" (failed: {r.stderr.strip()})"))
    return out


try:
    import pytest
except ModuleNotFoundError:   # benchmarks/bench_oci.py: the harness without the fixtures
    pytest = None

if pytest:
    CALLS = CallLog()

    def _fail_on(what, fn):
        try:
            return fn()
        except HarnessError as e:
            pytest.fail(f"{what}: {e}", pytrace=False)

    def _stop_servers(*roots):
        """The warm servers ctrun-oci started for the client's roots (none on runc): stopped,
        and the roots known to the session's leak check."""
        from conftest import OCI_ROOTS, stop_oci_server
        for root in roots:
            OCI_ROOTS.append(Path(root))
            stop_oci_server(root)

    def _tidy_parent(parent):
        """The test session's cgroup parent goes once empty (the leak check reports it)."""
        for mnt in cgroup_mounts():
            with contextlib.suppress(OSError):
                (Path(mnt) / parent).rmdir()

    @pytest.fixture(scope="session")
    def oci_runtime():
        """The runtime under test: $CTRUN_OCI_RUNTIME or /usr/local/bin/ctrun-oci."""
        return _fail_on("runtime", runtime_under_test)

    @pytest.fixture(scope="session")
    def oci_calls():
        """The session's CallLog; written to $CTRUN_OCI_CALLS at the end when set."""
        yield CALLS
        out = os.environ.get("CTRUN_OCI_CALLS")
        if out and CALLS.entries:
            Path(out).write_text(CALLS.markdown())

    @pytest.fixture(scope="session")
    def busybox_archive(tmp_path_factory, oci_calls):
        """An OCI archive of ctrun's busybox image, named IMAGE."""
        d = tmp_path_factory.mktemp("oci-image")
        out = oci_archive(busybox_rootfs(d / "rootfs"), d / "busybox-oci.tar")
        oci_calls.substitute(out, "busybox-oci.tar")
        return out

    @pytest.fixture(scope="module")
    def oci_wrapper(tmp_path_factory, oci_runtime):
        """The logging wrapper around the runtime under test (module-wide: mark() before a
        client command, since() after it)."""
        keep = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
        return Wrapper(tmp_path_factory.mktemp("oci-wrapper"), oci_runtime, env=keep)

    @pytest.fixture(scope="module")
    def podman(oci_wrapper, busybox_archive, oci_calls):
        """Podman in private roots with the wrapper registered as runtime `ctrun-oci` (and the
        default), IMAGE loaded and a bridge network of its own (podman.network); its
        containers' cgroups go below the session's cgroup parent."""
        parent = os.environ.get("CTRUN_CGROUP_PARENT", f"ctrun-test-{os.getpid()}")
        n = os.getpid() % 100000
        pm = _fail_on("podman", lambda: Podman(
            {"ctrun-oci": str(oci_wrapper.path)}, f"{parent}/podman", network=f"ctrtpm{n}",
            bridge=f"ctrtpm{n}", subnet=f"10.218.{20 + os.getpid() % 200}.0/24"))
        oci_calls.substitute(f"/{parent}/", "/$CGROUP_PARENT/")
        oci_calls.substitute(pm.network, "$NETWORK")
        for path, name in ((pm.root, "$PODMAN_ROOT"), (pm.runroot, "$PODMAN_RUNROOT"),
                           (pm.dir, "$PODMAN_DIR"),
                           (pm.rundir, "$PODMAN_RUNDIR"), (oci_wrapper.path, "$WRAPPER")):
            oci_calls.substitute(path, name)
        try:
            _fail_on("podman load", lambda: pm.load(busybox_archive))
            yield pm
        finally:
            problems = pm.teardown() + runtime_leftovers(oci_wrapper)
            _stop_servers(oci_wrapper.root)
            _tidy_parent(parent)
            if problems:
                pytest.fail("podman teardown:\n  " + "\n  ".join(problems), pytrace=False)

    @pytest.fixture(scope="module")
    def containerd(busybox_archive, oci_calls, oci_wrapper):
        """containerd started in private roots (stopped afterwards) with IMAGE imported;
        `containerd(...)` runs ctr against it, run_args(wrapper, ID) go on every `ctr run`."""
        parent = os.environ.get("CTRUN_CGROUP_PARENT", f"ctrun-test-{os.getpid()}")
        ctd = _fail_on("containerd", lambda: Containerd(f"{parent}/containerd"))
        oci_calls.substitute(f"/{parent}/", "/$CGROUP_PARENT/")
        for path, name in ((ctd.state, "$CONTAINERD_STATE"), (ctd.root, "$CONTAINERD_ROOT"),
                           (ctd.runc_root, "$RUNTIME_ROOT"), (ctd.address, "$CONTAINERD_SOCK"),
                           (ctd.dir, "$CONTAINERD_DIR"), (ctd.rundir, "$CONTAINERD_RUNDIR"),
                           (oci_wrapper.path, "$WRAPPER")):
            oci_calls.substitute(path, name)
        try:
            _fail_on("containerd start", ctd.start)
            _fail_on("ctr image import", lambda: ctd.import_image(busybox_archive))
            yield ctd
        finally:
            problems = ctd.teardown() + runtime_leftovers(oci_wrapper,
                                                          ctd.runc_root / ctd.namespace)
            _stop_servers(oci_wrapper.root, ctd.runc_root / ctd.namespace)
            _tidy_parent(parent)
            if problems:
                pytest.fail("containerd teardown:\n  " + "\n  ".join(problems),
                            pytrace=False)
