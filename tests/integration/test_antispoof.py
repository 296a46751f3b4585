"""The bridge as a container sees it: no impersonation of a neighbour or the gateway, no
traffic between networks unless allowed, no host access with --no-host-access.

Forged frames come from the static probe (tests/probe/probe.c) run inside a container, which
keeps CAP_NET_RAW.  All traffic stays on this machine."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, bridge_network
from test_cli_errors import assert_clean_error
from test_network import fetch

PID = os.getpid()
BYTE = PID % 250
TAG = f"as{PID % 10000}"


def subnet(n):
    return f"10.{225 + n}.{BYTE}.0/24"  # away from the lab's 10.216-219


@pytest.fixture
def net(cli):
    with bridge_network(cli, TAG, subnet(0)) as name:
        yield cli.json("network", "inspect", name)


def sleeper(cli, name, net, probe, *extra):
    """A running container with the probe at /probe; its inspect "network" record."""
    cli("run", "-d", "--name", name, "--net", net, "-v", f"{probe}:/probe:ro", *extra,
        "busybox", "--", "sleep", "1000", check=True)
    return cli.json("inspect", name)["network"]


def web(cli, name, net, *extra):
    cli("run", "-d", "--name", name, "--net", net, *extra, "busybox", "--", "sh", "-c",
        f"echo hello-from-{name} > /index.html && exec httpd -f -p 80 -h /", check=True)
    return cli.json("inspect", name)["network"]["ip"]


def host_neigh(bridge, ip):
    out = subprocess.run(["ip", "neigh", "show", "dev", bridge, ip], capture_output=True,
                         text=True).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def ct_neigh(cli, name, ip):
    """The MAC container NAME's ARP table holds for ip (its /proc/net/arp)."""
    for line in cli("exec", name, "--", "cat", "/proc/net/arp", check=True).stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == ip:
            return fields[3]
    return None


def test_gratuitous_arp_cannot_claim_a_neighbour_or_the_gateway(cli, net, probe):
    a = sleeper(cli, "a", net["name"], probe)
    b = sleeper(cli, "b", net["name"], probe)
    bridge, gw = net["bridge"], net["gateway"]
    bridge_mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    # containers' router advertisements are never taken by the host
    for ifname in (bridge, a["veth"]):
        ra = Path(f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra")
        if ra.exists():
            assert ra.read_text().strip() == "0", ifname
    # the host learns b, b learns the gateway: the entries a gratuitous ARP would overwrite
    subprocess.run(["busybox", "ping", "-c1", "-W2", b["ip"]], check=True, capture_output=True)
    cli("exec", "b", "--", "ping", "-c1", "-W2", gw, check=True)
    assert host_neigh(bridge, b["ip"]) == b["mac"]
    assert ct_neigh(cli, "b", gw) == bridge_mac
    time.sleep(1.1)  # past the neighbour table's locktime: an update would be accepted
    # a's own MAC claiming b's address, then the gateway's; then b's address with a forged
    # sender MAC in the ARP body only (the frame's source is a's)
    for args in ([b["ip"]], [gw], [b["ip"], "02:42:de:ad:be:ef"]):
        cli("exec", "a", "--", "/probe", "arp", "eth0", *args, check=True)
        time.sleep(0.3)  # the neighbour tables have taken it or never will
        assert host_neigh(bridge, b["ip"]) == b["mac"], args
        assert ct_neigh(cli, "b", gw) == bridge_mac, args


def test_forged_source_never_reaches_the_peer(cli, net, probe):
    a = sleeper(cli, "a", net["name"], probe)
    b = sleeper(cli, "b", net["name"], probe)
    port = str(9000 + PID % 1000)
    listener = subprocess.Popen(
        [sys.executable, "-m", "ctrun", "--root", str(cli.root), "exec", "b", "--",
         "/probe", "listen", port, "3"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert listener.stdout.readline().strip() == "ready"

        def send(src_mac, src_ip, text):
            cli("exec", "a", "--", "/probe", "udp", "eth0", src_mac, src_ip, b["mac"], b["ip"],
                port, text, check=True)
        send(a["mac"], net["gateway"], "forged-gateway-ip")
        send(a["mac"], b["ip"].rsplit(".", 1)[0] + ".250", "forged-free-ip")
        send("02:42:de:ad:be:ef", a["ip"], "forged-mac")
        send(a["mac"], a["ip"], "honest")
        # an address added to the running container is allowed at once; one removed is not
        extra = a["ip"].rsplit(".", 1)[0] + ".240"
        cli("set", "a", "--ip-add", extra, check=True)
        send(a["mac"], extra, "extra-ip")
        cli("set", "a", "--ip-del", extra, check=True)
        send(a["mac"], extra, "deleted-ip")
        out, _ = listener.communicate(timeout=30)
    finally:
        listener.kill()
        listener.wait()
    assert sorted(ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("got ")) \
        == ["extra-ip", "honest"]


@contextlib.contextmanager
def host_server(addr, port, greeting):
    """A TCP server of the host on addr:port that sends greeting to every client."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with c:
                c.sendall(greeting)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        srv.close()


def free_port():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def nc(cli, name, addr, port):
    r = cli("exec", name, "--", "nc", "-w", "2", addr, str(port))
    return r.stdout.strip()


def test_no_host_access_blocks_the_host_but_replies_and_dns(cli, probe):
    with bridge_network(cli, TAG, subnet(0)) as open_net, \
            bridge_network(cli, TAG + "n", subnet(1), "--no-host-access") as closed:
        closed_rec = cli.json("network", "inspect", closed)
        assert closed_rec["host_access"] is False
        sleeper(cli, "open", open_net, probe)
        sleeper(cli, "shut", closed, probe)
        sleeper(cli, "dns", closed, probe, "--dns", closed_rec["gateway"])
        ip = web(cli, "srv", closed)
        port = free_port()
        gw_open = cli.json("network", "inspect", open_net)["gateway"]
        with host_server("0.0.0.0", port, b"host-hello"):
            assert nc(cli, "open", gw_open, port) == "host-hello"
            assert nc(cli, "shut", closed_rec["gateway"], port) == ""
            assert nc(cli, "dns", closed_rec["gateway"], port) == ""
        # the host's own connections into the network get their replies
        assert "hello-from-srv" in fetch(f"http://{ip}/")
        # the nameserver a container was given on the gateway stays reachable, for it only
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(host_server(closed_rec["gateway"], 53, b"dns-hello"))
            except OSError as e:
                pytest.skip(f"port 53 of the gateway is taken on this host: {e}")
            assert nc(cli, "dns", closed_rec["gateway"], 53) == "dns-hello"
            assert nc(cli, "shut", closed_rec["gateway"], 53) == ""


def test_networks_are_apart_unless_allowed(cli):
    with bridge_network(cli, TAG + "x", subnet(0)) as x, \
            bridge_network(cli, TAG + "y", subnet(1)) as y:
        assert_clean_error(cli("network", "create", TAG + "z", "--subnet", subnet(2),
                               "--allow-from", "nosuch"), "nosuch")
        assert_clean_error(cli("network", "create", TAG + "z", "--subnet", subnet(2),
                               "--allow-from", TAG + "z"), "itself")
        with bridge_network(cli, TAG + "z", subnet(2), "--allow-from", x) as z:
            ips = {n: web(cli, f"s{n}", net) for n, net in (("x", x), ("y", y), ("z", z))}
            for n, ip in ips.items():  # the host reaches every network: servers are up
                assert f"hello-from-s{n}" in fetch(f"http://{ip}/")

            def reaches(src, dst):
                r = cli("exec", f"s{src}", "--", "timeout", "3", "wget", "-qO-",
                        f"http://{ips[dst]}/")
                return f"hello-from-s{dst}" in r.stdout
            assert reaches("x", "z")  # z allows x
            assert not reaches("x", "y")
            assert not reaches("y", "x")
            assert not reaches("z", "x")  # not the other way round
