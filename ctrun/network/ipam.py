"""IP leases of a network: <root>/networks/NAME.leases.json, {"10.199.0.2": "holder", ...}.

A holder is a container name (or any string the caller picks, e.g. "NAME/IP" for an extra
address); each holder has at most one address.  The file changes only under the network's
lock and is replaced atomically, so readers never take the lock and concurrent creates
never get the same address.  The gateway, network and broadcast addresses are never leased.
"""

from ..errors import Conflict, InvalidInput, NotFound
from ..state import write_json
from . import networks


def _ip_key(ip):
    return tuple(int(b) for b in ip.split("."))


def _read(store, name):
    from ..config import check_name
    check_name(name, "network")  # the name becomes a path
    return networks.read_leases(store, name)


def leases(store, network):
    """{ip: holder} of NETWORK, in address order ({} for an unknown network)."""
    data = _read(store, network)
    return {ip: data[ip] for ip in sorted(data, key=_ip_key)}


def holder(store, network, ip):
    """Who leases IP in NETWORK, or None."""
    return _read(store, network).get(ip)


def address_of(store, network, container):
    """The address CONTAINER leases in NETWORK, or None."""
    return next((ip for ip, h in leases(store, network).items() if h == container), None)


def _name(network):
    return network["name"] if isinstance(network, dict) else network


def allocate(store, network, container, requested=None):
    """Lease an address in NETWORK (a name or a record from networks.get) to CONTAINER.

    Without `requested`: the container's existing lease if it has one (so a retried
    create is idempotent), else the lowest free address.  With `requested`: that address,
    refused if it is outside the subnet, the gateway, the network or broadcast address, or
    another holder's; a different address the container held before is given back."""
    import ipaddress
    name = _name(network)
    if not isinstance(container, str) or not container or "\n" in container:
        raise InvalidInput(f"invalid lease holder {container!r}")
    networks.get(store, name)  # creates the default network on first use, outside our lock
    with networks.locked(store, networks.lock_key(name), f"network '{name}'"):
        net = networks.read(store, name)
        if net is None:  # removed since the get above
            raise NotFound(f"network '{name}' not found; create it with: "
                                    f"ctrun network create {name} --subnet CIDR")
        subnet = ipaddress.IPv4Network(net["subnet"])
        gateway = ipaddress.IPv4Address(net["gateway"])
        data = _read(store, name)
        mine = [ip for ip, h in data.items() if h == container]
        if requested is None:
            if mine:
                return min(mine, key=_ip_key)
            ip = _lowest_free(subnet, gateway, data)
            if ip is None:
                raise Conflict(f"network '{name}' has no free address left in {subnet} "
                               f"({len(data)} leased); destroy a container or use a "
                               "larger network")
        else:
            ip = _check_requested(name, subnet, gateway, data, container, requested)
            if mine == [ip]:
                return ip
        for old in mine:
            del data[old]
        data[ip] = container
        write_json(networks.leases_path(store, name), data)
        return ip


def _lowest_free(subnet, gateway, data):
    import ipaddress
    used = {int(ipaddress.IPv4Address(ip)) for ip in data}
    used.add(int(gateway))
    for i in range(int(subnet.network_address) + 1, int(subnet.broadcast_address)):
        if i not in used:
            return str(ipaddress.IPv4Address(i))
    return None


def _check_requested(name, subnet, gateway, data, container, requested):
    import ipaddress
    try:
        ip = ipaddress.IPv4Address(requested)
    except (ValueError, TypeError):
        raise InvalidInput(f"invalid ip {requested!r}: give an IPv4 address") from None
    where = f"network '{name}' ({subnet})"
    if ip not in subnet:
        raise InvalidInput(f"ip {ip} is outside {where}; pick an address in it or omit --ip")
    if ip == gateway:
        raise InvalidInput(f"ip {ip} is the gateway of {where}; pick another address")
    if ip in (subnet.network_address, subnet.broadcast_address):
        kind = "network" if ip == subnet.network_address else "broadcast"
        raise InvalidInput(f"ip {ip} is the {kind} address of {where}; pick another address")
    other = data.get(str(ip))
    if other is not None and other != container:
        raise InvalidInput(f"ip {ip} is already leased to container '{other.split('/')[0]}' "
                           f"on network '{name}'; pick another address or omit --ip")
    return str(ip)


def release(store, network, container):
    """Give back CONTAINER's address in NETWORK; returns the addresses freed (idempotent)."""
    name = _name(network)
    if container not in _read(store, name).values():
        return []  # nothing to do: no need to wait for the lock
    with networks.locked(store, networks.lock_key(name), f"network '{name}'"):
        data = _read(store, name)
        freed = [ip for ip, h in data.items() if h == container]
        if freed:
            for ip in freed:
                del data[ip]
            write_json(networks.leases_path(store, name), data)
        return freed
