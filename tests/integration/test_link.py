"""Bridge and veth links on the real kernel.

"Containers" here are forked children that unshare a network namespace and wait; the tests
join those namespaces with setns from further children to look at interfaces and to move
real TCP traffic.  All traffic stays between the host and these namespaces.
"""

import json
import os
import select
import signal
import socket
import subprocess
import time

import pytest

from ctrun import libc
from ctrun.errors import Conflict, CtrunError, InvalidInput, NotFound
from ctrun.network import link

TAG = os.getpid() % 10000
BRIDGE = f"ctrt{TAG}lk"
NET = f"10.212.{os.getpid() % 250}"
GW = f"{NET}.1"


class Child:
    """A forked child; result() returns what its function returned (JSON), or raises."""

    def __init__(self, pid, fd):
        self.pid, self.fd = pid, fd

    def result(self, timeout=10):
        data, deadline = b"", time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise AssertionError(f"child {self.pid} gave no answer in {timeout}s")
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                data += chunk
        finally:
            self.stop()
        out = json.loads(data)
        if "error" in out:
            raise AssertionError(f"in the namespace: {out['error']}")
        return out["ok"]

    def stop(self):
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.pid = None


def _fork(fn, *args, netns_of=None):
    """Run fn(*args) in a child (inside the network namespace of netns_of, if given)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                if netns_of is not None:
                    fd = os.open(f"/proc/{netns_of}/ns/net", os.O_RDONLY)
                    libc.setns(fd, libc.CLONE_NEWNET)
                    os.close(fd)
                out = {"ok": fn(*args)}
            except BaseException as e:
                out = {"error": repr(e)}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    return Child(pid, r)


def _new_netns_and_wait(ready_w):
    libc.unshare(libc.CLONE_NEWNET)
    os.write(ready_w, b"x")
    while True:
        time.sleep(3600)


class Lab:
    """One bridge and its "containers"; close() removes everything, whatever happened."""

    def __init__(self, mtu=1500):
        self.children, self.veths, self.n = [], [], 0
        self.bridge = BRIDGE
        link.ensure_bridge(BRIDGE, f"{GW}/24", mtu=mtu)

    def container(self):
        r, w = os.pipe()
        child = _fork(_new_netns_and_wait, w)
        os.close(w)
        self.children.append(child)
        assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"x"
        os.close(r)
        return child.pid

    def veth(self):
        self.n += 1
        name = link.veth_name(f"test-link-{os.getpid()}-{self.n}")
        self.veths.append(name)
        return name

    def attach(self, pid, ip, **kw):
        return link.attach(pid, self.bridge, self.veth(), f"{ip}/24", GW, **kw)

    def close(self):
        for child in self.children:
            child.stop()
        for name in self.veths:
            link.detach(name)
        link.remove_bridge(self.bridge)
        left = [n for n in self.veths + [self.bridge] if link.exists(n)]
        assert not left, f"left behind: {left}"


@pytest.fixture
def lab():
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def _ip_json(*args):
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                                     check=True).stdout or "[]")


def _inside(pid, *args):
    """`ip -j ARGS` as seen from inside the network namespace of pid."""
    return _fork(_ip_json, *args, netns_of=pid).result()


def _wait_gone(ifname, timeout=10):
    # a dead namespace is dismantled by a kernel worker, a moment after its last process
    deadline = time.monotonic() + timeout
    while link.exists(ifname) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not link.exists(ifname)


def _echo_server(ip, port):
    with socket.create_server((ip, port)) as srv:
        srv.settimeout(10)
        conn, peer = srv.accept()
        with conn:
            data = conn.recv(100)
            conn.sendall(data.upper())
    return {"peer": peer[0], "data": data.decode()}


def _client(ip, port, text):
    deadline = time.monotonic() + 10
    while True:  # the server child may not be listening yet
        try:
            with socket.create_connection((ip, port), timeout=5) as s:
                s.sendall(text.encode())
                return s.recv(100).decode()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_veth_name_is_short_and_stable():
    a = link.veth_name("web")
    assert a == link.veth_name("web") and a != link.veth_name("web2")
    assert a.startswith("vc") and len(a) == 12 and int(a[2:], 16) >= 0
    assert link.mac_for_ip("10.199.0.2") == "02:42:0a:c7:00:02"


def test_attach_configures_both_ends(lab):
    pid = lab.container()
    info = lab.attach(pid, f"{NET}.2")
    veth = info["veth"]
    mac = f"02:42:0a:d4:{os.getpid() % 250:02x}:02"  # from the address 10.212.x.2
    assert info == {"veth": veth, "ifname": "eth0", "mac": mac, "ip": f"{NET}.2/24"}
    # host end: on the bridge, up, the bridge's mtu
    assert os.path.basename(os.readlink(f"/sys/class/net/{veth}/master")) == BRIDGE
    host = _ip_json("link", "show", veth)[0]
    assert "UP" in host["flags"] and host["mtu"] == 1500
    # container end: named eth0, mac, address, up, default route via the gateway
    links = {i["ifname"]: i for i in _inside(pid, "addr")}
    eth0 = links["eth0"]
    assert eth0["address"] == info["mac"] and "UP" in eth0["flags"] and eth0["mtu"] == 1500
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] \
        == [(f"{NET}.2", 24)]
    routes = _inside(pid, "route")
    assert {"dst": "default", "gateway": GW, "dev": "eth0"}.items() <= \
        next(r for r in routes if r["dst"] == "default").items()


def test_containers_talk_over_the_bridge_and_the_host_reaches_them(lab):
    a, b = lab.container(), lab.container()
    lab.attach(a, f"{NET}.2")
    lab.attach(b, f"{NET}.3")
    # container b -> container a: straight over the bridge, a sees b's own address
    server = _fork(_echo_server, f"{NET}.2", 7000, netns_of=a)
    assert _fork(_client, f"{NET}.2", 7000, "from b", netns_of=b).result() == "FROM B"
    assert server.result() == {"peer": f"{NET}.3", "data": "from b"}
    # host -> container a, through its address on the bridge
    server = _fork(_echo_server, "0.0.0.0", 7001, netns_of=a)
    assert _client(f"{NET}.2", 7001, "from host") == "FROM HOST"
    assert server.result() == {"peer": GW, "data": "from host"}


def test_the_pair_dies_with_the_container(lab):
    pid = lab.container()
    veth = lab.attach(pid, f"{NET}.2")["veth"]
    assert link.exists(veth)
    lab.children[0].stop()  # kill the only process of that namespace
    assert _wait_gone(veth), f"{veth} outlived its namespace"
    link.detach(veth)  # nothing to do, no error


def test_attach_failures_leave_nothing_behind(lab):
    pid = lab.container()
    # the kernel refuses the route: the pair created just before must go again
    veth = lab.veth()
    with pytest.raises(CtrunError) as e:
        link.attach(pid, BRIDGE, veth, f"{NET}.2/24", "10.213.250.1")
    msg = str(e.value)
    assert "default route via 10.213.250.1" in msg and "\n" not in msg
    assert not link.exists(veth)
    assert [i["ifname"] for i in _inside(pid, "link")] == ["lo"]
    # refused before anything is made
    with pytest.raises(NotFound):
        link.attach(pid, f"ctrt{TAG}no", lab.veth(), f"{NET}.2/24", GW)
    with pytest.raises(Conflict):  # the host's own namespace
        link.attach(os.getpid(), BRIDGE, lab.veth(), f"{NET}.2/24", GW)
    with pytest.raises(InvalidInput):
        link.attach(pid, BRIDGE, lab.veth(), "10.0.0.300/24", GW)
    with pytest.raises(InvalidInput):
        link.attach(pid, BRIDGE, "x" * 16, f"{NET}.2/24", GW)
    dead = _fork(int, "0")
    dead_pid = dead.pid
    dead.result()
    with pytest.raises(NotFound):
        link.attach(dead_pid, BRIDGE, lab.veth(), f"{NET}.2/24", GW)
    assert not any(link.exists(n) for n in lab.veths)
    # the namespace is still clean: a correct attach now works
    first = lab.attach(pid, f"{NET}.2")["veth"]
    # a second pair whose container end would also be eth0: refused, its host end removed
    second = lab.veth()
    with pytest.raises(Conflict):
        link.attach(pid, BRIDGE, second, f"{NET}.3/24", GW)
    assert link.exists(first) and not link.exists(second)
    # a host name already taken is refused and the existing interface is left alone
    with pytest.raises(Conflict):
        link.attach(lab.container(), BRIDGE, first, f"{NET}.4/24", GW)
    assert link.exists(first)


def test_add_and_del_address_in_a_running_container(lab):
    pid = lab.container()
    lab.attach(pid, f"{NET}.2")

    def inet():
        eth0 = next(i for i in _inside(pid, "addr") if i["ifname"] == "eth0")
        return sorted(a["local"] for a in eth0["addr_info"] if a["family"] == "inet")

    link.add_address(pid, f"{NET}.77/24")
    link.add_address(pid, f"{NET}.77/24")  # again: already there, fine
    assert inet() == sorted([f"{NET}.2", f"{NET}.77"])
    server = _fork(_echo_server, f"{NET}.77", 7002, netns_of=pid)
    assert _client(f"{NET}.77", 7002, "extra") == "EXTRA"
    server.result()
    link.del_address(pid, f"{NET}.77/24")
    link.del_address(pid, f"{NET}.77/24")  # again: already gone, fine
    assert inet() == [f"{NET}.2"]
    with pytest.raises(NotFound):
        link.add_address(pid, f"{NET}.78/24", ifname="eth9")


def test_detach_removes_the_pair(lab):
    pid = lab.container()
    veth = lab.attach(pid, f"{NET}.2")["veth"]
    link.detach(veth)
    assert not link.exists(veth)
    assert [i["ifname"] for i in _inside(pid, "link")] == ["lo"]
    link.detach(veth)


def test_ensure_bridge_is_idempotent_and_remove_bridge_cleans_up():
    lab = Lab(mtu=1400)
    try:
        link.ensure_bridge(BRIDGE, f"{GW}/24", mtu=1400)  # again: nothing changes
        br = _ip_json("addr", "show", BRIDGE)[0]
        assert "UP" in br["flags"] and br["mtu"] == 1400
        assert [(a["local"], a["prefixlen"]) for a in br["addr_info"] if a["family"] == "inet"] \
            == [(GW, 24)]
        # a pair on it takes the bridge's mtu on both ends
        pid = lab.container()
        veth = lab.attach(pid, f"{NET}.2")["veth"]
        assert _ip_json("link", "show", veth)[0]["mtu"] == 1400
        assert next(i for i in _inside(pid, "link") if i["ifname"] == "eth0")["mtu"] == 1400
        # an interface of that name which is no bridge is never taken over nor deleted
        with pytest.raises(Conflict):
            link.ensure_bridge(veth, "10.213.251.1/24")
        with pytest.raises(Conflict):
            link.remove_bridge(veth)
        assert link.exists(veth)
        with pytest.raises(InvalidInput):
            link.ensure_bridge(f"ctrt{TAG}x", "10.213.251.1/33")
    finally:
        lab.close()
    assert not link.exists(BRIDGE)
    assert not [r for r in _ip_json("route") if r.get("dev") == BRIDGE]
    link.remove_bridge(BRIDGE)  # already gone: fine
