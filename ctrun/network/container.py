"""A container's network life: options checked at create, plumbing at start, teardown.

Kept apart from links/nft/ipam so that `--net none` and `--net host` (and every verb
that does not start a container) never import pyroute2 (~160 ms).
"""

import os
import re

from ..errors import Conflict, InvalidInput
from .etc import (check_nameservers, dns_servers, hosts_text, resolv_text,  # noqa: F401
                  rewrite_in_place, write_hosts)

MODES = ("none", "host")


def parse_publish(spec):
    """[HOST_IP:]HOST_PORT:CT_PORT[/tcp|udp] -> dict."""
    m = re.fullmatch(r"(?:(\d+\.\d+\.\d+\.\d+):)?(\d+):(\d+)(?:/(tcp|udp))?", spec)
    if not m:
        raise InvalidInput(f"invalid --publish {spec!r}: use [HOST_IP:]HOST_PORT:CT_PORT[/tcp|udp]")
    import ipaddress
    host_ip, hp, cp, proto = m.groups()
    for p in (hp, cp):
        if not 1 <= int(p) <= 65535:
            raise InvalidInput(f"invalid port {p} in --publish {spec!r}: use 1-65535")
    if host_ip:
        ipaddress.IPv4Address(host_ip)
    return {"host_ip": host_ip or "0.0.0.0", "host_port": int(hp), "ct_port": int(cp),
            "proto": proto or "tcp"}


def parse_options(network, ip=None, mac=None, publish=(), dns=(), search=()):
    """The "net" part of a container's config, validated (no lease taken yet)."""
    from ..config import check_name, parse_searchdomains
    network = network or "ctrun0"
    if network not in MODES:
        check_name(network, "network")
    if network in MODES and (ip or mac or publish):
        raise InvalidInput(f"--ip, --mac and --publish need a bridged network, not --net {network}")
    if mac and not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", mac):
        raise InvalidInput(f"invalid --mac {mac!r}: use six hex pairs like 02:42:0a:00:00:05")
    if mac and int(mac[:2], 16) & 1:
        raise InvalidInput(f"--mac {mac} is a multicast address; use a unicast one (02:...)")
    import ipaddress
    dns = check_nameservers(dns)
    if ip:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise InvalidInput(f"invalid --ip {ip!r}: give an IPv4 address") from None
    return {"network": network, "ip": ip, "mac": mac.lower() if mac else None,
            "publish": [parse_publish(p) for p in publish], "dns": dns,
            **({"search": parse_searchdomains(search)} if search else {})}


def check_ports_free(store, name, publish):
    """Refuse a host port another container of this store already publishes."""
    from ..config import Config
    wanted = {(p["host_port"], p["proto"]) for p in publish}
    if not wanted:
        return
    for other in store.container_names():
        if other == name:
            continue
        conf = Config.load(store.container_dir(other))
        for p in ((conf.net if conf else None) or {}).get("publish", []):
            if (p["host_port"], p["proto"]) in wanted:
                raise Conflict(f"host port {p['host_port']}/{p['proto']} is already published by "
                               f"container '{other}'; choose another port")


def lease(store, name, net):
    """Take the address at create (kept on disk with the container, released at destroy)."""
    if net["network"] in MODES:
        return net
    from . import ipam, networks
    n = networks.get(store, net["network"])
    ip = ipam.allocate(store, n["name"], name, net.get("ip"))
    from . import link
    # the store's root goes into the name: containers are unique within one store only
    return {**net, "ip": ip, "mac": net.get("mac") or _mac_for(ip),
            "veth": link.veth_name(f"{store.root}/{name}"),
            "gateway": n["gateway"], "prefix": int(n["subnet"].split("/")[1]),
            "bridge": n["bridge"]}


def _mac_for(ip):
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def release(store, name, net):
    if not net or net.get("network") in MODES or not net.get("ip"):
        return
    from . import ipam
    ipam.release(store, net["network"], name)
    for extra in net.get("extra_ips", []):
        ipam.release(store, net["network"], f"{name}/{extra}")


def up(store, name, net, pid, tap=None):
    """Plumb a started (not yet running) container into its network; a VM's tap device
    (tap: its name, pid: QEMU's) joins the same bridge, and its guest sets the address."""
    if not net or net["network"] in MODES:
        return
    from . import link, networks, nft
    n = networks.get(store, net["network"])
    networks.ensure_bridge(store, n)  # refused if another store owns a bridge of that name
    port = tap or net["veth"]
    with store.lock(".nft"):  # one nftables writer at a time: rules are added by comment
        nft.ensure_network({**n, "allow_bridges": _allowed_bridges(store, n)},
                           owner=store.short_id)
        # before the port joins the bridge: its first frame is already checked
        nft.guard_port(name, port, net.get("mac") or _mac_for(net["ip"]),
                       [net["ip"]] + net.get("extra_ips", []), owner=store.short_id)
    if tap:
        link.enslave(tap, n["bridge"], n.get("mtu", 1500))
    else:
        link.attach(pid, n["bridge"], net["veth"], f"{net['ip']}/{n['subnet'].split('/')[1]}",
                    n["gateway"], mac=net.get("mac"), mtu=n.get("mtu", 1500))
        for extra in net.get("extra_ips", []):
            link.add_address(pid, f"{extra}/{n['subnet'].split('/')[1]}")
    if net.get("publish"):
        with store.lock(".nft"):
            nft.publish(name, net["ip"], net["publish"], owner=store.short_id)
    if not n.get("host_access", True):
        with store.lock(".nft"):
            nft.allow_dns(name, n["bridge"], net["ip"], dns_servers(net), owner=store.short_id)
    write_hosts(store, n["name"])


def _allowed_bridges(store, n):
    """The bridges of the networks n accepts traffic from (--allow-from) that still exist."""
    from . import networks
    out = []
    for other in n.get("allow_from", []):
        rec = networks.read(store, other)
        if rec is not None:
            out.append(rec["bridge"])
    return out


def change_ips(store, name, net, add, delete, pid):
    """Extra addresses: leased like the main one (holder "NAME/IP"), live if pid is given."""
    import ipaddress
    from . import ipam, link
    prefix = net["prefix"]
    extra = list(net.get("extra_ips", []))
    for ip in add:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise InvalidInput(f"invalid --ip-add {ip!r}: give an IPv4 address") from None
        if ip == net["ip"] or ip in extra:
            raise InvalidInput(f"{ip} is already an address of container '{name}'")
        ipam.allocate(store, net["network"], f"{name}/{ip}", ip)
        try:
            if pid:
                _guard_ips(store, net, add=[ip])  # its port may send from it first
                link.add_address(pid, f"{ip}/{prefix}")
        except BaseException:
            ipam.release(store, net["network"], f"{name}/{ip}")
            raise
        extra.append(ip)
    for ip in delete:
        if ip not in extra:
            raise InvalidInput(f"{ip} is not an extra address of container '{name}' "
                               f"(its addresses: {', '.join([net['ip']] + extra)})")
        if pid:
            link.del_address(pid, f"{ip}/{prefix}")
            _guard_ips(store, net, delete=[ip])
        ipam.release(store, net["network"], f"{name}/{ip}")
        extra.remove(ip)
    return {**net, "extra_ips": extra}


def _guard_ips(store, net, add=(), delete=()):
    from . import nft
    with store.lock(".nft"):
        nft.set_port_ips(net["veth"], add, delete)


def down(store, name, net):
    """After the container's end: its rules go (its veth went with its namespace)."""
    if not net or net.get("network") in MODES:
        return
    from . import nft
    nft.unpublish(name, owner=store.short_id)  # published ports, DNS allowance, port guard
    from . import link
    # the kernel removes the pair with the namespace, a few ms after the last process
    # is gone: wait for that rather than load pyroute2 (~160 ms) to delete it ourselves
    import time
    deadline = time.monotonic() + 1.0
    while link.exists(net["veth"]) and time.monotonic() < deadline:
        time.sleep(0.005)
    if link.exists(net["veth"]):
        link.detach(net["veth"])


def rewrite_etc(store, name, conf):
    """After a --hostname, --nameserver or --searchdomain change: the container's generated
    /etc/hostname, /etc/hosts and /etc/resolv.conf from its (new) config."""
    etc = store.container_dir(name) / "etc"
    hostname = conf.get("hostname") or name
    net = conf.get("net") or {}
    rewrite_in_place(etc / "hostname", hostname + "\n")
    rewrite_in_place(etc / "resolv.conf", resolv_text(net))
    if bridged(net):
        write_hosts(store, net["network"])  # the peers' files name it too
    elif net.get("network") != "host":
        rewrite_in_place(etc / "hosts", hosts_text(name, hostname, net, {}))


class Plumber:
    """Network set-up in a process forked at the start of a verb.

    pyroute2 costs ~160 ms to import; the forked process pays it on the other CPU while
    this one creates the cgroup, builds the spec and sets the container up, then it plumbs
    the container (up()) when asked.  cancel() lets it go unused."""

    def __init__(self):
        import json
        self._json = json
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._req_w)
            os.close(self._rep_r)
            self._serve(req_r, rep_w)
        os.close(req_r)
        os.close(rep_w)

    def _serve(self, req_r, rep_w):
        reply = {"ok": True}
        try:
            from . import nft, rtnl
            rtnl.messages()  # the cost being moved off the path
            try:
                nft._ctx()  # libnftables too, while the parent is still busy
            except Exception:  # noqa: BLE001 - reported by up() if nftables is needed
                pass
            # one line, not EOF: processes forked after this one (the container's init)
            # hold copies of the write end
            with os.fdopen(req_r, "rb") as f:
                data = f.readline().strip()
            if data:
                from ..state import Store
                req = self._json.loads(data)
                up(Store(req["root"]), req["name"], req["net"], req["pid"])
        except BaseException as e:  # noqa: BLE001 - the error travels to the parent
            reply = {"ok": False, "kind": type(e).__name__, "message": str(e)}
        os.write(rep_w, self._json.dumps(reply).encode() + b"\n")
        os._exit(0)

    def up(self, store, name, net, pid):
        os.write(self._req_w, self._json.dumps({"root": str(store.root), "name": name,
                                                "net": net, "pid": pid}).encode() + b"\n")
        os.close(self._req_w)
        self._req_w = None
        reply = self._finish()
        if not reply.get("ok"):
            from .. import errors
            cls = getattr(errors, reply.get("kind", ""), None)
            if not (isinstance(cls, type) and issubclass(cls, errors.CtrunError)):
                cls = errors.CtrunError
            raise cls(reply.get("message", "network set-up failed"))

    def _finish(self):
        with os.fdopen(self._rep_r, "rb") as f:
            data = f.readline()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        return self._json.loads(data or b'{"ok": false, "message": "network helper died"}')

    def cancel(self):
        if self._req_w is not None:
            os.write(self._req_w, b"\n")  # an empty request: the helper leaves
            os.close(self._req_w)
            self._req_w = None
            self._finish()


def bridged(net):
    return bool(net and net.get("network") not in MODES and net.get("ip"))


def plumber_for(net):
    """A Plumber when the container joins a bridged network, else None."""
    return Plumber() if bridged(net) else None
