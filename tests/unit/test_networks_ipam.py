"""Policy code of networking: the network store and IPAM, against a fake host (routes and
interfaces), so the results do not depend on this machine's own networks."""

import ipaddress
import json
import os
import sys
import traceback

import pytest

from ctrun.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from ctrun.network import ipam, networks
from ctrun.state import Store


def route_line(iface, cidr, gateway="0.0.0.0"):
    """One /proc/net/route line: addresses printed as native-endian integers, as the kernel does."""
    def hx(addr):
        return f"{int.from_bytes(ipaddress.IPv4Address(addr).packed, sys.byteorder):08X}"
    net = ipaddress.IPv4Network(cidr)
    return "\t".join([iface, hx(net.network_address), hx(gateway), "0001", "0", "0", "0",
                      hx(net.netmask), "0", "0", "0"])


class FakeHost:
    def __init__(self, tmp_path, monkeypatch):
        self.routes = tmp_path / "route"
        self.sysnet = tmp_path / "sysnet"
        self.sysnet.mkdir()
        monkeypatch.setattr(networks, "ROUTES", str(self.routes))
        monkeypatch.setattr(networks, "SYS_NET", str(self.sysnet))
        self.set_routes([("eth0", "0.0.0.0/0", "192.0.2.1"), ("eth0", "192.0.2.0/24")])

    def set_routes(self, routes):
        head = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
        self.routes.write_text("\n".join([head] + [route_line(*r) for r in routes]) + "\n")

    def add_iface(self, name, bridge=False):
        (self.sysnet / name).mkdir()
        if bridge:
            (self.sysnet / name / "bridge").mkdir()


@pytest.fixture
def host(tmp_path, monkeypatch):
    return FakeHost(tmp_path, monkeypatch)


@pytest.fixture
def st(tmp_path, host):
    return Store(tmp_path / "root")


def test_host_routes_parses_the_real_format(host):
    host.set_routes([("eth0", "0.0.0.0/0", "192.0.2.1"), ("eth0", "192.0.2.0/24"),
                     ("wg0", "10.8.0.0/16"), ("eth0", "203.0.113.7/32", "192.0.2.1")])
    assert networks.host_routes() == [
        ("eth0", ipaddress.IPv4Network("192.0.2.0/24")),
        ("wg0", ipaddress.IPv4Network("10.8.0.0/16")),
        ("eth0", ipaddress.IPv4Network("203.0.113.7/32"))]
    # the real file parses too (whatever this host's routes are)
    assert all(isinstance(n, ipaddress.IPv4Network)
               for _, n in networks.host_routes("/proc/net/route"))


def test_default_network_created_on_first_use(st):
    assert networks.list_networks(st) == []
    net = networks.get(st, networks.DEFAULT)
    assert net == {"name": "ctrun0", "bridge": "ctrun0", "subnet": "10.199.0.0/24",
                   "gateway": "10.199.0.1", "nat": True, "mtu": 1500}
    assert networks.get(st, "ctrun0") == net
    assert networks.list_networks(st) == [net]
    assert json.loads((st.root / "networks" / "ctrun0.json").read_text()) == net
    with pytest.raises(NotFound, match="ctrun network create other --subnet CIDR"):
        networks.get(st, "other")


def test_default_network_not_created_when_asked_not_to(st):
    with pytest.raises(NotFound):
        networks.get(st, networks.DEFAULT, create_default=False)
    assert networks.list_networks(st) == []


def test_default_subnet_skips_host_routes_and_networks(st, host):
    host.set_routes([("eth0", "0.0.0.0/0", "192.0.2.1"), ("eth0", "10.199.0.0/24"),
                     ("wg0", "10.199.1.128/25"), ("eth0", "10.199.3.4/32", "192.0.2.1")])
    networks.create(st, "mine", "10.199.2.0/24")
    assert networks.candidate_default_subnet(st) == "10.199.4.0/24"
    assert networks.get(st, "ctrun0")["subnet"] == "10.199.4.0/24"


def test_routes_of_ctruns_own_bridges_are_not_collisions(st, host):
    # a leftover ctrun0 bridge still carrying its old route: reused, not avoided
    host.add_iface("ctrun0", bridge=True)
    host.set_routes([("ctrun0", "10.199.0.0/24")])
    assert networks.get(st, "ctrun0")["subnet"] == "10.199.0.0/24"
    # another network's bridge route is ctrun's too, but its subnet is taken by the network
    net = networks.create(st, "b", "10.50.0.0/24")
    host.add_iface(net["bridge"], bridge=True)
    host.set_routes([("ctrun0", "10.199.0.0/24"), (net["bridge"], "10.50.0.0/24")])
    with pytest.raises(Conflict, match="overlaps network 'b'"):
        networks.create(st, "c", "10.50.0.0/16")


def test_no_candidate_left(st):
    networks.create(st, "wide", "10.199.0.0/16")
    with pytest.raises(Conflict, match="no free subnet for the default network"):
        networks.get(st, "ctrun0")
    assert [n["name"] for n in networks.list_networks(st)] == ["wide"]


def test_user_can_pick_the_default_subnet_first(st):
    networks.create(st, "ctrun0", "172.31.250.0/24", mtu=1400)
    net = networks.get(st, "ctrun0")
    assert (net["subnet"], net["bridge"], net["mtu"]) == ("172.31.250.0/24", "ctrun0", 1400)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "bad/name"}, "invalid network name"),
    ({"name": "none"}, "means --net none"),
    ({"name": "host"}, "means --net host"),
    ({"name": "x.leases"}, "must not end in '.leases'"),
    ({"subnet": "10.0.0.0"}, "use an IPv4 CIDR"),
    ({"subnet": "nonsense/24"}, "use an IPv4 CIDR"),
    ({"subnet": "fd00::/64"}, "use an IPv4 CIDR"),
    ({"subnet": "10.0.0.1/24"}, r"host bits set; use 10.0.0.0/24"),
    ({"subnet": "10.0.0.0/7"}, "prefix length from /8 to /30"),
    ({"subnet": "10.0.0.0/31"}, "prefix length from /8 to /30"),
    ({"gateway": "10.9.0.1"}, "outside subnet"),
    ({"gateway": "10.8.0.0"}, "network address"),
    ({"gateway": "10.8.0.255"}, "broadcast address"),
    ({"gateway": "banana"}, "invalid gateway"),
    ({"mtu": 10}, "invalid mtu"),
    ({"mtu": True}, "invalid mtu"),
    ({"nat": "yes"}, "invalid nat"),
    ({"bridge": "a" * 16}, "invalid bridge name"),
    ({"bridge": "br/0"}, "invalid bridge name"),
])
def test_create_validation(st, kwargs, match):
    args = {"name": "n1", "subnet": "10.8.0.0/24", **kwargs}
    with pytest.raises(InvalidInput, match=match) as e:
        networks.create(st, args.pop("name"), args.pop("subnet"), **args)
    assert "\n" not in str(e.value)
    assert networks.list_networks(st) == []


def test_create_conflicts(st, host):
    host.set_routes([("eth0", "192.0.2.0/24"), ("vpn0", "10.0.0.0/8")])
    with pytest.raises(Conflict, match=r"overlaps the host route 10.0.0.0/8 on vpn0"):
        networks.create(st, "n1", "10.1.2.0/24")
    net = networks.create(st, "n1", "172.20.0.0/16", gateway="172.20.0.254", nat=False)
    assert net == {"name": "n1", "bridge": "ct-n1", "subnet": "172.20.0.0/16",
                   "gateway": "172.20.0.254", "nat": False, "mtu": 1500}
    with pytest.raises(AlreadyExists, match="network 'n1' already exists"):
        networks.create(st, "n1", "172.21.0.0/16")
    with pytest.raises(Conflict, match="overlaps network 'n1'"):
        networks.create(st, "n2", "172.20.128.0/24")
    with pytest.raises(Conflict, match="bridge ct-n1 is already used by network 'n1'"):
        networks.create(st, "n2", "172.22.0.0/24", bridge="ct-n1")
    # host interfaces: never taken over, except a bridge under ctrun's own derived name
    host.add_iface("eth1")
    with pytest.raises(Conflict, match="already used by a host interface"):
        networks.create(st, "n2", "172.22.0.0/24", bridge="eth1")
    host.add_iface("br-user", bridge=True)
    with pytest.raises(Conflict, match="already used by a host interface"):
        networks.create(st, "n2", "172.22.0.0/24", bridge="br-user")
    host.add_iface("ct-n3")
    with pytest.raises(Conflict, match="choose another network name"):
        networks.create(st, "n3", "172.22.0.0/24")
    host.add_iface("ct-n4", bridge=True)
    assert networks.create(st, "n4", "172.22.0.0/24")["bridge"] == "ct-n4"


def test_bridge_names_fit_and_differ():
    a = networks.default_bridge("a-very-long-network-name-1")
    b = networks.default_bridge("a-very-long-network-name-2")
    assert len(a) == len(b) == 15 and a != b and a.startswith("ct-a-very")
    assert networks.default_bridge("x" * 12) == "ct-" + "x" * 12
    assert len(networks.default_bridge("x" * 13)) == 15
    assert networks.default_bridge("ctrun0") == "ctrun0"


def test_list_ignores_leases_and_foreign_files(st):
    networks.create(st, "b", "10.60.0.0/24")
    networks.create(st, "a", "10.61.0.0/24")
    ipam.allocate(st, "a", "c1")
    (st.root / "networks" / "ip_forward.json").write_text('{"value": 0}')
    (st.root / "networks" / ".x.json.1.tmp").write_text("{")
    assert [n["name"] for n in networks.list_networks(st)] == ["a", "b"]


def test_remove(st):
    networks.create(st, "n1", "10.70.0.0/24")
    ipam.allocate(st, "n1", "web")
    ipam.allocate(st, "n1", "db")
    ipam.allocate(st, "n1", "web/10.70.0.9", "10.70.0.9")
    with pytest.raises(Conflict, match="network 'n1' has containers db, web attached; "
                                       "destroy them first"):
        networks.remove(st, "n1")
    # leases of containers the caller knows are gone do not block
    with pytest.raises(Conflict, match="has containers web attached"):
        networks.remove(st, "n1", in_use=lambda c: c == "web")
    ipam.release(st, "n1", "web")
    ipam.release(st, "n1", "web/10.70.0.9")
    removed = networks.remove(st, "n1", in_use=lambda c: False)
    assert removed["bridge"] == "ct-n1"
    assert os.listdir(st.root / "networks") == []
    with pytest.raises(NotFound):
        networks.remove(st, "n1")
    # a new namesake starts without leases
    networks.create(st, "n1", "10.70.0.0/24")
    assert ipam.leases(st, "n1") == {}


def test_allocation_order_and_release(st):
    networks.create(st, "n", "10.80.0.0/29", gateway="10.80.0.3")  # hosts .1-.6
    got = [ipam.allocate(st, "n", f"c{i}") for i in range(5)]
    assert got == ["10.80.0.1", "10.80.0.2", "10.80.0.4", "10.80.0.5", "10.80.0.6"]
    with pytest.raises(Conflict, match=r"no free address left in 10.80.0.0/29 \(5 leased\)"):
        ipam.allocate(st, "n", "c5")
    assert ipam.release(st, "n", "c1") == ["10.80.0.2"]
    assert ipam.release(st, "n", "c1") == []  # idempotent
    assert ipam.release(st, "n", "never-there") == []
    assert ipam.allocate(st, "n", "c5") == "10.80.0.2"  # the lowest free one again
    assert ipam.holder(st, "n", "10.80.0.2") == "c5"
    assert ipam.holder(st, "n", "10.80.0.3") is None
    assert ipam.address_of(st, "n", "c4") == "10.80.0.6"
    assert list(ipam.leases(st, "n")) == ["10.80.0.1", "10.80.0.2", "10.80.0.4", "10.80.0.5",
                                          "10.80.0.6"]


def test_leases_sorted_numerically(st):
    networks.create(st, "n", "10.81.0.0/24")
    ipam.allocate(st, "n", "a", "10.81.0.10")
    ipam.allocate(st, "n", "b", "10.81.0.9")
    ipam.allocate(st, "n", "c", "10.81.0.100")
    assert ipam.leases(st, "n") == {"10.81.0.9": "b", "10.81.0.10": "a", "10.81.0.100": "c"}
    assert list(ipam.leases(st, "n")) == ["10.81.0.9", "10.81.0.10", "10.81.0.100"]


def test_allocate_is_idempotent(st):
    assert ipam.allocate(st, "ctrun0", "web") == "10.199.0.2"  # creates the default network
    assert ipam.allocate(st, "ctrun0", "web") == "10.199.0.2"
    assert ipam.allocate(st, "ctrun0", "web", "10.199.0.2") == "10.199.0.2"
    assert ipam.allocate(st, "ctrun0", "db") == "10.199.0.3"
    # a holder has one address: asking for another one moves the lease
    assert ipam.allocate(st, "ctrun0", "web", "10.199.0.50") == "10.199.0.50"
    assert ipam.leases(st, "ctrun0") == {"10.199.0.3": "db", "10.199.0.50": "web"}
    # accepts a network record as well as a name
    assert ipam.allocate(st, networks.get(st, "ctrun0"), "db") == "10.199.0.3"


@pytest.mark.parametrize("ip, match", [
    ("10.90.1.5", "outside network 'n' \\(10.90.0.0/24\\)"),
    ("10.90.0.1", "is the gateway of network 'n'"),
    ("10.90.0.0", "is the network address"),
    ("10.90.0.255", "is the broadcast address"),
    ("10.90.0.300", "invalid ip"),
    ("fd00::1", "invalid ip"),
    ("10.90.0.7", "already leased to container 'other' on network 'n'"),
])
def test_static_ip_rules(st, ip, match):
    networks.create(st, "n", "10.90.0.0/24")
    ipam.allocate(st, "n", "other", "10.90.0.7")
    with pytest.raises(InvalidInput, match=match) as e:
        ipam.allocate(st, "n", "web", ip)
    assert "\n" not in str(e.value)
    assert ipam.leases(st, "n") == {"10.90.0.7": "other"}


def test_extra_address_holders_name_their_container(st):
    networks.create(st, "n", "10.91.0.0/24")
    ipam.allocate(st, "n", "web/10.91.0.20", "10.91.0.20")
    with pytest.raises(InvalidInput, match="already leased to container 'web'"):
        ipam.allocate(st, "n", "db", "10.91.0.20")


def test_allocate_in_unknown_network(st):
    with pytest.raises(NotFound, match="network 'nope' not found"):
        ipam.allocate(st, "nope", "web")
    with pytest.raises(InvalidInput):
        ipam.leases(st, "../etc")
    assert ipam.leases(st, "nope") == {}
    assert ipam.release(st, "nope", "web") == []


def test_state_survives_a_new_store_object(tmp_path, host):
    root = tmp_path / "root"
    st1 = Store(root)
    ipam.allocate(st1, "ctrun0", "a")
    networks.create(st1, "n", "10.95.0.0/24")
    ipam.allocate(st1, "n", "b", "10.95.0.77")
    del st1
    st2 = Store(root)  # what a restarted CLI sees
    assert networks.get(st2, "ctrun0")["subnet"] == "10.199.0.0/24"
    assert ipam.leases(st2, "ctrun0") == {"10.199.0.2": "a"}
    assert ipam.leases(st2, "n") == {"10.95.0.77": "b"}
    assert ipam.allocate(st2, "ctrun0", "a") == "10.199.0.2"
    assert ipam.allocate(st2, "ctrun0", "c") == "10.199.0.3"
    assert [n["name"] for n in networks.list_networks(st2)] == ["ctrun0", "n"]


def test_concurrent_allocations_get_distinct_addresses(tmp_path, host):
    """20 processes, each a fresh CLI-like Store, racing for the first use of the default
    network: one network, 20 distinct leases."""
    root = tmp_path / "root"
    count = 20
    go_r, go_w = os.pipe()
    pids = []
    try:
        for i in range(count):
            out = tmp_path / f"out{i}"
            pid = os.fork()
            if pid == 0:  # child: never return into pytest
                code = 1
                try:
                    os.close(go_w)
                    os.read(go_r, 1)  # wait until every sibling exists
                    ip = ipam.allocate(Store(root), "ctrun0", f"c{i}")
                    out.write_text(ip)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            pids.append(pid)
    finally:
        os.close(go_r)
        os.close(go_w)  # EOF: all children go at once
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert codes == [0] * count
    ips = [(tmp_path / f"out{i}").read_text() for i in range(count)]
    assert len(set(ips)) == count
    leases = ipam.leases(Store(root), "ctrun0")
    assert len(leases) == count
    assert leases == {ip: f"c{i}" for i, ip in enumerate(ips)}
    assert sorted(leases, key=ipaddress.IPv4Address) == [f"10.199.0.{n}" for n in range(2, 22)]
    assert [n["name"] for n in networks.list_networks(Store(root))] == ["ctrun0"]


def test_fences_are_recorded_and_checked(st):
    networks.create(st, "a", "10.50.1.0/24")
    with pytest.raises(NotFound, match="'nosuch' not found"):
        networks.create(st, "b", "10.50.2.0/24", allow_from=["nosuch"])
    with pytest.raises(InvalidInput, match="itself"):
        networks.create(st, "b", "10.50.2.0/24", allow_from=["b"])
    with pytest.raises(InvalidInput, match="host_access"):
        networks.create(st, "b", "10.50.2.0/24", host_access="no")
    assert [n["name"] for n in networks.list_networks(st)] == ["a"]  # nothing half-made
    b = networks.create(st, "b", "10.50.2.0/24", allow_from=["a", "a"], host_access=False)
    assert b["allow_from"] == ["a"] and b["host_access"] is False
    assert networks.get(st, "b") == b
    assert "allow_from" not in networks.get(st, "a")  # defaults are not written


def test_a_bridge_belongs_to_the_live_store_its_alias_names(tmp_path, host):
    """The alias marks the owner store; a bridge of a gone store, or from before store ids,
    is nobody's; a host's own label makes it the host's."""
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    host.add_iface("ctrun0", bridge=True)
    alias = host.sysnet / "ctrun0" / "ifalias"
    alias.write_text("\n")
    assert networks.bridge_owner("ctrun0") == (None, None)
    networks.check_bridge_owner(b, "ctrun0")  # pre-store-id bridge: usable
    alias.write_text(f"ctrun:{a.id} {a.root}\n")
    assert networks.bridge_owner("ctrun0") == (a.id, str(a.root))
    networks.check_bridge_owner(a, "ctrun0")
    with pytest.raises(Conflict, match=rf"bridge 'ctrun0' belongs to another ctrun store "
                                       rf"\({a.root}\).*--net none"):
        networks.check_bridge_owner(b, "ctrun0")
    with pytest.raises(Conflict, match="belongs to another ctrun store"):
        networks.create(b, "ctrun0", "10.50.0.0/24")  # derives the bridge ctrun0
    (a.root / "store-id").unlink()  # the store is gone: its bridge name is free again
    assert networks.bridge_owner("ctrun0") == (None, None)
    alias.write_text("uplink to the lab\n")
    with pytest.raises(Conflict, match="used by a host interface"):
        networks.check_bridge_owner(b, "ctrun0")
    assert networks.bridge_owner("nonexistent") == (None, None)
