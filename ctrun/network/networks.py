"""The network store: one JSON file per bridged network, and its checks.

  <root>/networks/NAME.json         {"name", "bridge", "subnet", "gateway", "nat", "mtu",
                                     and when set: "allow_from" [networks whose containers
                                     may reach this one's], "host_access" false}
  <root>/networks/NAME.leases.json  the IP leases (see ipam.py)

The set of networks changes only under the store-wide lock ".networks", so two concurrent
creates can never both pass the overlap check.  Lock keys start with a dot because no
container can have such a name: a container's lock file (locks/NAME.lock, unlinked when it
is destroyed) must never be a network's.

Bridge names: the default network uses "ctrun0"; another network NAME uses "ct-NAME" when
that fits the kernel's 15 characters, else "ct-" + its first 7 characters + "-" + 4 hex of
a checksum of the whole name (so long names sharing a prefix still get distinct bridges).
The prefix keeps ctrun's bridges recognisable and away from the host's own names (eth0...).

Bridge ownership: bridge names are host-wide but networks live in a store, so two stores
(say /var/lib/ctrun and a scratch --root) can both have a network whose bridge is ctrun0.
The store that makes a bridge marks it with its id in the bridge's alias (IFLA_IFALIAS,
`ctrun:<store id> <store root>`, shown by `ip link`); another store that wants a bridge of
that name fails with a one-line error instead of taking it over (its containers would share
the first store's bridge and addresses), and `network rm` deletes only its own store's
bridge.  A ctrun bridge without an alias predates store ids: the first store to use it
claims it.  The check and the claim hold a host-wide lock (/run/ctrun/bridges.lock).

Pure Python: /proc/net/route and /sys/class/net are read directly, ipaddress is imported
only inside the functions that need it (no verb that skips networking pays for it).
"""

import contextlib
import os

from ..errors import AlreadyExists, Conflict, InvalidInput, NotFound
from ..state import read_json, write_json

DEFAULT = "ctrun0"
DEFAULT_BRIDGE = "ctrun0"
# the default network's subnet: the first of these that collides with nothing
DEFAULT_CANDIDATES = tuple(f"10.199.{i}.0/24" for i in range(256))
# names `--net` gives another meaning to, and a suffix the leases files use
RESERVED = ("none", "host")
LEASES_SUFFIX = ".leases"
NETWORKS_LOCK = ".networks"
IFNAMSIZ = 15

# module-level so tests can point them at fakes
ROUTES = "/proc/net/route"
SYS_NET = "/sys/class/net"


def netdir(store):
    return store.root / "networks"


def net_path(store, name):
    return netdir(store) / f"{name}.json"


def leases_path(store, name):
    return netdir(store) / f"{name}{LEASES_SUFFIX}.json"


def lock_key(name):
    """The lock serialising the leases of network NAME (see the module docstring)."""
    return ".net." + name


@contextlib.contextmanager
def locked(store, key, what):
    """store.lock(key), with a timeout message that names the network, not a container."""
    cm = store.lock(key)
    try:
        cm.__enter__()
    except Conflict:
        raise Conflict(f"{what} is locked by another ctrun command; wait for it to finish") \
            from None
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


def _check_name(name):
    from ..config import check_name
    check_name(name, "network")
    if name in RESERVED:
        raise InvalidInput(f"invalid network name {name!r}: '{name}' means --net {name}; "
                           "choose another name")
    if name.endswith(LEASES_SUFFIX):
        raise InvalidInput(f"invalid network name {name!r}: it must not end in "
                           f"'{LEASES_SUFFIX}'; choose another name")
    return name


def read(store, name):
    """The record of network NAME, or None; never creates the default one (see get)."""
    net = read_json(net_path(store, name))
    return net if isinstance(net, dict) and net.get("name") == name else None


def read_leases(store, name):
    """{ip: holder} as the leases file holds it ({} when there is none); ipam.py
    allocates and releases them."""
    data = read_json(leases_path(store, name), {})
    return data if isinstance(data, dict) else {}


def get(store, name, create_default=True):
    """The network NAME; the default one is created on first use."""
    _check_name(name)
    net = read(store, name)
    if net is not None:
        return net
    if name == DEFAULT and create_default:
        with locked(store, NETWORKS_LOCK, "the network list"):
            net = read(store, name)  # a concurrent first use may have won
            if net is None:
                net = _create(store, name, candidate_default_subnet(store))
        return net
    raise NotFound(f"network '{name}' not found; create it with: "
                   f"ctrun network create {name} --subnet CIDR")


def list_networks(store):
    out = []
    try:
        files = sorted(os.listdir(netdir(store)))
    except FileNotFoundError:
        return out
    for f in files:
        if f.startswith(".") or not f.endswith(".json") or f.endswith(LEASES_SUFFIX + ".json"):
            continue
        net = read(store, f[:-len(".json")])
        if net is not None:  # not a network file (state another module keeps here)
            out.append(net)
    return out


# ------------------------------------------------------------------ host facts
def host_routes(path=None):
    """The host's IPv4 routes as [(iface, IPv4Network)], default routes left out."""
    import ipaddress
    import struct
    out = []
    try:
        with open(path or ROUTES) as f:
            lines = f.read().splitlines()[1:]
    except FileNotFoundError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        # the kernel prints the big-endian address as a native integer: repack it natively
        dest, mask = (ipaddress.IPv4Address(struct.pack("=I", int(fields[i], 16)))
                      for i in (1, 7))
        if int(mask) == 0:
            continue  # a default route covers everything; it is not a collision
        try:
            out.append((fields[0], ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)))
        except ValueError:  # a non-contiguous mask: nothing we could collide with sanely
            continue
    return out


def interface_exists(ifname):
    return os.path.lexists(os.path.join(SYS_NET, ifname))


def is_bridge(ifname):
    return os.path.isdir(os.path.join(SYS_NET, ifname, "bridge"))


def default_bridge(name):
    if name == DEFAULT:
        return DEFAULT_BRIDGE
    if len("ct-" + name) <= IFNAMSIZ:
        return "ct-" + name
    import zlib
    return f"ct-{name[:7]}-{zlib.crc32(name.encode()) & 0xffff:04x}"


def _overlap(store, subnet, own_bridge, skip=None):
    """What `subnet` (an IPv4Network) collides with, as a phrase, or None.

    Routes on the bridges of this store's networks (and on the network's own bridge, a
    leftover ctrun will reuse) are ctrun's own, not the host's; a bridge another store
    owns is the host's like any other interface."""
    nets = [n for n in list_networks(store) if n["name"] != skip]
    import ipaddress
    for n in nets:
        if ipaddress.IPv4Network(n["subnet"]).overlaps(subnet):
            return f"network '{n['name']}' ({n['subnet']})"
    ours = {b for b in {n["bridge"] for n in nets} | {own_bridge}
            if bridge_owner(b)[0] in (None, store.id)}
    for iface, route in host_routes():
        if iface not in ours and route.overlaps(subnet):
            theirs = bridge_owner(iface)
            where = (f" (bridge of the ctrun store {theirs[1] or 'with id ' + theirs[0]})"
                     if theirs[0] else "")
            return f"the host route {route} on {iface}{where}"
    return None


# ------------------------------------------------------------------ bridge ownership
ALIAS_PREFIX = "ctrun:"
BRIDGES_LOCK = "/run/ctrun/bridges.lock"


def bridge_owner(bridge):
    """(store id, store root) of the ctrun store that owns interface `bridge`; (None, None)
    if no store does: no such interface, a ctrun bridge from before store ids, or one whose
    store is gone (its root no longer holds that id: a removed scratch store must not keep
    its bridge name from the others); ("", None) if its alias is the host's own label."""
    try:
        with open(os.path.join(SYS_NET, bridge, "ifalias")) as f:
            alias = f.read().strip()
    except OSError:  # no such interface (or an invalid name: nothing of ours)
        return None, None
    if not alias:
        return None, None
    if not alias.startswith(ALIAS_PREFIX):
        return "", None
    sid, _, root = alias[len(ALIAS_PREFIX):].partition(" ")
    try:
        with open(os.path.join(root, "store-id")) as f:
            alive = f.read().strip() == sid
    except OSError:
        alive = False
    return (sid, root) if alive else (None, None)


def check_bridge_owner(store, bridge):
    """Refuse a bridge that belongs to another ctrun store (or carries a host's label)."""
    sid, root = bridge_owner(bridge)
    if sid is None or sid == store.id:
        return
    if sid == "":
        raise Conflict(f"bridge name {bridge} is already used by a host interface; "
                       "create a network with another name: ctrun network create NAME "
                       "--subnet CIDR, or use --net none")
    raise Conflict(f"bridge '{bridge}' belongs to another ctrun store ({root or 'id ' + sid}); "
                   "create a network with another name: ctrun network create NAME "
                   "--subnet CIDR, or use --net none")


@contextlib.contextmanager
def _bridges_locked():
    import fcntl
    os.makedirs(os.path.dirname(BRIDGES_LOCK), mode=0o700, exist_ok=True)
    fd = os.open(BRIDGES_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_bridge(store, net):
    """The network's bridge, up with its gateway address, and marked as this store's; a
    bridge of that name owned by another store is a Conflict, never taken over."""
    from . import link
    with _bridges_locked():
        check_bridge_owner(store, net["bridge"])
        link.ensure_bridge(net["bridge"], f"{net['gateway']}/{net['subnet'].split('/')[1]}",
                           net.get("mtu", 1500))
        if bridge_owner(net["bridge"])[0] != store.id:
            from .rtnl import Rtnl, ifindex
            with Rtnl() as nl:
                nl.set_alias(ifindex(net["bridge"]), f"{ALIAS_PREFIX}{store.id} {store.root}")


def remove_bridge(store, net):
    """Delete the network's bridge if this store owns it (or nobody does and nothing is
    attached to it); another store's bridge of that name is left alone."""
    from . import link
    bridge = net["bridge"]
    with _bridges_locked():
        sid = bridge_owner(bridge)[0]
        if sid == store.id or (sid is None and not _ports(bridge)):
            link.remove_bridge(bridge)


def _ports(bridge):
    try:
        return os.listdir(os.path.join(SYS_NET, bridge, "brif"))
    except OSError:
        return []


def candidate_default_subnet(store):
    """The first of 10.199.0.0/24 .. 10.199.255.0/24 that collides with nothing."""
    import ipaddress
    for cidr in DEFAULT_CANDIDATES:
        if _overlap(store, ipaddress.IPv4Network(cidr), DEFAULT_BRIDGE, skip=DEFAULT) is None:
            return cidr
    raise Conflict(f"no free subnet for the default network {DEFAULT} in 10.199.0.0/16 "
                   "(every /24 collides with a host route or network); create it with: "
                   f"ctrun network create {DEFAULT} --subnet CIDR")


# ------------------------------------------------------------------ create / remove
def _parse_subnet(subnet):
    import ipaddress
    if not isinstance(subnet, str) or "/" not in subnet:
        raise InvalidInput(f"invalid subnet {subnet!r}: use an IPv4 CIDR like 10.200.0.0/24")
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError:
        try:
            fixed = ipaddress.IPv4Network(subnet, strict=False)
        except ValueError:
            raise InvalidInput(f"invalid subnet {subnet!r}: use an IPv4 CIDR like "
                               "10.200.0.0/24") from None
        raise InvalidInput(f"invalid subnet {subnet!r}: it has host bits set; use {fixed}") \
            from None
    if not 8 <= net.prefixlen <= 30:
        raise InvalidInput(f"invalid subnet {subnet!r}: use a prefix length from /8 to /30")
    return net


def _parse_gateway(gateway, net):
    import ipaddress
    if gateway is None:
        return net.network_address + 1
    try:
        gw = ipaddress.IPv4Address(gateway)
    except (ValueError, TypeError):
        raise InvalidInput(f"invalid gateway {gateway!r}: give an IPv4 address") from None
    if gw not in net:
        raise InvalidInput(f"gateway {gw} is outside subnet {net}; pick an address in it")
    if gw in (net.network_address, net.broadcast_address):
        kind = "network" if gw == net.network_address else "broadcast"
        raise InvalidInput(f"gateway {gw} is the {kind} address of {net}; pick a host address, "
                           f"like {net.network_address + 1}")
    return gw


def _check_bridge(bridge):
    import re
    if not isinstance(bridge, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", bridge):
        raise InvalidInput(f"invalid bridge name {bridge!r}: use 1-15 characters from letters, "
                           "digits, '_', '.', '-', starting with a letter or digit")
    return bridge


def _check_args(name, subnet, gateway, nat, mtu, bridge):
    _check_name(name)
    net = _parse_subnet(subnet)
    gw = _parse_gateway(gateway, net)
    if not isinstance(nat, bool):
        raise InvalidInput(f"invalid nat {nat!r}: use true or false")
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise InvalidInput(f"invalid mtu {mtu!r}: use a number from 68 to 65535")
    if bridge is not None:
        _check_bridge(bridge)
    return net, gw


def create(store, name, subnet, gateway=None, nat=True, mtu=1500, bridge=None,
           allow_from=(), host_access=True):
    """Record a new network (the bridge itself is made when a container first needs it).

    Traffic from another network's containers is dropped unless that network is in
    allow_from; host_access=False drops the containers' traffic to the host's addresses."""
    _check_args(name, subnet, gateway, nat, mtu, bridge)
    with locked(store, NETWORKS_LOCK, "the network list"):
        return _create(store, name, subnet, gateway, nat, mtu, bridge, allow_from, host_access)


def _check_fences(store, name, allow_from, host_access):
    if not isinstance(host_access, bool):
        raise InvalidInput(f"invalid host_access {host_access!r}: use true or false")
    out = []
    for other in allow_from:
        _check_name(other)
        if other == name:
            raise InvalidInput(f"--allow-from {other!r} names the network itself; its "
                               "containers always reach each other: drop it")
        if read(store, other) is None:
            raise NotFound(f"--allow-from network '{other}' not found; create it first "
                           "(ctrun network list shows the networks)")
        if other not in out:
            out.append(other)
    return out


def _create(store, name, subnet, gateway=None, nat=True, mtu=1500, bridge=None,
            allow_from=(), host_access=True):
    """create() with the network-list lock held."""
    net, gw = _check_args(name, subnet, gateway, nat, mtu, bridge)
    allow_from = _check_fences(store, name, allow_from, host_access)
    if read(store, name) is not None:
        raise AlreadyExists(f"network '{name}' already exists; inspect it with: "
                            f"ctrun network inspect {name}")
    explicit = bridge is not None
    bridge = bridge or default_bridge(name)
    for other in list_networks(store):
        if other["bridge"] == bridge:
            raise Conflict(f"bridge {bridge} is already used by network '{other['name']}'; "
                           "choose another bridge name")
    check_bridge_owner(store, bridge)
    if interface_exists(bridge) and (explicit or not is_bridge(bridge)):
        # a bridge under the name ctrun derives is ctrun's own leftover (a removal that
        # crashed before its teardown): it is reused; anything else is the host's
        raise Conflict(f"bridge name {bridge} is already used by a host interface; "
                       + ("choose another bridge name" if explicit else
                          "choose another network name or bridge name"))
    clash = _overlap(store, net, bridge)
    if clash:
        raise Conflict(f"subnet {net} of network '{name}' overlaps {clash}; "
                       "choose another subnet")
    rec = {"name": name, "bridge": bridge, "subnet": str(net), "gateway": str(gw),
           "nat": nat, "mtu": mtu}
    if allow_from:
        rec["allow_from"] = allow_from
    if not host_access:
        rec["host_access"] = False
    netdir(store).mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(leases_path(store, name))  # never inherit leases of a half-removed namesake
    write_json(net_path(store, name), rec)
    return rec


def remove(store, name, in_use=None):
    """Forget network NAME; refused while a container holds an address in it.

    in_use: optional predicate container -> bool; leases of containers it reports gone
    (a crashed create) do not block the removal.  The caller tears down the bridge and
    rules of the returned record."""
    _check_name(name)
    with locked(store, NETWORKS_LOCK, "the network list"), \
            locked(store, lock_key(name), f"network '{name}'"):
        net = read(store, name)
        if net is None:
            raise NotFound(f"network '{name}' not found; list networks with: ctrun network list")
        users = sorted({holder.split("/")[0] for holder in read_leases(store, name).values()})
        if in_use is not None:
            users = [u for u in users if in_use(u)]
        if users:
            raise Conflict(f"network '{name}' has containers {', '.join(users)} attached; "
                           "destroy them first")
        # leases first: a crash in between leaves a network without leases, never
        # leases without a network
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leases_path(store, name))
        os.unlink(net_path(store, name))
    return net
