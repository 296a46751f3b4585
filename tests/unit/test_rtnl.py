"""rtnl loads pyroute2's message classes without the package's __init__ (and its asyncio
core), and leaves pyroute2 whole for a program that uses its own API afterwards."""

import subprocess
import sys

CHECK = """
import sys
from ctrun.network import rtnl
ifinfmsg, ifaddrmsg, rtmsg = rtnl.messages()
light = not any(m in sys.modules for m in ("asyncio", "pyroute2.ndb", "pyroute2.iproute"))
from pyroute2 import IPRoute, NetlinkError   # the package's real __init__ runs now
import pyroute2.iproute.linux
print(light, IPRoute is pyroute2.iproute.linux.IPRoute,
      pyroute2.netlink.rtnl.ifinfmsg.ifinfmsg is ifinfmsg, hasattr(pyroute2, "nosuch"))
"""


def test_messages_load_alone_and_pyroute2_stays_usable():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True", "False"]


def test_a_message_encodes_as_the_kernel_expects():
    from ctrun.network import rtnl
    _, ifaddrmsg, _ = rtnl.messages()
    m = ifaddrmsg()
    m["family"], m["prefixlen"], m["index"] = 2, 24, 7
    m["attrs"] = [("IFA_LOCAL", "10.1.2.3")]
    m["header"]["type"], m["header"]["flags"] = rtnl.RTM_NEWADDR, 5
    m.encode()
    data = bytes(m.data)
    # nlmsghdr (16) + ifaddrmsg (8) + one 8-byte attribute
    assert len(data) == 32 and int.from_bytes(data[:4], "little") == 32
    assert data[16:18] == bytes([2, 24]) and int.from_bytes(data[20:24], "little") == 7
    assert data[28:32] == bytes([10, 1, 2, 3])
