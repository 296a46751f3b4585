"""Two stores side by side on one host, with the same cgroup parent and nftables table (the
test process's, as every store has by default): no verb of store B touches what store A
owns.  A runs a bridged container with a published port; B runs gc, destroy (of a
container of the same name), image rm and network rm, and A's container keeps running
with its cgroup, its rules, its lease and its bridge.  (VMs are left out: a TCG boot takes
tens of seconds, and a VM's cgroup, tap and rules go through the same paths as here.)"""

import os
import tempfile
from pathlib import Path

import pytest

from conftest import CLI, STORES, bridge_network, cleanup_store
from test_cli_errors import assert_clean_error

PID = os.getpid()
NET_A, NET_B = f"ts{PID % 10000}a", f"ts{PID % 10000}b"
SUB_A, SUB_B = f"10.220.{PID % 250}.0/24", f"10.221.{PID % 250}.0/24"
PORT = 15000 + PID % 1000


@pytest.fixture
def cli_b():
    root = Path(tempfile.mkdtemp(prefix="ctrun-store-b-", dir="/var/tmp"))
    STORES.append(root)
    yield CLI(root)
    cleanup_store(root)


def nft_rules():
    from ctrun.network import nft
    return {(r["chain"], r["handle"], r["comment"]) for r in nft.rules()}


class Owned:
    """What store A's running container holds on the host, to compare after B's verbs."""

    def __init__(self, cli, name):
        self.cli, self.name = cli, name
        self.info = cli.json("inspect", name)
        self.rules = nft_rules()  # A's only: B has made nothing yet
        self.leases = cli.json("network", "inspect", NET_A)["leases"]
        assert self.info["state"] == "running" and self.rules and self.leases
        assert self.info["cgroup"] and all(os.path.isdir(p) for p in self.info["cgroup"].values())

    def check(self, after):
        info = self.cli.json("inspect", self.name)
        assert (info["state"], info["pid"]) == ("running", self.info["pid"]), \
            f"after B's {after}: A's container is {info['state']} ({info['exit_reason']})"
        assert all(os.path.isdir(p) for p in self.info["cgroup"].values()), \
            f"after B's {after}: A's cgroup is gone"
        missing = self.rules - nft_rules()
        assert not missing, f"after B's {after}: A's rules are gone: {sorted(missing)}"
        assert self.cli.json("network", "inspect", NET_A)["leases"] == self.leases
        bridge = self.info["config"]["net"]["bridge"]
        assert os.path.isdir(f"/sys/class/net/{bridge}"), f"after B's {after}: {bridge} gone"


@pytest.fixture
def a_running(cli):
    with bridge_network(cli, NET_A, SUB_A):
        cli("run", "-d", "--name", "pa", "--net", NET_A, "-p", f"{PORT}:80", "busybox", "--",
            "sleep", "1000", check=True)
        yield Owned(cli, "pa")


def test_gc_of_another_store_leaves_running_containers_alone(a_running, cli_b):
    """The issue's reproduction: gc in B removed A's cgroup (killing its container) and its
    published-port rules, since both stores share the parent and the table."""
    cli_b("gc", check=True)
    a_running.check("gc")


def test_destroy_and_image_rm_in_another_store(a_running, cli_b):
    """B's container of the same name has a cgroup and rules of its own: B's destroy and
    image rm take those, never A's."""
    with bridge_network(cli_b, NET_B, SUB_B):
        cli_b("run", "-d", "--name", "pa", "--net", NET_B, "busybox", "--", "sleep", "1000",
              check=True)
        b_cgroups = cli_b.json("inspect", "pa")["cgroup"]
        assert set(b_cgroups.values()).isdisjoint(a_running.info["cgroup"].values())
        a_running.check("run")
        cli_b("destroy", "-f", "pa", check=True)
        assert not any(os.path.isdir(p) for p in b_cgroups.values())
        a_running.check("destroy")
    a_running.check("network rm")
    cli_b("image", "rm", "busybox", check=True)
    cli_b("gc", check=True)
    a_running.check("image rm and gc")


def test_network_rm_of_another_stores_last_network(a_running, cli_b):
    """B's last network going must not delete the shared table (nor put ip_forward back)."""
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    with bridge_network(cli_b, NET_B, SUB_B):
        cli_b("run", "--rm", "--net", NET_B, "busybox", "--", "true", check=True)
    a_running.check("network rm")
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward == "1\n"


def test_a_bridge_of_another_store_is_refused_not_taken_over(a_running, cli_b):
    """B naming a network like A's would derive A's bridge name: one line, no network."""
    bridge = a_running.info["config"]["net"]["bridge"]
    r = cli_b("network", "create", NET_A, "--subnet", SUB_B)
    assert_clean_error(r, f"bridge '{bridge}' belongs to another ctrun store",
                       str(a_running.cli.root), "--net none")
    assert not (cli_b.root / "networks" / f"{NET_A}.json").exists()
    # A's subnet is routed on A's bridge: for B that is a host route like any other
    assert_clean_error(cli_b("network", "create", NET_B, "--subnet", SUB_A),
                       f"overlaps the host route {SUB_A} on {bridge} (bridge of the ctrun "
                       f"store {a_running.cli.root})")
    alias = Path(f"/sys/class/net/{bridge}/ifalias").read_text()
    assert alias.startswith("ctrun:") and str(a_running.cli.root) in alias
    a_running.check("network create")


def test_the_store_id_is_made_once_and_kept(tmp_path):
    from ctrun.state import Store
    s = Store(tmp_path / "s")
    sid = s.id
    assert len(sid) == 32 and Store(tmp_path / "s").id == sid and s.short_id == sid[:8]
    assert (tmp_path / "s" / "store-id").read_text().strip() == sid
    assert Store(tmp_path / "t").id != sid


def test_rules_of_two_stores_share_the_table_apart():
    """The nft layer itself: comments carry the store, removal and listing keep to one
    store, a host port is one store's or the other's, and the table outlives the first
    store's last network."""
    from ctrun.errors import Conflict
    from ctrun.network import nft
    a, b = "aaaa0001", "bbbb0002"
    web = [{"host_ip": "0.0.0.0", "host_port": PORT + 1, "ct_port": 80, "proto": "tcp"}]
    other = [{"host_ip": "0.0.0.0", "host_port": PORT + 2, "ct_port": 80, "proto": "tcp"}]
    fake_net = {"name": "n", "bridge": "ctrtnobridge", "subnet": "10.222.0.0/24"}
    try:
        nft.publish("web", "10.222.0.2", web, owner=a)
        nft.publish("web", "10.222.0.3", other, owner=b)  # same name, another store
        with pytest.raises(Conflict, match="already published by container web of another "
                                           "ctrun store"):
            nft.publish("x", "10.222.0.4", web, owner=b)
        assert nft.owned_names("ct", a) == nft.owned_names("ct", b) == ["web"]
        assert {r["comment"] for r in nft.rules()} == {f"ctrun ct {a}/web", f"ctrun ct {b}/web"}
        nft.unpublish("web", owner=b)
        assert {r["comment"] for r in nft.rules()} == {f"ctrun ct {a}/web"}
        nft.remove_network(fake_net, last=True, owner=b)  # B's last: A's rules stay
        assert {r["comment"] for r in nft.rules()} == {f"ctrun ct {a}/web"}
        # a rule from before store ids is its name's, whichever store removes that name
        nft.publish("old", "10.222.0.5", other)
        nft.unpublish("old", owner=a)
        nft.unpublish("web", owner=a)
        nft.remove_network(fake_net, last=True, owner=a)
        assert nft._list() == []  # the last store's last network takes the table
    finally:
        if nft._list():
            nft._run([{"delete": {"table": {"family": "ip", "name": nft.table()}}}])
