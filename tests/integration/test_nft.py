"""nftables NAT and published ports, with real traffic between the host and namespaces built
here by hand: a bridge with two "containers" (netns a, b) and an "outside" netns reached by a
second veth that is not on the bridge.  Everything works in a table of its own."""

import os
import socket
import subprocess
import sys

import pytest

from ctrun.errors import Conflict, CtrunError, HostUnsupported
from ctrun.network import nft

PID = os.getpid()
TAG = f"ctrt{PID % 10000}"
BRIDGE = TAG + "br"
SUB = f"10.211.{PID % 250}"
OUT = f"10.212.{PID % 250}"
GW, IP_A, IP_B = SUB + ".1", SUB + ".2", SUB + ".3"
HOST_OUT, IP_O = OUT + ".1", OUT + ".2"
NS = {k: f"ctrt-{PID}-{k}" for k in "abo"}
PORT = 20000 + PID % 10000  # unlike 8080, never shared with another test run's table
TABLE = f"ctrun-test-{PID}"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

SERVER = r"""
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
import selectors; sel = selectors.DefaultSelector()
sel.register(t, selectors.EVENT_READ); sel.register(u, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is t:
            c, peer = t.accept(); c.sendall(f"{name} tcp {peer[0]}".encode()); c.close()
        else:
            _, peer = u.recvfrom(100); u.sendto(f"{name} udp {peer[0]}".encode(), peer)
"""

CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.recv(100).decode())
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def tcp(host, port):
    with socket.create_connection((host, port), timeout=5) as s:
        return s.recv(100).decode()


def udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"x", (host, port))
        return s.recv(100).decode()


def tcp_from(ns, host, port):
    r = sh("ip", "netns", "exec", NS[ns], sys.executable, "-c", CLIENT, host, str(port),
           check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def our_links():
    return [ln.split(": ")[1].split("@")[0] for ln in sh("ip", "-o", "link").stdout.splitlines()
            if ln.split(": ")[1].startswith(TAG)]


@pytest.fixture(scope="module")
def topo():
    """Bridge BRIDGE (gateway GW) with netns a and b; netns o behind veth TAG+"o" (HOST_OUT),
    with a route back to SUB so masquerade is visible in what its server sees, not required
    for a reply.  A server answering "<name> <proto> <peer address>" runs in a and o."""
    servers, forward = [], open(IP_FORWARD).read().strip()
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", GW + "/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for k, ip in (("a", IP_A), ("b", IP_B), ("o", IP_O)):
            sh("ip", "netns", "add", NS[k])
            sh("ip", "link", "add", TAG + k, "type", "veth", "peer", "name", "eth0",
               "netns", NS[k])
            ns = ("ip", "-n", NS[k])
            sh(*ns, "link", "set", "lo", "up")
            sh(*ns, "addr", "add", ip + "/24", "dev", "eth0")
            sh(*ns, "link", "set", "eth0", "up")
            sh("ip", "link", "set", TAG + k, "up")
            if k == "o":
                sh("ip", "addr", "add", HOST_OUT + "/24", "dev", TAG + k)
                sh(*ns, "route", "add", SUB + ".0/24", "via", HOST_OUT)
            else:
                sh("ip", "link", "set", TAG + k, "master", BRIDGE)
                sh(*ns, "route", "add", "default", "via", GW)
        for k in "ao":
            p = subprocess.Popen(["ip", "netns", "exec", NS[k], sys.executable, "-c", SERVER,
                                  k, "80"], stdout=subprocess.PIPE, text=True)
            servers.append(p)
            assert p.stdout.readline().strip() == "ready"
        yield
    finally:
        for p in servers:
            p.kill()
            p.wait()
        for k in "abo":
            # deleting the host end now: the kernel removes a dead netns's links later
            sh("ip", "link", "del", TAG + k, check=False)
            sh("ip", "netns", "del", NS[k], check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        with open(IP_FORWARD, "w") as f:
            f.write(forward + "\n")
        assert our_links() == [], "test interfaces left behind"
        assert not any(n in sh("ip", "netns", "list").stdout for n in NS.values())


@pytest.fixture
def table(monkeypatch, tmp_path):
    """A table of this test's own; deleted afterwards whatever happened."""
    monkeypatch.setenv("CTRUN_NFT_TABLE", TABLE)
    forward = open(IP_FORWARD).read().strip()
    try:
        yield tmp_path / "netstate"
    finally:
        for family in ("ip", "bridge"):
            sh("nft", "delete", "table", family, TABLE, check=False)
        with open(IP_FORWARD, "w") as f:
            f.write(forward + "\n")
        assert sh("nft", "list", "table", "ip", TABLE, check=False).returncode != 0


def net(nat=True):
    return {"name": "t", "bridge": BRIDGE, "subnet": SUB + ".0/24", "nat": nat}


def listing():
    return sh("nft", "list", "table", "ip", TABLE).stdout


def test_published_port_reached_from_host_loopback_bridge_and_other_container(topo, table):
    nft.ensure_network(net(), table)
    nft.publish("a", IP_A, [{"host_ip": "0.0.0.0", "host_port": PORT, "ct_port": 80,
                             "proto": "tcp"},
                            {"host_ip": "0.0.0.0", "host_port": PORT, "ct_port": 80,
                             "proto": "udp"}])
    print(listing())
    # from the host: loopback leaves by the bridge masqueraded to the gateway address
    assert tcp("127.0.0.1", PORT) == f"a tcp {GW}"
    assert udp("127.0.0.1", PORT) == f"a udp {GW}"
    assert tcp(GW, PORT) == f"a tcp {GW}"
    # any local address; the host's source address needs no masquerade to get a reply
    assert tcp(HOST_OUT, PORT) == f"a tcp {HOST_OUT}"
    # from another container on the bridge (hairpin through the host's address)
    assert tcp_from("b", GW, PORT) == f"a tcp {GW}"
    # from outside the bridge: DNAT keeps the client's own address
    assert tcp_from("o", HOST_OUT, PORT) == f"a tcp {IP_O}"
    for chain in ("output", "prerouting"):
        assert sum(r["packets"] for r in nft.rules("ctrun ct a") if r["chain"] == chain) > 0
    print(listing())


def test_published_on_loopback_only(topo, table):
    nft.ensure_network(net(), table)
    nft.publish("a", IP_A, [{"host_ip": "127.0.0.1", "host_port": PORT, "ct_port": 80,
                             "proto": "tcp"}])
    assert tcp("127.0.0.1", PORT) == f"a tcp {GW}"
    # no prerouting rule: nothing arriving on an interface can reach a loopback publish
    assert [r["chain"] for r in nft.rules("ctrun ct a")] == ["output"]


def test_masquerade_only_with_nat(topo, table):
    # o has a route back to the subnet, so both connections succeed: what differs is the
    # source address o's server sees
    nft.ensure_network(net(nat=False), table)
    assert tcp_from("a", IP_O, 80) == f"o tcp {IP_A}"
    nft.remove_network(net(), table)
    nft.ensure_network(net(nat=True), table)
    assert tcp_from("a", IP_O, 80) == f"o tcp {HOST_OUT}"
    masq = [r for r in nft.rules("ctrun net t") if r["chain"] == "postrouting"
            and any(e.get("match", {}).get("op") == "!=" for e in r["expr"])]
    assert len(masq) == 1 and masq[0]["packets"] > 0
    # still reachable by its own address from the host, unmasqueraded
    assert tcp(IP_A, 80) == f"a tcp {GW}"


def test_rules_are_removed_exactly(topo, table):
    assert nft.rules() == []  # no table yet
    nft.unpublish("a")  # idempotent without a table
    original = open(IP_FORWARD).read().strip()
    nft.ensure_network(net(), table)
    assert open(IP_FORWARD).read().strip() == "1"
    assert (table / "ip_forward.orig").read_text().strip() == original
    assert open(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").read().strip() == "1"
    before = nft.rules()
    nft.ensure_network(net(), table)  # once: the same rules, not twice
    assert nft.rules() == before

    def port(n):
        return [{"host_ip": "0.0.0.0", "host_port": PORT + n, "ct_port": 80, "proto": "tcp"}]
    nft.publish("a", IP_A, port(0))
    nft.publish("ab", IP_A, port(1))  # a name that starts with the other's
    nft.publish("b", IP_B, port(2))
    nft.publish("a", IP_A, port(3))  # replaces a's rules
    with pytest.raises(Conflict, match="already published by container ab"):
        nft.publish("c", IP_B, [{"host_ip": "127.0.0.1", "host_port": PORT + 1,
                                 "ct_port": 80, "proto": "tcp"}])
    owners = [r["comment"] for r in nft.rules("ctrun ct ")]
    assert sorted(owners) == ["ctrun ct a"] * 2 + ["ctrun ct ab"] * 2 + ["ctrun ct b"] * 2
    assert f"dport {PORT + 3} " in listing() and f"dport {PORT} " not in listing()

    nft.unpublish("a")
    nft.unpublish("a")
    assert sorted(r["comment"] for r in nft.rules("ctrun ct ")) == \
        ["ctrun ct ab"] * 2 + ["ctrun ct b"] * 2
    net_rules = nft.rules("ctrun net t")
    assert net_rules and net_rules == [r for r in before if r["comment"] == "ctrun net t"]

    nft.remove_network(net(), table)
    assert nft.rules("ctrun net ") == [] and len(nft.rules("ctrun ct ")) == 4
    nft.remove_network(net(), table, last=True)
    assert sh("nft", "list", "table", "ip", TABLE, check=False).returncode != 0
    assert open(IP_FORWARD).read().strip() == original
    assert not (table / "ip_forward.orig").exists()
    assert open(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").read().strip() == "0"
    nft.remove_network(net(), table, last=True)  # idempotent
    nft.unpublish("ab")


def test_errors(monkeypatch, table):
    monkeypatch.setattr(nft, "_nft_ctx", None)
    monkeypatch.setitem(sys.modules, "nftables", None)  # the binding is not installed
    with pytest.raises(HostUnsupported, match="install nftables and python3-nftables"):
        nft.rules()
    monkeypatch.undo()
    monkeypatch.setenv("CTRUN_NFT_TABLE", TABLE)
    with pytest.raises(CtrunError) as e:
        nft._run([{"delete": {"rule": {"family": "ip", "table": TABLE, "chain": "output",
                                       "handle": 1}}}])
    # one line, nft's own words (which vary: it may suggest another table of the host's)
    msg = str(e.value)
    assert msg.startswith("nftables failed: ") and "No such file or directory" in msg
    assert "\n" not in msg


SPOOF = r"""
import socket, struct, sys
dst_mac, src_ip, port = bytes.fromhex(sys.argv[1].replace(":", "")), sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
src_mac = s.getsockname()[4]
payload = b"from-container"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                  socket.inet_aton(src_ip), socket.inet_aton("127.0.0.1"))
words = struct.unpack("!10H", hdr)
c = sum(words); c = (c & 0xffff) + (c >> 16); c = (c & 0xffff) + (c >> 16)
hdr = hdr[:10] + struct.pack("!H", ~c & 0xffff) + hdr[12:]
s.send(dst_mac + src_mac + b"\x08\x00" + hdr + udp)
"""


def test_container_cannot_reach_host_loopback(topo, table):
    """route_localnet=1 on the bridge would let a container send to the host's 127.0.0.1;
    the guard drops what arrives on the bridge addressed to 127.0.0.0/8."""
    nft.ensure_network(net(), table)
    mac = open(f"/sys/class/net/{BRIDGE}/address").read().strip()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]

        def spoof():
            sh("ip", "netns", "exec", NS["b"], sys.executable, "-c", SPOOF, mac, IP_B, str(port))
        guard = [r for r in nft.rules("ctrun net t") if r["chain"] == "guard"]
        # the attack is real: without the guard the packet reaches the loopback socket
        nft._run([nft._delete_rule(r) for r in guard])
        spoof()
        srv.settimeout(5)
        assert srv.recv(100) == b"from-container"
        nft.remove_network(net(), table)
        nft.ensure_network(net(), table)
        spoof()
        dropped = [r for r in nft.rules("ctrun net t") if r["chain"] == "guard"]
        assert sum(r["packets"] for r in dropped) == 1


def test_port_guards_are_idempotent_and_removed_exactly(table):
    def guards():
        return sorted((r["chain"], r["comment"]) for r in nft.rules("ctrun ct ", "bridge"))
    nft.unguard_port(TAG + "a")  # no table: nothing to do
    nft.unpublish("a")
    mac_a, mac_b = "02:42:0a:00:00:02", "02:42:0a:00:00:03"
    nft.guard_port("a", TAG + "a", mac_a, [IP_A])
    once = guards()
    nft.guard_port("a", TAG + "a", mac_a, [IP_A])  # a restart: the same rules, not twice
    assert guards() == once and len(once) == 5
    nft.guard_port("ab", TAG + "b", mac_b, [IP_B])  # a name that starts with the other's
    nft.set_port_ips(TAG + "a", add=[SUB + ".9"])
    listing = sh("nft", "list", "set", "bridge", TABLE, f"ip-{TAG}a").stdout
    assert IP_A in listing and SUB + ".9" in listing
    nft.set_port_ips(TAG + "a", delete=[SUB + ".9"])
    assert SUB + ".9" not in sh("nft", "list", "set", "bridge", TABLE, f"ip-{TAG}a").stdout
    nft.unpublish("a")
    assert {c for _, c in guards()} == {"ctrun ct ab"}
    assert f"{TAG}a" not in sh("nft", "list", "table", "bridge", TABLE).stdout
    nft.unguard_port(TAG + "a")  # idempotent
    nft.remove_network(net(), table, last=True)  # the last network takes both tables
    assert sh("nft", "list", "table", "bridge", TABLE, check=False).returncode != 0
