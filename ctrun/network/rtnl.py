"""rtnetlink requests, one at a time and acknowledged, encoded by pyroute2's message classes.

pyroute2's IPRoute sits on its asyncio core: loading it costs ~140 ms here, most of a
bridged container start.  Its message classes (ifinfmsg, ifaddrmsg, rtmsg), which know
every attribute's layout, load in ~45 ms on their own.  The few requests ctrun makes (a
bridge, a veth pair, an address, a route, a delete) are each one message and one ack, so a
plain netlink socket carries them.  A socket talks to the network namespace it was created
in: open Rtnl after setns() to work inside a container's.

`import pyroute2` would also import every API the package has (NDB, IPDB, conntrack,
asyncio, ...); a bare package module standing in for its __init__ lets the message modules
load alone.  The package's real __init__ runs on the first use of a name it defines, so a
program that imports ctrun and then pyroute2's own API still gets all of it.
"""

import os
import socket
import struct
import sys

RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE = 16, 17, 20, 21, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFF_UP = 0x1


class NetlinkError(OSError):
    """A request the kernel refused; .code is the errno (as pyroute2's NetlinkError)."""

    @property
    def code(self):
        return self.errno


def messages():
    """pyroute2's (ifinfmsg, ifaddrmsg, rtmsg) classes, without the package's __init__."""
    if "pyroute2" not in sys.modules:
        import importlib.machinery
        import types
        spec = importlib.machinery.PathFinder.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations:
            pkg = types.ModuleType("pyroute2")
            pkg.__spec__, pkg.__path__ = spec, list(spec.submodule_search_locations)
            pkg.__file__, pkg.__loader__ = spec.origin, spec.loader

            def finish(name):  # PEP 562: a name the bare module lacks
                if name.startswith("__") or importlib.machinery.PathFinder.find_spec(
                        f"pyroute2.{name}", pkg.__path__):
                    # a submodule (from pyroute2 import config): the import system loads it
                    raise AttributeError(name)
                del pkg.__getattr__
                spec.loader.exec_module(pkg)  # the package's own __init__, now
                try:
                    return pkg.__dict__[name]
                except KeyError:
                    raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") \
                        from None
            pkg.__getattr__ = finish
            sys.modules["pyroute2"] = pkg
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg
    return ifinfmsg, ifaddrmsg, rtmsg


def ifindex(name):
    """The index of interface name in the caller's network namespace; ENODEV if none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:  # raised without an errno
        raise NetlinkError(19, os.strerror(19)) from None  # ENODEV


class Rtnl:
    """A NETLINK_ROUTE socket in the caller's current network namespace."""

    def __init__(self):
        self.ifinfmsg, self.ifaddrmsg, self.rtmsg = messages()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def request(self, msg, mtype, flags=0):
        """Send msg as mtype and wait for its ack; NetlinkError if the kernel refuses."""
        self.seq += 1
        hdr = msg["header"]
        hdr["type"], hdr["flags"] = mtype, NLM_F_REQUEST | NLM_F_ACK | flags
        hdr["sequence_number"], hdr["pid"] = self.seq, 0
        msg.encode()
        self.sock.send(msg.data)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, typ, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                if typ == NLMSG_ERROR and seq == self.seq:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    return
                off += max(16, (length + 3) & ~3)

    # --- links
    def _link(self, index=0, up=None, attrs=()):
        m = self.ifinfmsg()
        m["index"] = index
        if up is not None:
            m["flags"], m["change"] = (IFF_UP if up else 0), IFF_UP
        m["attrs"] = [a for a in attrs if a[1] is not None]
        return m

    def add_bridge(self, name, mtu):
        self.request(self._link(attrs=[("IFLA_IFNAME", name), ("IFLA_MTU", mtu),
                                       ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND",
                                                                     "bridge")]})]),
                     RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def add_veth(self, name, mtu, master, peer, peer_netns_fd, peer_mac):
        """A veth pair: name up on bridge index master; peer born in the namespace behind
        peer_netns_fd with its final name, mac and mtu (down: its owner brings it up)."""
        peer_attrs = {"attrs": [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd),
                                ("IFLA_ADDRESS", peer_mac), ("IFLA_MTU", mtu)]}
        info = {"attrs": [("IFLA_INFO_KIND", "veth"),
                          ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer_attrs)]})]}
        self.request(self._link(up=True, attrs=[("IFLA_IFNAME", name), ("IFLA_MTU", mtu),
                                                ("IFLA_MASTER", master),
                                                ("IFLA_LINKINFO", info)]),
                     RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def set_link(self, index, up=None, mtu=None, master=None):
        self.request(self._link(index, up, [("IFLA_MTU", mtu), ("IFLA_MASTER", master)]),
                     RTM_NEWLINK)

    def set_alias(self, index, alias):
        """IFLA_IFALIAS: the free-text label `ip link` shows as "alias" (ctrun marks a
        bridge's owner store with it)."""
        self.request(self._link(index, attrs=[("IFLA_IFALIAS", alias)]), RTM_NEWLINK)

    def del_link(self, name):
        self.request(self._link(attrs=[("IFLA_IFNAME", name)]), RTM_DELLINK)

    # --- addresses and routes (IPv4)
    def address(self, add, index, ip, prefixlen):
        m = self.ifaddrmsg()
        m["family"], m["prefixlen"], m["index"] = socket.AF_INET, prefixlen, index
        m["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
        self.request(m, RTM_NEWADDR if add else RTM_DELADDR,
                     NLM_F_CREATE | NLM_F_EXCL if add else 0)

    def add_default_route(self, gateway, oif):
        m = self.rtmsg()
        # main table, static (boot) protocol, universe scope, unicast
        m["family"], m["table"], m["proto"], m["scope"], m["type"] = socket.AF_INET, 254, 3, 0, 1
        m["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", oif)]
        self.request(m, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)
