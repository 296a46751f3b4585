"""Links with netlink (pyroute2): the network's bridge, and one veth pair per container.

The container end of a veth pair is created directly inside the container's network
namespace, so the kernel deletes the pair by itself when that namespace dies: a container
that exits, crashes or is killed never leaves an interface behind on the host.

Whatever must happen inside a container's namespace runs in a forked child that setns()es
into it and opens its own netlink socket there (a netlink socket talks to the namespace
it was created in).  pyroute2's NetNS would do the same through helper processes, at a
much higher cost.  The child reports back through a pipe as JSON and leaves with _exit.

Requests go through rtnl (pyroute2's message classes on a plain netlink socket), imported
inside the functions only: its import costs more than a CLI verb that never touches the
network may spend.
"""

import errno
import json
import os
import re
import select
import signal
import time

from ..errors import Conflict, CtrunError, InvalidInput, NotFound
from ..namespaces import join as nsjoin

_SYS = "/sys/class/net"
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_CHILD_TIMEOUT = 10.0  # seconds a netns child may take before it counts as stuck


# --- names and cheap checks (sysfs only: no netlink) ---

def _check_name(ifname):
    # the kernel's rule (dev_valid_name), checked here so a bad name never reaches sysfs paths
    if (not isinstance(ifname, str) or not 0 < len(ifname) <= 15 or ifname in (".", "..")
            or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname)):
        raise InvalidInput(f"invalid interface name {ifname!r}: use 1-15 characters without "
                           f"'/', ':' or spaces")
    return ifname


def exists(ifname):
    """Whether an interface of that name exists in the host's network namespace."""
    return os.path.exists(f"{_SYS}/{_check_name(ifname)}")


def _is_bridge(ifname):
    return os.path.isdir(f"{_SYS}/{ifname}/bridge")


def _sys_int(ifname, attr, base=10):
    with open(f"{_SYS}/{ifname}/{attr}") as f:
        return int(f.read().strip(), base)


def veth_name(container):
    """The host-side veth name of a container: "vc" + 10 hex digits of a hash of its name
    (stable across starts, 12 characters, within the kernel's 15)."""
    import hashlib
    return "vc" + hashlib.sha256(container.encode()).hexdigest()[:10]


def mac_for_ip(ip):
    """A locally administered unicast MAC derived from an IPv4 address: 02:42:a:b:c:d."""
    import ipaddress
    raw = ipaddress.ip_address(ip).packed[-4:]
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def _errno_of(exc):
    code = getattr(exc, "code", None)  # pyroute2's NetlinkError
    if not isinstance(code, int):
        code = getattr(exc, "errno", None)
    return code if isinstance(code, int) else None


def _why(exc):
    code = _errno_of(exc)
    if code:
        return os.strerror(code).lower()
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).lower()


# --- the host side: bridges ---

def ensure_bridge(name, gateway_cidr, mtu=1500):
    """Create the bridge if absent, give it gateway_cidr (e.g. "10.199.0.1/24") and mtu, and
    bring it up.  Idempotent; an existing interface of that name that is no bridge is a
    Conflict."""
    import ipaddress
    _check_name(name)
    try:
        gw = ipaddress.ip_interface(gateway_cidr)
    except ValueError:
        raise InvalidInput(f"invalid gateway address {gateway_cidr!r} for bridge {name}: "
                           f"use ADDRESS/PREFIX, e.g. 10.199.0.1/24") from None
    if exists(name) and not _is_bridge(name):
        raise Conflict(f"interface {name} exists and is not a bridge; choose another bridge name")
    from .rtnl import NetlinkError, Rtnl
    created = False
    step = "create"
    try:
        with Rtnl() as nl:
            if not exists(name):
                try:
                    nl.add_bridge(name, mtu)
                    created = True
                except NetlinkError as e:
                    if e.code != errno.EEXIST:  # EEXIST: a concurrent start made it first
                        raise
                if not _is_bridge(name):
                    raise Conflict(f"interface {name} exists and is not a bridge; "
                                   f"choose another bridge name")
            idx = _sys_int(name, "ifindex")
            ignore_router_adverts(name)  # before it is up: no container's RA is ever taken
            if _sys_int(name, "mtu") != mtu:
                step = f"set mtu {mtu} on"
                nl.set_link(idx, mtu=mtu)
            step = f"add address {gw} to"
            try:
                nl.address(True, idx, str(gw.ip), gw.network.prefixlen)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            if not _sys_int(name, "flags", 16) & 1:  # IFF_UP
                step = "bring up"
                nl.set_link(idx, up=True)
    except CtrunError:
        raise
    except Exception as e:
        if created:
            _cleanup(name)
        raise CtrunError(f"cannot {step} bridge {name}: {_why(e)}") from None


def ignore_router_adverts(ifname):
    """accept_ra=0: a router advertisement a container sends on the bridge must not give the
    host an IPv6 address or default route.  Nothing to do when the host has no IPv6."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{_check_name(ifname)}/accept_ra", "w") as f:
            f.write("0\n")
    except FileNotFoundError:
        pass


def remove_bridge(name):
    """Delete the bridge; fine if it is already gone.  Refuses to delete a non-bridge."""
    if not exists(name):
        return
    if not _is_bridge(name):
        raise Conflict(f"interface {name} is not a bridge; ctrun leaves it alone")
    _delete_link(name)


def _delete_link(ifname):
    """Delete an interface of the host namespace, ignoring one that vanished meanwhile."""
    from .rtnl import NetlinkError, Rtnl
    try:
        with Rtnl() as nl:
            # by name: sysfs reads fail (EINVAL) while a dying namespace takes the pair away
            nl.del_link(ifname)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise CtrunError(f"cannot delete interface {ifname}: {_why(e)}") from None


def _cleanup(ifname):
    """Undo a half-done step; the error that made it necessary is the one worth reporting."""
    try:
        _delete_link(ifname)
    except CtrunError:
        pass


# --- inside a container's network namespace ---

def _open_netns(pid):
    """An fd on the network namespace of pid, refused when it is the host's own: creating
    the container end there would put an eth0 on the host."""
    try:
        fd = os.open(f"/proc/{int(pid)}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise NotFound(f"process {pid} does not exist; is the container running?") from None
    ours = os.stat("/proc/self/ns/net")
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
        os.close(fd)
        raise Conflict(f"process {pid} uses the host's network namespace; "
                       f"only a container with its own network can be attached")
    return fd


class _StepFailed(Exception):
    def __init__(self, step, code, why):
        super().__init__(f"{step}: {why}")
        self.step, self.code, self.why = step, code, why


def _in_netns(nsfd, steps):
    """Run steps [(label, fn(nl))] in order in a forked child that joined the namespace
    behind nsfd and opened its own netlink socket (an rtnl.Rtnl) there; raise _StepFailed
    naming the first that failed."""
    from .rtnl import Rtnl, messages
    messages()  # imported before the fork so the child never pays for it
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:  # never returns, and never runs the parent's exit handlers
            os.close(r)
            report = {}
            label = "join the network namespace"
            try:
                nsjoin.enter(nsfd, "network")
                label = "open netlink"
                nl = Rtnl()
                for label, fn in steps:
                    fn(nl)
            except BaseException as e:
                report = {"step": label, "errno": _errno_of(e), "why": _why(e)}
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(w)
    data, answered = b"", False
    try:
        deadline = time.monotonic() + _CHILD_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise _StepFailed(steps[0][0], errno.ETIMEDOUT, f"no answer from the namespace "
                                  f"helper in {_CHILD_TIMEOUT:.0f}s")
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
        answered = True
    finally:
        os.close(r)
        if not answered:  # timed out or interrupted: the helper must not outlive us
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    try:
        report = json.loads(data)
    except ValueError:
        raise _StepFailed(steps[0][0], None,
                          "the namespace helper died without an answer") from None
    if report:
        raise _StepFailed(report["step"], report["errno"], report["why"])


def attach(netns_pid, bridge, host_ifname, ip_cidr, gateway, mac=None, mtu=None, ifname="eth0"):
    """Connect the network namespace of netns_pid to bridge with a veth pair: host_ifname on
    the bridge, ifname inside (mac, mtu, ip_cidr, up, default route via gateway).

    mac defaults to mac_for_ip(ip), mtu to the bridge's.  On failure whatever was created is
    deleted and a one-line CtrunError names the step.
    """
    import ipaddress
    _check_name(host_ifname)
    _check_name(ifname)
    try:
        iface = ipaddress.ip_interface(ip_cidr)
        gw = ipaddress.ip_address(gateway)
    except ValueError as e:
        raise InvalidInput(f"invalid container address: {e}; use e.g. 10.199.0.2/24 "
                           f"and gateway 10.199.0.1") from None
    if iface.version != 4 or gw.version != 4:
        raise InvalidInput(f"container networks are IPv4 only: {ip_cidr} via {gateway}")
    mac = (mac or mac_for_ip(iface.ip)).lower()
    if not _MAC.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise InvalidInput(f"invalid mac address {mac!r}: use a unicast xx:xx:xx:xx:xx:xx")
    if not _is_bridge(bridge):
        raise NotFound(f"bridge {bridge} does not exist; create its network first")
    if mtu is None:
        mtu = _sys_int(bridge, "mtu")
    if exists(host_ifname):
        raise Conflict(f"interface {host_ifname} already exists on the host; "
                       f"remove it with `ip link del {host_ifname}`")
    from .rtnl import NetlinkError, Rtnl
    nsfd = _open_netns(netns_pid)
    created = False
    try:
        with Rtnl() as nl:
            try:
                # one request: the host end joins the bridge and comes up; the container end
                # is born in the container's namespace with its final name, mac and mtu
                nl.add_veth(host_ifname, mtu, _sys_int(bridge, "ifindex"), ifname, nsfd, mac)
                created = True
            except NetlinkError as e:
                taken = e.code == errno.EEXIST  # the host name was free: the peer's is taken
                raise (Conflict if taken else CtrunError)(
                    f"cannot create veth {host_ifname} for process {netns_pid}: {_why(e)}"
                    + (f" ({ifname} exists in the container)" if taken else "")) from None
        ignore_router_adverts(host_ifname)
        try:
            peer = _sys_int(host_ifname, "iflink")  # a veth's iflink: its peer's index
        except OSError:  # ENOENT or EINVAL: the pair is gone or going with the namespace
            raise Conflict(f"process {netns_pid} exited while ctrun was attaching it to "
                           f"bridge {bridge}") from None
        try:
            _in_netns(nsfd, [
                (f"bring {ifname} up", lambda nl: nl.set_link(peer, up=True)),
                (f"add address {iface} to {ifname}",
                 lambda nl: nl.address(True, peer, str(iface.ip), iface.network.prefixlen)),
                (f"add the default route via {gw}",
                 lambda nl: nl.add_default_route(str(gw), peer)),
            ])
        except _StepFailed as e:
            raise CtrunError(f"cannot attach process {netns_pid} to bridge {bridge}: "
                             f"{e.step} failed: {e.why}") from None
    except BaseException:
        if created:
            _cleanup(host_ifname)
        raise
    finally:
        os.close(nsfd)
    return {"veth": host_ifname, "ifname": ifname, "mac": mac, "ip": str(iface)}


def open_tap(ifname):
    """A tap device for a VM, created by opening /dev/net/tun (not persistent): it lives as
    long as the returned fd, which QEMU inherits, so a VM that ends for any reason, even
    SIGKILL, leaves no interface behind.  IFF_VNET_HDR lets virtio-net pass offloads."""
    import fcntl
    import struct
    _check_name(ifname)
    if exists(ifname):
        raise Conflict(f"interface {ifname} already exists on the host; "
                       f"remove it with `ip link del {ifname}`")
    fd = os.open("/dev/net/tun", os.O_RDWR)  # inherited by QEMU: no O_CLOEXEC
    try:
        TUNSETIFF, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x400454CA, 0x0002, 0x1000, 0x4000
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as e:
        os.close(fd)
        raise CtrunError(f"cannot create tap device {ifname}: {e.strerror}") from None
    return fd


def enslave(ifname, bridge, mtu=None):
    """Put a host interface (a VM's tap) on bridge and bring it up."""
    if not _is_bridge(bridge):
        raise NotFound(f"bridge {bridge} does not exist; create its network first")
    from .rtnl import Rtnl, ifindex
    try:
        ignore_router_adverts(ifname)
        with Rtnl() as nl:
            nl.set_link(ifindex(ifname), up=True, master=_sys_int(bridge, "ifindex"),
                        mtu=mtu or _sys_int(bridge, "mtu"))
    except OSError as e:
        raise CtrunError(f"cannot put {ifname} on bridge {bridge}: {_why(e)}") from None


def detach(host_ifname):
    """Delete the host end of a container's veth pair (and so the pair) if it still exists."""
    if exists(host_ifname):
        _delete_link(host_ifname)


def _address_change(netns_pid, ip_cidr, ifname, add):
    import ipaddress
    _check_name(ifname)
    try:
        iface = ipaddress.ip_interface(ip_cidr)
    except ValueError as e:
        raise InvalidInput(f"invalid address: {e}; "
                           f"use ADDRESS/PREFIX, e.g. 10.199.0.3/24") from None
    # already there / already gone counts as done, so a retried `ctrun set` succeeds
    ok = errno.EEXIST if add else errno.EADDRNOTAVAIL

    def change(nl):
        from .rtnl import ifindex
        try:  # ifindex asks the namespace this child joined
            nl.address(add, ifindex(ifname), str(iface.ip), iface.network.prefixlen)
        except Exception as e:
            if _errno_of(e) != ok:
                raise

    nsfd = _open_netns(netns_pid)
    try:
        _in_netns(nsfd, [(f"{'add' if add else 'delete'} address {iface} on {ifname}", change)])
    except _StepFailed as e:
        cls = NotFound if e.code == errno.ENODEV else CtrunError
        raise cls(f"cannot {e.step} in process {netns_pid}: {e.why}") from None
    finally:
        os.close(nsfd)


def add_address(netns_pid, ip_cidr, ifname="eth0"):
    """Add ip_cidr to ifname inside the network namespace of netns_pid (idempotent)."""
    _address_change(netns_pid, ip_cidr, ifname, True)


def del_address(netns_pid, ip_cidr, ifname="eth0"):
    """Remove ip_cidr from ifname inside the network namespace of netns_pid (idempotent)."""
    _address_change(netns_pid, ip_cidr, ifname, False)
