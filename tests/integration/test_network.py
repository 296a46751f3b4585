"""Bridged networking end to end: real bridge, veths, nftables, TCP between namespaces.

All traffic stays on this machine: between the host and the containers' namespaces."""

import concurrent.futures
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import bridge_network
from test_cli_errors import assert_clean_error

SUBNET_BYTE = 200 + os.getpid() % 50


@pytest.fixture
def net(cli):
    """A test network of its own (bridge, subnet, nftables rules), removed afterwards."""
    with bridge_network(cli, f"tn{os.getpid() % 10000}", f"10.214.{SUBNET_BYTE}.0/24") as name:
        yield name


def web(cli, name, net, *extra):
    cli("run", "-d", "--name", name, "--net", net, *extra, "busybox", "--", "sh", "-c",
        f"mkdir -p /www && echo hello-from-{name} > /www/index.html && "
        "exec httpd -f -p 80 -h /www", check=True)
    return cli.json("inspect", name)


def fetch(url, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_two_containers_talk_tcp_by_name(cli, net):
    info = web(cli, "srv", net)
    assert info["network"]["ip"].startswith(f"10.214.{SUBNET_BYTE}.")
    assert info["network"]["veth"] and len(info["network"]["veth"]) <= 15
    r = cli("run", "--rm", "--net", net, "busybox", "--", "sh", "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://srv/ && exit 0; sleep 0.3; done; "
            "exit 1")
    assert r.returncode == 0 and "hello-from-srv" in r.stdout, r.stderr


def test_host_reaches_container_by_address_and_published_port(cli, net):
    port = 18000 + os.getpid() % 1000
    info = web(cli, "pub", net, "-p", f"{port}:80")
    assert info["network"]["publish"] == [{"host_ip": "0.0.0.0", "host_port": port,
                                           "ct_port": 80, "proto": "tcp"}]
    assert "hello-from-pub" in fetch(f"http://{info['network']['ip']}/")
    assert "hello-from-pub" in fetch(f"http://127.0.0.1:{port}/")
    # a second container cannot take the same host port
    assert_clean_error(cli("create", "dup", "--net", net, "-p", f"{port}:80"), "already published")


def test_net_none_has_only_loopback_and_host_shares_the_host(cli):
    r = cli("run", "--rm", "--net", "none", "busybox", "--", "ls", "/sys/class/net")
    assert r.stdout.split() == ["lo"]
    r = cli("run", "--rm", "--net", "host", "busybox", "--", "ls", "/sys/class/net")
    assert set(r.stdout.split()) == set(os.listdir("/sys/class/net"))


def test_leases_are_unique_under_concurrent_creates(cli, net):
    names = [f"c{i}" for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda n: cli("create", n, "--net", net), names))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    ips = [cli.json("inspect", n)["network"]["ip"] for n in names]
    assert len(set(ips)) == 20
    leases = cli.json("network", "inspect", net)["leases"]
    assert sorted(leases) == sorted(ips)  # survived the CLI restarts: one process per call
    assert_clean_error(cli("create", "clash", "--net", net, "--ip", ips[0]), ips[0])
    assert_clean_error(cli("create", "outside", "--net", net, "--ip", "192.0.2.7"), "192.0.2.7")


def nft_listing(family="ip"):
    return subprocess.run(["nft", "list", "table", family, os.environ["CTRUN_NFT_TABLE"]],
                          capture_output=True, text=True).stdout



def ct_comment(store, name):
    """The nftables comment of a container's rules: its store's short id and its name."""
    from ctrun.state import Store
    return f"ctrun ct {Store(store).short_id}/{name}"


def test_destroy_removes_veth_rules_and_lease(cli, store, net):
    port = 19000 + os.getpid() % 1000
    info = web(cli, "gone", net, "-p", f"{port}:80")
    veth = info["network"]["veth"]
    assert Path(f"/sys/class/net/{veth}").exists()
    assert ct_comment(store, "gone") in nft_listing()
    assert f"port-{veth}" in nft_listing("bridge")  # its anti-spoofing guard
    assert_clean_error(cli("network", "rm", net), "gone")  # refused while attached
    cli("destroy", "-f", "gone", check=True)
    assert not Path(f"/sys/class/net/{veth}").exists()
    assert ct_comment(store, "gone") not in nft_listing()
    assert veth not in nft_listing("bridge")
    assert info["network"]["ip"] not in cli.json("network", "inspect", net)["leases"]


def test_ip_add_and_del_on_a_running_container(cli, net):
    info = web(cli, "multi", net)
    extra = info["network"]["ip"].rsplit(".", 1)[0] + ".250"
    cli("set", "multi", "--ip-add", extra, check=True)
    assert "hello-from-multi" in fetch(f"http://{extra}/")
    cli("set", "multi", "--ip-del", extra, check=True)
    r = cli("exec", "multi", "--", "ip", "-4", "addr", "show", "eth0")
    assert extra not in r.stdout


@pytest.mark.parametrize("publish", [True, False], ids=["published", "guard-only"])
def test_gc_removes_rules_left_by_a_killed_cli(cli, store, net, publish):
    """kill -9 of an attached `ctrun run` (its client and the server's worker that
    supervises the container, the init's parent): once its container is gone, gc drops its
    rules (its port guard too, also when it had no published port)."""
    import signal
    import sys
    port = 17000 + os.getpid() % 1000
    p = subprocess.Popen([sys.executable, "-m", "ctrun", "--root", str(store), "run", "--name",
                          "orphan", "--net", net, *(["-p", f"{port}:80"] if publish else []),
                          "busybox", "--", "sleep", "1000"])
    init = cli.wait_state("orphan")["pid"]
    stat = open(f"/proc/{init}/stat", "rb").read()
    os.kill(int(stat[stat.rindex(b")") + 2:].split()[1]), signal.SIGKILL)
    p.send_signal(signal.SIGKILL)
    p.wait()
    cli("kill", "orphan", check=True)  # the workload dies; no supervisor records it
    cli.wait_state("orphan", "stopped")
    listing = lambda: nft_listing() + nft_listing("bridge")  # noqa: E731
    assert ct_comment(store, "orphan") in listing()
    out = cli("gc", check=True).stdout
    assert "orphan" in out and ct_comment(store, "orphan") not in listing()
