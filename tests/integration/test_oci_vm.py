"""ctrun-oci's VM mode (annotation ctrun.mode=vm): a bundle booted by real QEMU (TCG here,
KVM where it boots) and driven as a client drives runc.  The test process is the client's
subreaper: the VM init that `create` reports is reparented to it, and its exit status is
the container's.  Three boots in all (each costs seconds under emulation)."""

import json
import os
import select
import signal
import socket
import subprocess
import time

import pytest

from oci_bundle import OCI, RUNTIME, leftovers, wait_child
from test_oci_runtime import _cgroup_dirs

pytestmark = [pytest.mark.vm, pytest.mark.slow]

VM = {"ctrun.mode": "vm"}
BOOT = 180  # seconds a create may take: a boot under TCG on a loaded host


@pytest.fixture
def oci(tmp_path):
    from ctrun.errors import CtrunError
    from ctrun.vm import kernel, qemu
    try:
        qemu.binary(), kernel.find()
    except CtrunError as e:
        pytest.skip(f"no VMs on this host: {e}")
    o = OCI(tmp_path)
    # the guest sees the rootfs as its own /: applet links must not name the host's path
    for p in (o.rootfs / "bin").iterdir():
        if p.is_symlink():
            p.unlink()
            p.symlink_to("busybox")
    yield o
    o.cleanup()
    assert not leftovers()
    assert not _qemu_of(o.root)


def _qemu_of(root):
    """QEMU processes working in a VM's directory under this state root."""
    from ctrun.state import proc_cmdlines
    found = []
    for pid, cmd in proc_cmdlines():
        if b"ctrun-vm" in cmd:
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(root) + "/"):
                    found.append(pid)
            except OSError:
                continue
    return found


def _create(oci, cid, bundle, tmp_path):
    """create as the shim does it: the init's stdout and stderr are files the client reads
    (a pipe would keep our subprocess.run waiting for the VM's end)."""
    oci.ids.append(cid)
    out, err = tmp_path / f"{cid}.out", tmp_path / f"{cid}.err"
    with open(out, "w") as o, open(err, "w") as e:
        r = subprocess.run(RUNTIME + ["--root", str(oci.root), "create", "--bundle",
                                      str(bundle), "--pid-file", str(tmp_path / f"{cid}.pid"),
                                      cid], stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                           timeout=BOOT)
    assert r.returncode == 0, err.read_text()
    return int((tmp_path / f"{cid}.pid").read_text()), out, err


def _guest_release():
    from ctrun.vm import kernel
    return kernel.find().release


def test_vm_bundle_exit_code_and_guest_kernel(oci, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from-a-dir\n")
    (data / "link").symlink_to("f")
    (tmp_path / "extra").write_text("from-a-file\n")
    mounts = json.loads((oci.bundle("vmtmpl0", ["true"]) / "config.json").read_text())[
        "mounts"] + [{"destination": "/data", "type": "bind", "source": str(data),
                      "options": ["rbind", "ro"]},
                     {"destination": "/etc/extra", "type": "bind",
                      "source": str(tmp_path / "extra"), "options": ["bind"]}]
    b = oci.bundle("vmexit", ["sh", "-c", "uname -r; hostname; cat /proc/cmdline; "
                                         "cat /data/link /etc/extra; touch /data/new || "
                                         "echo read-only; cat /proc/sys/kernel/domainname; "
                                         "echo to-stderr >&2; exit 5"],
                   annotations=VM, hostname="guest1", mounts=mounts,
                   linux={"sysctl": {"kernel.domainname": "oci-vm"}})
    pid, out, err = _create(oci, "vmexit", b, tmp_path)
    st = oci.state("vmexit")
    assert st["status"] == "created" and st["pid"] == pid
    assert st["annotations"] == VM
    assert out.read_text() == ""                  # booted, but nothing run before start
    d = oci.root / "vmexit" / "vm"
    assert (d / "disk.qcow2").stat().st_mode & 0o077 == 0  # the guest's disk is private
    oci("start", "vmexit")
    assert wait_child(pid, timeout=60) == 5       # the client sees the workload's code
    release, hostname, cmdline, *binds, domain = out.read_text().splitlines()
    assert release == _guest_release() or release != os.uname().release
    assert "8250.nr_uarts=1" in cmdline           # booted by ctrun's QEMU command line
    assert hostname == "guest1"
    assert binds == ["from-a-dir", "from-a-file", "read-only"]  # binds, as copies
    assert domain == "oci-vm"                     # linux.sysctl, set in the guest
    assert err.read_text().splitlines()[-1] == "to-stderr"
    assert oci.state("vmexit")["status"] == "stopped"
    assert not _qemu_of(oci.root)                 # the guest was powered off
    oci("delete", "vmexit")
    assert not (oci.root / "vmexit").exists() and not _cgroup_dirs("oci-vmexit")


def test_vm_bundle_exec_then_kill_and_delete(oci, tmp_path):
    b = oci.bundle("vmexec", ["sleep", "1000"], annotations=VM, root={"readonly": True})
    pid, _, _ = _create(oci, "vmexec", b, tmp_path)
    r = oci("exec", "vmexec", "true", check=False)
    assert r.returncode == 1 and "not been started" in r.stderr
    oci("start", "vmexec")
    assert oci.state("vmexec")["status"] == "running"
    r = oci("exec", "vmexec", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = oci("exec", "vmexec", "sh", "-c", "touch /new 2>/dev/null || echo read-only")
    assert r.stdout == "read-only\n"               # root.readonly
    # update --memory: the guest's RAM shrinks through its balloon (256M at boot)
    oci("update", "--memory", "160M", "vmexec")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        kb = int(oci("exec", "vmexec", "awk", "/MemTotal/ {print $2}", "/proc/meminfo").stdout)
        if kb < 192 << 10:
            break
        time.sleep(0.5)
    assert kb < 192 << 10
    r = oci("update", "--memory", "1G", "vmexec", check=False)
    assert r.returncode == 1 and "boot size" in r.stderr
    # detached, as the shim runs it: the relay is reparented to us and exits with the code
    proc = tmp_path / "proc.json"
    proc.write_text(json.dumps({"args": ["sh", "-c", "echo $FOO $(id -u) $(id -G); exit 4"],
                                "env": ["FOO=bar"], "cwd": "/",
                                "user": {"uid": 7, "gid": 8, "additionalGids": [9]}}))
    xout = tmp_path / "exec.out"
    with open(xout, "w") as f:
        r = subprocess.run(RUNTIME + ["--root", str(oci.root), "exec", "--detach",
                                      "--pid-file", str(tmp_path / "x.pid"), "--process",
                                      str(proc), "vmexec"],
                           stdout=f, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                           timeout=60)
    assert r.returncode == 0, r.stderr
    assert wait_child(int((tmp_path / "x.pid").read_text()), timeout=60) == 4
    assert xout.read_text().split() == ["bar", "7", "8", "9"]
    assert _qemu_of(oci.root)
    oci("kill", "vmexec", "KILL")
    assert wait_child(pid, timeout=30) == -signal.SIGKILL
    assert oci.state("vmexec")["status"] == "stopped"
    oci("delete", "vmexec")
    assert not _qemu_of(oci.root)
    assert not (oci.root / "vmexec").exists() and not _cgroup_dirs("oci-vmexec")


def test_vm_bundle_signal_reaches_the_guest_workload(oci, tmp_path):
    b = oci.bundle("vmsig", ["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; "
                                         "sleep 1000 & wait"], annotations=VM)
    pid, out, _ = _create(oci, "vmsig", b, tmp_path)
    oci("start", "vmsig")
    assert _qemu_of(oci.root)
    end = time.monotonic() + 60
    while out.read_text() != "ready\n" and time.monotonic() < end:  # the trap is set
        time.sleep(0.05)
    oci("kill", "--all", "vmsig", "TERM")         # the VM init relays it; QEMU is spared
    assert wait_child(pid, timeout=60) == 7
    assert out.read_text() == "ready\ngot-term\n"
    oci("delete", "vmsig")


def _console(tmp_path, name):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / name))
    sock.listen(1)
    return sock


def _master(sock):
    conn, _ = sock.accept()
    _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    conn.close()
    sock.close()
    return fds[0]


def _read_until(master, want, timeout=60):
    data, end = b"", time.monotonic() + timeout
    while want not in data and time.monotonic() < end:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            data += chunk
    return data


def test_vm_bundle_on_a_terminal(oci, tmp_path):
    b = oci.bundle("vmtty", ["sh", "-c", "tty; stty size; echo ready; read line; "
                                         "echo got-$line; exit 3"], annotations=VM,
                   process={"terminal": True, "consoleSize": {"height": 30, "width": 100}})
    srv = _console(tmp_path, "c.sock")
    oci.ids.append("vmtty")
    oci("create", "--bundle", b, "--console-socket", tmp_path / "c.sock", "vmtty",
        timeout=BOOT)
    master = _master(srv)
    pid = oci.state("vmtty")["pid"]
    oci("start", "vmtty")
    data = _read_until(master, b"ready")
    assert b"/dev/pts/" in data and b"30 100" in data   # the guest's pty, sized
    # an exec on a terminal of its own, detached, as `ctr task exec --tty` runs it
    srv = _console(tmp_path, "x.sock")
    oci("exec", "--tty", "--detach", "--console-socket", tmp_path / "x.sock", "--pid-file",
        tmp_path / "x.pid", "vmtty", "sh", "-c", "tty; exit 6")
    xmaster = _master(srv)
    assert b"/dev/pts/" in _read_until(xmaster, b"/dev/pts/")
    assert wait_child(int((tmp_path / "x.pid").read_text()), timeout=60) == 6
    os.close(xmaster)
    os.write(master, b"hello\r")                 # the terminal's input reaches the guest
    assert b"got-hello" in _read_until(master, b"got-hello")
    assert wait_child(pid, timeout=60) == 3
    os.close(master)
    oci("delete", "vmtty")


def test_vm_bundle_refuses_what_a_guest_cannot_honour(oci):
    assert "vm" in json.loads(oci("features").stdout)["annotations"]["run.ctrun.modes"]
    base = oci.bundle("vmtmpl", ["true"])
    ns = json.loads((base / "config.json").read_text())["linux"]["namespaces"]
    b = oci.bundle("vmbad", ["true"], annotations=VM,
                   linux={"namespaces": ns + [{"type": "ipc", "path": "/proc/1/ns/ipc"}]})
    r = oci("create", "--bundle", b, "vmbad", check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "linux.namespaces[" in r.stderr and "VM mode" in r.stderr
    b = oci.bundle("vmmode", ["true"], annotations={"ctrun.mode": "vmm"})
    r = oci("create", "--bundle", b, "vmmode", check=False)
    assert r.returncode == 1 and "ctrun.mode 'vmm'" in r.stderr


def test_vm_bundle_that_cannot_boot_leaves_nothing(oci, tmp_path):
    (tmp_path / "f").write_text("x")
    b = oci.bundle("vmfail", ["true"], annotations=VM,
                   mounts=[{"destination": "/bin/busybox/under-a-file", "type": "bind",
                            "source": str(tmp_path / "f"), "options": ["bind"]}])
    r = oci("create", "--bundle", b, "vmfail", check=False, timeout=BOOT)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "the VM did not boot" in r.stderr and "/bin/busybox/under-a-file" in r.stderr
    assert not (oci.root / "vmfail").exists() and not _cgroup_dirs("oci-vmfail")
    assert not _qemu_of(oci.root)


@pytest.fixture
def netns():
    """A network namespace as a CNI plugin leaves it: eth0 (a veth to the host) with an
    address and a default route."""
    n = os.getpid() % 10000
    name, host_if, net = f"ocivm{n}", f"ovh{n}", f"10.231.{n % 250}"
    run = lambda *c: subprocess.run(c, check=True, capture_output=True)  # noqa: E731
    try:
        run("ip", "netns", "add", name)
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", f"ovc{n}")
        run("ip", "link", "set", f"ovc{n}", "netns", name)
        run("ip", "addr", "add", f"{net}.1/24", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        for c in (["link", "set", "lo", "up"], ["link", "set", f"ovc{n}", "name", "eth0"],
                  ["addr", "add", f"{net}.2/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                  ["route", "add", "default", "via", f"{net}.1"]):
            run("ip", "-n", name, *c)
        yield f"/run/netns/{name}", f"{net}.1", f"{net}.2"
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_vm_bundle_in_a_joined_network_namespace(oci, tmp_path, netns):
    path, gateway, address = netns
    ns = [{"type": "network", "path": path}] + [
        n for n in json.loads((oci.bundle("vmtmpl1", ["true"]) / "config.json").read_text())[
            "linux"]["namespaces"] if n["type"] != "network"]
    b = oci.bundle("vmnet", ["sh", "-c", f"ping -c1 -W10 {gateway} >/dev/null && echo ping-ok;"
                                         " echo hello | nc -l -p 8080"],
                   annotations=VM, linux={"namespaces": ns})
    pid, out, _ = _create(oci, "vmnet", b, tmp_path)
    oci("start", "vmnet")
    data, end = b"", time.monotonic() + 60
    while not data and time.monotonic() < end:   # the guest holds the namespace's address
        try:
            with socket.create_connection((address, 8080), timeout=2) as s:
                data = s.recv(100)
        except OSError:
            time.sleep(0.5)
    assert data == b"hello\n"
    assert wait_child(pid, timeout=60) == 0
    assert out.read_text() == "ping-ok\n"
    tc = subprocess.run(["ip", "netns", "exec", path.rsplit("/", 1)[1], "tc", "qdisc", "show",
                         "dev", "eth0"], capture_output=True, text=True).stdout
    assert "ingress" not in tc                    # eth0 is the namespace's own again
    oci("delete", "vmnet")
