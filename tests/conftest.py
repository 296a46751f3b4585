"""Shared fixtures: an isolated store per test, the CLI as a user runs it, and a session-wide
leak check that fails the run if any test left a mount, cgroup, process or directory."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CGROUP_PARENT = f"ctrun-test-{os.getpid()}"
os.environ["CTRUN_CGROUP_PARENT"] = CGROUP_PARENT
# containers get no network unless a test asks for one (--net), and network tests use
# their own nftables table, so the host's real `ctrun` table is never touched
os.environ["CTRUN_NETWORK"] = "none"
NFT_TABLE = f"ctrun-test-{os.getpid()}"
os.environ["CTRUN_NFT_TABLE"] = NFT_TABLE
# the CLI subprocesses and the monitor they spawn must run this checkout, not the copy
# installed in the venv
os.environ["PYTHONPATH"] = str(REPO)
# containers get this run's own LXCFS (ctrun.runtime.lxcfs), stopped at the end: the
# host-wide one ctrun starts by default would outlive the run
LXCFS_DIR = f"/run/ctrun-test-{os.getpid()}-lxcfs"
os.environ["CTRUN_LXCFS_DIR"] = LXCFS_DIR
# every CLI call of the tests goes through its store's warm server (ctrun.server), and one
# that could not reach it fails rather than quietly running in-process
os.environ["CTRUN_SERVER"] = "require"
STORES = []
# ctrun-oci state roots of the tests (tests/integration/oci_bundle.py): a container left in
# one is a leak
OCI_ROOTS = []


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.root)
        if item.get_closest_marker("root") and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root"))


def _build_client(name, module, *defines):
    """The command as users run it: ctrun/client.c compiled as setup.sh compiles
    /usr/local/bin/`name`, for this checkout; what it does not serve itself it hands to a
    launcher of this checkout's Python `module`, which keeps PYTHONPATH as setup.sh's
    launchers do.  Removed when the run ends."""
    import atexit
    out = Path(tempfile.mkdtemp(prefix=f"{name}-test-client-"))
    atexit.register(shutil.rmtree, out, True)
    fallback = out / f"{name}-py"
    fallback.write_text(f"#!{sys.executable}\n"
                        "import sys\n"
                        "if not sys.flags.safe_path:\n"
                        "    del sys.path[0]\n"
                        f"from {module} import main\n"
                        "sys.exit(main())\n")
    fallback.chmod(0o755)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", *defines, f'-DCTRUN_FALLBACK="{fallback}"',
                    f'-DCTRUN_PACKAGE="{(REPO / "ctrun").resolve()}"', "-o", str(out / name),
                    str(REPO / "ctrun" / "client.c")], check=True)
    return [str(out / name)]


# every CLI call of the tests: the compiled client, and through it the Python one
CTRUN = _build_client("ctrun", "ctrun.client")
# every ctrun-oci call (oci_bundle, and the podman and containerd tests through their
# wrapper): the compiled ctrun-oci of this checkout, unless the caller names another
CTRUN_OCI = _build_client("ctrun-oci", "ctrun.oci.cli", "-DCTRUN_OCI")
os.environ.setdefault("CTRUN_OCI_BIN", CTRUN_OCI[0])
os.environ.setdefault("CTRUN_OCI_RUNTIME", os.environ["CTRUN_OCI_BIN"])


def until(pred, timeout=15.0, what="the condition", interval=0.05, error=AssertionError):
    """pred()'s first true value, polled every `interval` s; after `timeout` s, `error`
    (the test fails; the OCI client harness passes its HarnessError).  (test_cgroups_real
    keeps its own: it also runs alone in a guest.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise error(f"{what} did not happen in {timeout} s")


def _cgroup_dirs(parent):
    out = []
    base = Path("/sys/fs/cgroup")
    for d in [base / parent] + list(base.glob(f"*/{parent}")):
        if d.is_dir():
            out += [p for p in d.rglob("*") if p.is_dir()] + [d]
    return out


def _monitor_pids(root):
    from ctrun.state import proc_cmdlines
    return [pid for pid, cmd in proc_cmdlines()
            if b"ctrun.monitor" in (argv := cmd.split(b"\0"))
            and (root is None or str(root).encode() in argv)]


def server_pids(root):
    """The store's warm server and its workers (forked from it: the same argv)."""
    from ctrun.state import proc_cmdlines
    return [pid for pid, cmd in proc_cmdlines()
            if b"ctrun.server" in (argv := cmd.split(b"\0"))
            and (root is None or str(root).encode() in argv)]


def server_named(root, comm="ctrun-server"):
    """The pid of the store's server process named `comm` (the server itself, not one of its
    workers: ctrun-server; its spare worker: ctrun-spare), or None."""
    for pid in server_pids(root):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == comm:
                return pid
        except OSError:
            pass
    return None


def in_child(fn, size=256):
    """What fn(say) passes to say() (bytes) in a forked child, which exits after fn
    whatever happens: for a test of what a process sees once it changed its own state
    (namespaces, signal handlers) that the test process must keep."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fn(lambda data: os.write(w, data))
        except BaseException:  # noqa: BLE001 - the parent sees what it got, this says why
            import traceback
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, size)
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def zombies_of(parents):
    """(pid, ppid, comm) of zombie processes whose parent is one of `parents`."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_bytes()
        except OSError:
            continue
        comm = raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(errors="replace")
        fields = raw[raw.rindex(b")") + 2:].split()
        if fields[0] == b"Z" and int(fields[1]) in parents:
            out.append((int(d.name), int(fields[1]), comm))
    return out


def request_as(sock, uid, request):
    """What the warm server at `sock` answers `request` (a whole request: its length, then
    its fields) sent with stdio on /dev/null by a process of `uid`; one other than root
    keeps CAP_DAC_OVERRIDE, which passes the socket's file modes: SO_PEERCRED alone can
    refuse it."""
    import prctl
    import socket
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if uid:
                prctl.set_keepcaps(True)
                os.setresgid(uid, uid, uid)
                os.setgroups([])
                os.setresuid(uid, uid, uid)
                prctl.cap_effective.dac_override = True
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(sock))
            s.settimeout(20)
            devnull = os.open("/dev/null", os.O_RDWR)
            try:
                socket.send_fds(s, [request], [devnull, devnull, devnull,
                                               os.open("/", os.O_PATH)])
                out = b""
                while chunk := s.recv(64):
                    out += chunk
            except OSError:  # reset, or a broken pipe: closed unread
                out = b""
            os.write(w, out)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def stop_oci_server(root):
    """Stop the warm server of OCI state root `root` (ctrun.oci.serving), if one runs."""
    from ctrun.oci import serving
    left = serving.stop(root, timeout=15)
    assert not left, f"{root}'s ctrun-oci server {left} did not leave on SIGTERM"


def _qemu_pids():
    """QEMU processes of ctrun VMs whose working directory is in a test store."""
    from ctrun.state import proc_cmdlines
    pids = []
    for pid, cmd in proc_cmdlines():
        if b"ctrun-vm" in cmd:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if any(cwd.startswith(str(root)) for root in STORES):
                pids.append(pid)
    return pids


def cleanup_store(root):
    """Destroy every container of a test store, drain its start pools, stop its server and
    wait for its monitor to leave."""
    from ctrun import pools
    from ctrun.api import Ctrun
    from ctrun.errors import CtrunError
    ct = Ctrun(root)
    if root.exists():
        pools.drain(ct.store)  # a pool's cgroups and namespace mounts (ctrun.pools)
    for n in ct.store.container_names():
        try:
            ct.destroy(n, force=True)
        except (CtrunError, OSError) as e:  # keep cleaning; the leak check reports the rest
            print(f"cleanup of {n} failed: {e}")
    _stop_server(root)
    deadline = time.monotonic() + 5
    while _monitor_pids(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _monitor_pids(root):  # a monitor that does not leave is itself a bug
        os.kill(pid, 9)
    shutil.rmtree(root, ignore_errors=True)


def _stop_server(root):
    """The store's server is idle now (its containers are gone): SIGTERM, which ends its
    workers too (a SIGHUP each); what is left after 5 s is killed."""
    for pid in server_pids(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while server_pids(root) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in server_pids(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def own_store():
    """A store of its own in /var/tmp, destroyed afterwards (the leak check knows it)."""
    root = Path(tempfile.mkdtemp(prefix="ctrun-store-", dir="/var/tmp"))
    STORES.append(root)
    try:
        yield root
    finally:
        cleanup_store(root)


@pytest.fixture
def store(tmp_path_factory):
    with own_store() as root:
        yield root


def build_debootstrap_image(root, name, *options):
    """`ctrun image build NAME OPTIONS` into store root: the test is skipped when Debian's
    archive cannot be reached, fails on any other error."""
    r = CLI(root)("image", "build", name, *options, timeout=1800)
    if r.returncode != 0 and "cannot reach the Debian archive" in r.stderr:
        pytest.skip("no Debian archive reachable: " + r.stderr.splitlines()[-1])
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def copy_image(src_root, dst_root, name):
    """Image NAME of one store into another: its layers hard-linked, in a second or two."""
    from ctrun.images import store as images
    from ctrun.state import Store
    images.copy_image(Store(src_root), Store(dst_root), name)


# A debootstrap build takes a minute or more: each image the tests boot is built once per
# session, in a store of its own, and copied (hard links) into the stores that use it.

@pytest.fixture(scope="session")
def debian_server_store():
    """A store holding the debian-server image (systemd, sshd, cron, rsyslog)."""
    with own_store() as root:
        build_debootstrap_image(root, "debian-server")
        yield root


@pytest.fixture(scope="session")
def debian_store():
    """A store holding the debian image (tini as its command) with sysvinit-core added,
    which `run debian -- /sbin/init` boots."""
    with own_store() as root:
        build_debootstrap_image(root, "debian", "--include", "sysvinit-core")
        yield root


@pytest.fixture
def ct(store):
    from ctrun.api import Ctrun
    return Ctrun(store)


class CLI:
    def __init__(self, root):
        self.root = root

    def __call__(self, *args, input=None, check=False, timeout=60):
        r = subprocess.run([*CTRUN, "--root", str(self.root), *args],
                           capture_output=True, text=True, input=input, timeout=timeout,
                           cwd=REPO)
        if check and r.returncode != 0:
            raise AssertionError(f"ctrun {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def json(self, *args):
        return json.loads(self(*args, check=True).stdout)

    def wait_state(self, name, want="running", timeout=20.0):
        """Poll `inspect` until the container reaches `want` (fails the test otherwise)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self("inspect", name)
            if r.returncode == 0 and json.loads(r.stdout)["state"] == want:
                return json.loads(r.stdout)
            time.sleep(0.05)
        raise AssertionError(f"container {name} did not become {want} in {timeout} s")


@pytest.fixture
def cli(store):
    return CLI(store)


def sigterm_attached_run(cli, name, argv, booted):
    """`ctrun run --rm --name NAME ARGV...` attached, as `timeout` runs it: once booted()
    returns, the CLI gets SIGTERM; returns the CLI's exit code after checking that --rm
    removed the container.  Whatever happens, nothing of it is left."""
    p = subprocess.Popen([*CTRUN, "--root", str(cli.root), "run", "--rm",
                          "--name", name, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        booted()
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=60)
        assert cli("inspect", name).returncode != 0, p.stderr.read()   # --rm removed it
        return code
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        cli("destroy", "--force", name)


@contextlib.contextmanager
def bridge_network(cli, name, subnet, *options):
    """A network of the test's own (bridge, subnet, nftables rules); afterwards every
    container of the store is destroyed and the network removed, which must succeed.
    options: more `network create` arguments."""
    cli("network", "create", name, "--subnet", subnet, *options, check=True)
    try:
        yield name
    finally:
        for row in json.loads(cli("list", "-a", "--format", "json").stdout or "[]"):
            cli("destroy", "-f", row["name"])
        r = cli("network", "rm", name)
        assert r.returncode == 0, r.stderr


def _pool_of_another_store(mountpoint):
    """A start pool's namespace (ctrun.pools) of a store not of this run: the live server
    of the host's own store (setup.sh used it) fills and drains its pools when it will."""
    path = Path(mountpoint)
    return path.parent.match("run/netns") and path.name.startswith("pool-") and \
        path.parents[2] not in STORES


def leaks():
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "fuse.lxcfs" and \
                not fields[4].startswith(LXCFS_DIR + "/"):
            continue  # the host's LXCFS (or another run's): a shared service, not this run's
        if _pool_of_another_store(fields[4]):
            continue
        if "ctrun" in line:
            found.append("mount: " + fields[4])
    for d in _cgroup_dirs(CGROUP_PARENT):  # the parent too: ctrun removes it once empty
        found.append(f"cgroup: {d}")
    for root in STORES:
        for pid in _monitor_pids(root):
            found.append(f"process: ctrun monitor {pid} of {root}")
        for pid in server_pids(root):
            found.append(f"process: ctrun server {pid} of {root}")
    for root in STORES:
        if root.exists():
            found.append(f"directory: {root}")
    from ctrun.oci.serving import server_pids as oci_server_pids
    for root in OCI_ROOTS:
        if root.is_dir():
            found += [f"ctrun-oci container: {p}" for p in root.iterdir()
                      if not p.name.startswith(".")]
        found += [f"process: ctrun-oci server {pid} of {root}"
                  for pid in oci_server_pids(root)]
    for pid in _qemu_pids():
        found.append(f"process: qemu {pid} of a test VM")
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split(": ")[1].split("@")[0]
        if name.startswith(("veth", "vc", "ctrt", "ct-t")) or (
                name.startswith("ctrun") and name != "ctrun0"):
            found.append(f"interface: {name}")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    if NFT_TABLE in tables:
        found.append(f"nftables table: {NFT_TABLE}")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in netns.splitlines():
        if line.startswith("ctrt"):
            found.append(f"netns: {line.split()[0]}")
    return found


@pytest.fixture(scope="session", autouse=True)
def leak_check():
    """Fails the run when anything a test created is still on the host afterwards."""
    yield
    from ctrun.runtime import lxcfs
    lxcfs.stop(LXCFS_DIR)
    time.sleep(0.2)
    found = leaks()
    for d in sorted(_cgroup_dirs(CGROUP_PARENT), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass
    if found:
        pytest.fail("tests leaked host resources:\n  " + "\n  ".join(found), pytrace=False)


@pytest.fixture(scope="session")
def probe(tmp_path_factory):
    """The static in-container probe (tests/probe/probe.c), built once."""
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(REPO / "tests/probe/probe.c")],
                   check=True)
    return out
