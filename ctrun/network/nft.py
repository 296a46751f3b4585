"""NAT and published ports in one nftables table owned by ctrun (`ip ctrun`).

Every rule carries a comment naming its owner, `ctrun net <id8>/<network>` or
`ctrun ct <id8>/<container>` (id8: the short id of the store that made it), so it is removed
exactly, and so `gc` can find rules whose owner no longer exists, among its own store's
rules only.  (Comments without an id were made before stores had one: the store that
stops or removes an owner of that name removes them too; gc leaves them alone.)

Every store on a host shares the table, rather than one table per store: base chains of
several tables at one hook all see every packet (an accept in one table does not end the
walk through another's), so per-store tables would multiply the per-packet cost and split
what `nft list table ip ctrun` shows; and a host port published by two stores' containers
is a conflict that only a shared table can see.  Because the table is shared, its changes
take a host-wide lock (/run/ctrun), the table is deleted only once no other store has a
rule in it, and the host's ip_forward value is saved host-wide, not in a store: whichever
store removes the last rule puts it back.

Commands go through libnftables' JSON interface (python3-nftables), imported only when a
network operation runs.  Callers serialise changes per owner (network lock, container
lock); the host-wide lock is always taken last, inside those.

Chains (created on demand; `add` is idempotent in nftables):
  guard        filter prerouting -150  drop 127.0.0.0/8 source or destination arriving on a
                                       ctrun bridge: route_localnet=1 (needed for localhost
                                       publishing) would otherwise let a container reach the
                                       host's loopback-only services
  prerouting   nat dstnat               DNAT of published ports to local addresses (hairpin
                                       from containers included), never for 127.0.0.0/8, which
                                       must not be reachable from outside the host
  output       nat -100                 the same DNAT for the host's own connections,
                                       127.0.0.1 included
  postrouting  nat srcnat               masquerade: a subnet leaving by another interface (if
                                       nat), loopback sources leaving by the bridge (host to
                                       127.0.0.1:PORT), DNATed traffic from the subnet back
                                       into it (hairpin between containers)
  forward      filter 0, policy accept  accept established and bridge traffic (no drops)
  isolate      filter forward -10       drop traffic from one ctrun bridge to another unless
                                       the receiving network allows the sender (--allow-from)
  input        filter 0                 --no-host-access: drop a network's new traffic to the
                                       host's own addresses; a container's DNS is let through

A second table of the same name in the bridge family checks what each container's port (the
host end of its veth, or a VM's tap) sends: see guard_port.
"""

import contextlib
import ipaddress
import os
from pathlib import Path

from ..errors import CtrunError, HostUnsupported, InvalidInput, Conflict, NotFound

DEFAULT_TABLE = "ctrun"
FAMILY = "ip"
BRIDGE_FAMILY = "bridge"  # the port guards' table, of the same name
BASE_COMMENT = "ctrun base"
LOOPBACK = {"prefix": {"addr": "127.0.0.0", "len": 8}}

_CHAINS = {
    "guard": {"type": "filter", "hook": "prerouting", "prio": -150},
    "prerouting": {"type": "nat", "hook": "prerouting", "prio": -100},
    "output": {"type": "nat", "hook": "output", "prio": -100},
    "postrouting": {"type": "nat", "hook": "postrouting", "prio": 100},
    "forward": {"type": "filter", "hook": "forward", "prio": 0},
    "isolate": {"type": "filter", "hook": "forward", "prio": -10},
    "input": {"type": "filter", "hook": "input", "prio": 0},
}

_nft_ctx = None


def table():
    """The table name: CTRUN_NFT_TABLE lets tests work in a table of their own."""
    return os.environ.get("CTRUN_NFT_TABLE") or DEFAULT_TABLE


def _comment(kind, name, owner):
    return f"ctrun {kind} {owner}/{name}" if owner else f"ctrun {kind} {name}"


def net_comment(name, owner=None):
    """The comment of network `name`'s rules; owner: its store's short id."""
    return _comment("net", name, owner)


def ct_comment(name, owner=None):
    """The comment of container `name`'s rules; owner: its store's short id."""
    return _comment("ct", name, owner)


def parse_comment(comment):
    """(kind, owner or None, name) of a rule's comment, or None if it is no owner's."""
    parts = comment.split(" ", 2)
    if len(parts) != 3 or parts[0] != "ctrun" or parts[1] not in ("ct", "net"):
        return None
    owner, _, name = parts[2].rpartition("/")
    return parts[1], owner or None, name


def owned_names(kind, owner):
    """Names of the containers (kind "ct") or networks ("net") of store `owner` that have
    rules in the table (a container's port guards included)."""
    found = rules() + (rules(family=BRIDGE_FAMILY) if kind == "ct" else [])
    return sorted({p[2] for p in map(parse_comment, (r["comment"] for r in found))
                   if p and p[0] == kind and p[1] == owner})


def _mine(comment, kind, name, owner):
    """Is comment a rule of `name` of store `owner` (or of `name` before store ids)?"""
    return comment in (_comment(kind, name, owner), _comment(kind, name, None))


# --- the host-wide lock and state ----------------------------------------------------------

HOST_DIR = Path("/run/ctrun")


def host_state_dir():
    """Where the table's host-wide state lives (the saved ip_forward)."""
    return HOST_DIR / ("nft-" + table().replace("/", "_"))


@contextlib.contextmanager
def _host_lock():
    """One writer of the shared table at a time, whichever store it serves: a check and
    the change it allows (a free host port, an empty table) must not interleave.  One lock
    for every table name: the writes are short."""
    import fcntl
    HOST_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(HOST_DIR / "nft.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- libnftables ---------------------------------------------------------------------------

def _ctx():
    global _nft_ctx
    if _nft_ctx is None:
        try:
            import nftables
            _nft_ctx = nftables.Nftables()
        except (ImportError, OSError):
            raise HostUnsupported(
                "nftables is not available: install nftables and python3-nftables") from None
    return _nft_ctx


def _run(cmds):
    """Run JSON commands as one atomic nftables transaction; returns the parsed output."""
    rc, out, err = _ctx().json_cmd({"nftables": cmds})
    if rc != 0:
        raise _error(err)
    return out


def _error(err):
    lines = [ln.strip() for ln in err.splitlines() if "Error:" in ln] or [err.strip()]
    msg = lines[0].split("Error:", 1)[-1].strip() or "unknown error"
    if "not supported" in msg:
        return HostUnsupported(f"nftables failed ({msg}): the kernel lacks nf_tables NAT "
                               "support (load nf_tables, nft_nat, nft_masq, nft_fib)")
    return CtrunError(f"nftables failed: {msg}")


def _list(family=FAMILY):
    """The table's objects as libnftables JSON dicts, or [] when the table does not exist."""
    rc, out, err = _ctx().json_cmd(
        {"nftables": [{"list": {"table": {"family": family, "name": table()}}}]})
    if rc != 0:
        if "No such file or directory" in err:
            return []
        raise _error(err)
    return out.get("nftables", []) if out else []


def _skeleton():
    t = table()
    cmds = [{"add": {"table": {"family": FAMILY, "name": t}}}]
    for name, spec in _CHAINS.items():
        cmds.append({"add": {"chain": {"family": FAMILY, "table": t, "name": name,
                                       "policy": "accept", **spec}}})
    return cmds


def _add_rule(chain, comment, expr):
    return {"add": {"rule": {"family": FAMILY, "table": table(), "chain": chain,
                             "comment": comment, "expr": expr}}}


def _delete_rule(r):
    return {"delete": {"rule": {"family": FAMILY, "table": table(), "chain": r["chain"],
                                "handle": r["handle"]}}}


# --- expression builders --------------------------------------------------------------------

def _match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _ip(field):
    return {"payload": {"protocol": "ip", "field": field}}


def _meta(key):
    return {"meta": {"key": key}}


def _prefix(cidr):
    n = ipaddress.IPv4Network(cidr, strict=False)
    return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}


_COUNTER = {"counter": None}
_LOCAL_DADDR = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


# --- rules listing ---------------------------------------------------------------------------

def rules(comment_prefix=None, family=FAMILY):
    """ctrun's rules: [{"chain", "handle", "comment", "packets", "bytes", "expr"}], in table
    order; comment_prefix keeps those whose comment starts with it (e.g. "ctrun ct ").
    family "bridge": the rules of the port guards (guard_port)."""
    out = []
    for obj in _list(family):
        r = obj.get("rule")
        if not r:
            continue
        comment = r.get("comment", "")
        if comment_prefix is not None and not comment.startswith(comment_prefix):
            continue
        counter = next((e["counter"] for e in r.get("expr", []) if "counter" in e), None) or {}
        out.append({"chain": r["chain"], "handle": r["handle"], "comment": comment,
                    "packets": counter.get("packets"), "bytes": counter.get("bytes"),
                    "expr": r.get("expr", [])})
    return out


def _owned(kind, name, owner):
    return [r for r in rules() if _mine(r["comment"], kind, name, owner)]


# --- networks ---------------------------------------------------------------------------------

def _network_rules(net, owner=None):
    bridge, subnet = net["bridge"], _prefix(net["subnet"])
    comment = net_comment(net["name"], owner)
    iif, oif = _meta("iifname"), _meta("oifname")
    out = [
        _add_rule("guard", comment, [_match(iif, bridge), _match(_ip("saddr"), LOOPBACK),
                                     _COUNTER, {"drop": None}]),
        _add_rule("guard", comment, [_match(iif, bridge), _match(_ip("daddr"), LOOPBACK),
                                     _COUNTER, {"drop": None}]),
        # the host's own connections to 127.0.0.1:PORT leave by the bridge after DNAT
        _add_rule("postrouting", comment, [_match(oif, bridge), _match(_ip("saddr"), LOOPBACK),
                                           _COUNTER, {"masquerade": None}]),
        # hairpin: a container reaching another through a published port must see the
        # reply come back from the host, not straight from the peer on the bridge
        _add_rule("postrouting", comment, [
            _match(oif, bridge), _match(_ip("saddr"), subnet),
            _match({"ct": {"key": "status"}}, "dnat", op="in"), _COUNTER, {"masquerade": None}]),
        _add_rule("forward", comment, [_match(iif, bridge), _COUNTER, {"accept": None}]),
        _add_rule("forward", comment, [_match(oif, bridge), _COUNTER, {"accept": None}]),
    ]
    if net.get("nat", True):
        out.append(_add_rule("postrouting", comment, [
            _match(_ip("saddr"), subnet), _match(oif, bridge, op="!="),
            _COUNTER, {"masquerade": None}]))
    return out


def ensure_network(net, state_dir=None, owner=None):
    """Install a network's rules once (found by comment), enable IPv4 forwarding (saving its
    previous value in <state_dir>/ip_forward.orig the first time; default: host_state_dir())
    and route_localnet on the bridge, which must exist.  net: {"name", "bridge", "subnet",
    "nat"}; owner: the short id of the network's store."""
    conf = _conf_dir(net["bridge"])
    if not conf.is_dir():
        raise NotFound(f"bridge {net['bridge']} of network {net['name']} does not exist: "
                       "create the bridge before its nftables rules")
    try:
        ipaddress.IPv4Network(net["subnet"], strict=False)
    except ValueError:
        raise InvalidInput(f"subnet {net['subnet']!r} of network {net['name']} is not an "
                           "IPv4 CIDR: use e.g. 10.199.0.0/24") from None
    with _host_lock():
        existing = rules()
        cmds = _skeleton()
        if not any(r["comment"] == BASE_COMMENT for r in existing):
            cmds.append(_add_rule("forward", BASE_COMMENT, [
                _match({"ct": {"key": "state"}}, ["established", "related"], op="in"),
                _COUNTER, {"accept": None}]))
        cmds += _fence_base(existing)
        mine = {r["chain"] for r in existing if r["comment"] == net_comment(net["name"], owner)}
        if not mine:
            cmds += _network_rules(net, owner)
        if "isolate" not in mine:  # also a table made by a ctrun that had no fences
            cmds += _fence_rules(net, owner)
        _run(cmds)
        _enable_forwarding(Path(state_dir or host_state_dir()))
    # lets DNATed 127.0.0.1 traffic leave by the bridge and its replies come back
    (conf / "route_localnet").write_text("1\n")


def remove_network(net, state_dir=None, last=False, owner=None):
    """Delete a network's rules; with last=True (its store's last network) also delete the
    tables (ip and bridge), unless another store still has rules in them, and then put
    ip_forward back to the value saved by the first ensure_network.  owner: the network's
    store's short id.  Idempotent."""
    with _host_lock():
        doomed = _owned("net", net["name"], owner)
        if doomed:
            _run([_delete_rule(r) for r in doomed])
        _unfence(net)
        if last and not any(p and p[1] not in (None, owner)
                            for p in (parse_comment(r["comment"]) for r in rules())):
            for family in (FAMILY, BRIDGE_FAMILY):
                if _list(family):
                    _run([{"delete": {"table": {"family": family, "name": table()}}}])
            _restore_forwarding(Path(state_dir or host_state_dir()))
    localnet = _conf_dir(net["bridge"]) / "route_localnet"
    try:
        localnet.write_text("0\n")
    except FileNotFoundError:  # bridge already gone
        pass


_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _conf_dir(bridge):
    # the name becomes a /proc path component: refuse anything that is not an interface name
    if not (isinstance(bridge, str) and 0 < len(bridge) <= 15 and bridge not in (".", "..")
            and not any(c in bridge for c in "/: \t\n")):
        raise InvalidInput(f"bridge name {bridge!r} is invalid: use 1-15 characters without "
                           "'/', ':' or spaces")
    return Path("/proc/sys/net/ipv4/conf") / bridge


def _enable_forwarding(state_dir):
    current = _IP_FORWARD.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: only the first network ever records the host's own value
        fd = os.open(state_dir / "ip_forward.orig", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(current + "\n")
    if current != "1":
        _IP_FORWARD.write_text("1\n")


def _restore_forwarding(state_dir):
    saved = state_dir / "ip_forward.orig"
    try:
        value = saved.read_text().strip()
    except FileNotFoundError:
        return
    if value in ("0", "1") and _IP_FORWARD.read_text().strip() != value:
        _IP_FORWARD.write_text(value + "\n")
    saved.unlink()
    if state_dir == host_state_dir():
        with contextlib.suppress(OSError):
            state_dir.rmdir()


# --- published ports --------------------------------------------------------------------------

def _check_ports(ct_ip, ports):
    try:
        ipaddress.IPv4Address(ct_ip)
    except ValueError:
        raise InvalidInput(f"container address {ct_ip!r} is not an IPv4 address") from None
    out = []
    for p in ports:
        proto = p.get("proto", "tcp")
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"published port protocol {proto!r} is invalid: use tcp or udp")
        host_ip = p.get("host_ip") or "0.0.0.0"
        try:
            ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise InvalidInput(f"published host address {host_ip!r} is not an IPv4 "
                               "address: use 0.0.0.0 or a local IPv4 address") from None
        for key in ("host_port", "ct_port"):
            v = p.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
                raise InvalidInput(f"published port {key} {v!r} is invalid: use 1-65535")
        out.append({"host_ip": host_ip, "host_port": p["host_port"], "ct_port": p["ct_port"],
                    "proto": proto})
    return out


def _published(r):
    """(host_ip, host_port, proto) of a DNAT rule, host_ip "0.0.0.0" when any local address."""
    host_ip, port, proto = "0.0.0.0", None, None
    for e in r["expr"]:
        m = e.get("match")
        if not m or m["op"] != "==" or "payload" not in m["left"]:
            continue
        pl = m["left"]["payload"]
        if pl.get("protocol") == "ip" and pl.get("field") == "daddr":
            host_ip = m["right"]
        elif pl.get("field") == "dport":
            port, proto = m["right"], pl.get("protocol")
    return host_ip, port, proto


def _overlaps(a, b):
    return a == b or (a[1:] == b[1:] and "0.0.0.0" in (a[0], b[0]))


def publish(container, ct_ip, ports, owner=None):
    """Set the container's published ports: DNAT in prerouting and output, replacing any
    earlier rules of that container in one transaction.  ports: [{"host_ip", "host_port",
    "ct_port", "proto"}]; owner: the container's store's short id.  A host port another
    container (of any store) already publishes is a Conflict."""
    ports = _check_ports(ct_ip, ports)
    with _host_lock():
        _publish(container, ct_ip, ports, owner)


def _publish(container, ct_ip, ports, owner):
    comment = ct_comment(container, owner)
    existing = rules("ctrun ct ")
    taken = {_published(r): parse_comment(r["comment"]) for r in existing
             if r["chain"] == "output" and not _mine(r["comment"], "ct", container, owner)}
    seen = []
    for p in ports:
        key = (p["host_ip"], p["host_port"], p["proto"])
        holder = next((o for k, o in taken.items() if _overlaps(k, key)), None)
        if holder is not None:
            theirs = "" if holder[1] == owner else " of another ctrun store"
            raise Conflict(f"host port {p['host_ip']}:{p['host_port']}/{p['proto']} is "
                           f"already published by container {holder[2]}{theirs}: "
                           "choose another host port")
        if any(_overlaps(k, key) for k in seen):
            raise InvalidInput(f"host port {p['host_port']}/{p['proto']} is published twice: "
                               "publish each host port once")
        seen.append(key)
    cmds = _skeleton() + [_delete_rule(r) for r in existing
                          if _mine(r["comment"], "ct", container, owner)]
    for p in ports:
        tail = [_match({"payload": {"protocol": p["proto"], "field": "dport"}}, p["host_port"]),
                _COUNTER, {"dnat": {"addr": ct_ip, "port": p["ct_port"]}}]
        if p["host_ip"] == "0.0.0.0":
            out_match = [_LOCAL_DADDR]
            # 127.0.0.0/8 only from the host itself: a neighbour sending to 127.0.0.1 with
            # our MAC address must not reach a port published on loopback
            pre_match = [_match(_ip("daddr"), LOOPBACK, op="!="), _LOCAL_DADDR]
        else:
            out_match = [_match(_ip("daddr"), p["host_ip"]), _LOCAL_DADDR]
            pre_match = None if p["host_ip"].startswith("127.") else out_match
        if pre_match:
            cmds.append(_add_rule("prerouting", comment, pre_match + tail))
        cmds.append(_add_rule("output", comment, out_match + tail))
    _run(cmds)


def unpublish(container, owner=None):
    """Delete every rule of the container of store `owner`, its port guards included; fine
    when there is none or no table."""
    with _host_lock():
        doomed = _owned("ct", container, owner)
        if doomed:
            _run([_delete_rule(r) for r in doomed])
        for chain in sorted({r["chain"] for r in rules("ctrun ct ", BRIDGE_FAMILY)
                             if _mine(r["comment"], "ct", container, owner)
                             and r["chain"].startswith("port-")}):
            unguard_port(chain[len("port-"):])


# --- networks apart from each other and from the host ----------------------------------------

BRIDGES_SET = "bridges"  # every ctrun bridge with rules in this table
FENCE_COMMENT = BASE_COMMENT + " isolate"
_LOCAL_KINDS = {"set": ["local", "broadcast", "multicast"]}


def _fence_base(existing):
    """The set of ctrun bridges, and what crosses between networks whatever they allow:
    replies, and DNATed traffic (published ports are open to whoever reaches the host)."""
    t = table()
    cmds = [{"add": {"set": {"family": FAMILY, "table": t, "name": BRIDGES_SET,
                             "type": "ifname"}}}]
    if not any(r["comment"] == FENCE_COMMENT for r in existing):
        cmds += [
            _add_rule("isolate", FENCE_COMMENT, [
                _match({"ct": {"key": "state"}}, ["established", "related"], op="in"),
                {"accept": None}]),
            _add_rule("isolate", FENCE_COMMENT, [
                _match({"ct": {"key": "status"}}, "dnat", op="in"), {"accept": None}])]
    return cmds


def _fence_rules(net, owner=None):
    """Traffic routed from another ctrun bridge into this network's is dropped unless it comes
    from a bridge of net["allow_bridges"]; with net["host_access"] false, new traffic from the
    network to the host's own addresses is dropped too (replies of the host's own connections
    pass: they are established)."""
    bridge, comment = net["bridge"], net_comment(net["name"], owner)
    iif, oif = _meta("iifname"), _meta("oifname")
    allowed = [bridge] + [b for b in net.get("allow_bridges", ()) if b != bridge]
    out = [{"add": {"element": {"family": FAMILY, "table": table(), "name": BRIDGES_SET,
                                "elem": [bridge]}}},
           _add_rule("isolate", comment, [
               _match(iif, "@" + BRIDGES_SET), _match(oif, bridge),
               _match(iif, {"set": allowed} if len(allowed) > 1 else bridge, op="!="),
               _COUNTER, {"drop": None}])]
    if not net.get("host_access", True):
        out.append(_add_rule("input", comment, [
            _match(iif, bridge),
            _match({"ct": {"key": "state"}}, {"set": ["established", "related"]}, op="!="),
            _match({"fib": {"result": "type", "flags": ["daddr"]}}, _LOCAL_KINDS),
            _COUNTER, {"drop": None}]))
    return out


def _unfence(net):
    """Take the network's bridge out of the bridges set (its rules went by comment)."""
    for obj in _list():
        s = obj.get("set")
        if s and s["name"] == BRIDGES_SET and net["bridge"] in s.get("elem", []):
            _run([{"delete": {"element": {"family": FAMILY, "table": table(),
                                          "name": BRIDGES_SET, "elem": [net["bridge"]]}}}])


def allow_dns(container, bridge, ct_ip, servers, owner=None):
    """Let a container of a --no-host-access network reach the nameservers it was given when
    they are the host's own (the gateway, typically): inserted at the head of the input chain,
    before its network's drop.  Removed with the container's other rules (unpublish)."""
    servers = [s for s in servers if _is_ipv4(s)]
    if not servers:
        return
    rule = _add_rule("input", ct_comment(container, owner), [
        _match(_meta("iifname"), bridge), _match(_ip("saddr"), ct_ip),
        _match(_ip("daddr"), {"set": servers} if len(servers) > 1 else servers[0]),
        _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
        _match({"payload": {"protocol": "th", "field": "dport"}}, 53),
        _COUNTER, {"accept": None}])
    _run(_skeleton() + [{"insert": rule["add"]}])


def _is_ipv4(addr):
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        return False
    return True


# --- port guards: a container sends only from its own addresses (bridge family) ---------------

PORTS_MAP = "ports"


def _bridge_skeleton():
    """Table, the ports verdict map and the base chain that dispatches on it: one lookup per
    frame whatever the number of ports.  Idempotent (the chain is flushed and refilled)."""
    t = table()
    base = {"family": BRIDGE_FAMILY, "table": t, "name": "ports"}
    return [
        {"add": {"table": {"family": BRIDGE_FAMILY, "name": t}}},
        {"add": {"map": {"family": BRIDGE_FAMILY, "table": t, "name": PORTS_MAP,
                         "type": "ifname", "map": "verdict"}}},
        # before anything else sees the frame, forwarding and delivery to the host alike
        {"add": {"chain": {**base, "type": "filter", "hook": "prerouting", "prio": -300,
                           "policy": "accept"}}},
        {"flush": {"chain": base}},
        {"add": {"rule": {"family": BRIDGE_FAMILY, "table": t, "chain": "ports", "expr": [
            {"vmap": {"key": _meta("iifname"), "data": "@" + PORTS_MAP}}]}}},
    ]


def _port_objects(port):
    t = table()
    return ({"family": BRIDGE_FAMILY, "table": t, "name": f"port-{port}"},
            {"family": BRIDGE_FAMILY, "table": t, "name": f"ip-{port}"})


def guard_port(container, port, mac, ips, owner=None):
    """What enters the bridge from `port` must come from `mac` and one of `ips` (the set
    ip-PORT, changed by set_port_ips): Ethernet source, ARP sender and IPv4 source.  Anything
    but IPv4 and ARP is dropped: networks are IPv4 only, so no IPv6 source could be checked,
    and a container's IPv6 router or neighbour advertisements would redirect its peers'
    traffic.  Rules carry the container's comment; idempotent (the port's chain is
    refilled)."""
    chain, ipset = _port_objects(port)
    comment = ct_comment(container, owner)
    addrs = "@" + ipset["name"]

    def drop(*matches):
        return {"add": {"rule": {"family": BRIDGE_FAMILY, "table": table(),
                                 "chain": chain["name"], "comment": comment,
                                 "expr": [*matches, _COUNTER, {"drop": None}]}}}

    def field(proto, name):
        return {"payload": {"protocol": proto, "field": name}}
    _run(_bridge_skeleton() + [
        {"add": {"set": {**ipset, "type": "ipv4_addr"}}},
        {"flush": {"set": ipset}},
        {"add": {"element": {**ipset, "elem": list(ips)}}},
        {"add": {"chain": chain}},
        {"flush": {"chain": chain}},
        drop(_match(field("ether", "saddr"), mac, op="!=")),
        drop(_match(field("ether", "type"), {"set": ["ip", "arp"]}, op="!=")),
        drop(_match(field("arp", "saddr ether"), mac, op="!=")),
        drop(_match(field("arp", "saddr ip"), addrs, op="!=")),
        drop(_match(field("ip", "saddr"), addrs, op="!=")),
        {"add": {"element": {"family": BRIDGE_FAMILY, "table": table(), "name": PORTS_MAP,
                             "elem": [[port, {"jump": {"target": chain["name"]}}]]}}},
    ])


def set_port_ips(port, add=(), delete=()):
    """Change the addresses a guarded port may send from (set --ip-add/--ip-del)."""
    _, ipset = _port_objects(port)
    cmds = ([{"add": {"element": {**ipset, "elem": list(add)}}}] if add else []) + \
        ([{"delete": {"element": {**ipset, "elem": list(delete)}}}] if delete else [])
    if cmds:
        _run(cmds)


def unguard_port(port):
    """Remove a port's guard; fine when it (or the table) is already gone: the guard's
    objects are made and removed in single transactions, so they exist all or none."""
    chain, ipset = _port_objects(port)
    try:
        _run([{"delete": {"element": {"family": BRIDGE_FAMILY, "table": table(),
                                      "name": PORTS_MAP, "elem": [port]}}},
              {"flush": {"chain": chain}}, {"delete": {"chain": chain}},
              {"delete": {"set": ipset}}])
    except CtrunError as e:
        if "No such file or directory" not in str(e):
            raise
