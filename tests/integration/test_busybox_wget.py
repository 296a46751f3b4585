"""The built-in image's HTTP client against a server on the host, over a bridged network.

Debian's static busybox is built without wget's timeout support, yet parses -T into a null
pointer: `wget -T 5 URL` died of SIGSEGV.  The image's /usr/bin/wget handles -T itself."""

import http.server
import os
import socket
import threading

import pytest

from conftest import bridge_network

SUBNET = f"10.216.{200 + os.getpid() % 50}.0/24"
BODY = f"hello-from-the-host-{os.getpid()}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = BODY.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def net(cli):
    with bridge_network(cli, f"tw{os.getpid() % 10000}", SUBNET) as name:
        yield name, cli.json("network", "inspect", name)["gateway"]


@pytest.fixture
def server():
    """An HTTP server on the host (every address, a free port), and a socket on another
    port that accepts connections and never answers."""
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    mute = socket.create_server(("0.0.0.0", 0))
    try:
        yield srv.server_address[1], mute.getsockname()[1]
    finally:
        srv.shutdown()
        srv.server_close()
        mute.close()
        t.join(5)


def test_wget_with_a_timeout_fetches_from_the_gateway_by_address_and_name(cli, net, server):
    name, gw = net
    port, _ = server
    url = f"http://{gw}:{port}/"
    r = cli("run", "--rm", "--net", name, "busybox", "--", "wget", "-T", "10", "-O-", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == BODY
    # by name (the container's /etc/hosts), options clustered, and from a login shell,
    # where busybox sh would otherwise run its own wget applet
    r = cli("run", "--rm", "--net", name, "busybox", "--", "sh", "-lc",
            f"echo '{gw} host.test' >> /etc/hosts && wget -qT10 -O- http://host.test:{port}/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == BODY
    # and typed at `ctrun enter`'s shell
    cli("run", "-d", "--name", "box", "--net", name, "busybox", check=True)
    r = cli("enter", "box", input=f"wget -qT10 -O- {url}\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(BODY)


def test_wget_timeout_ends_a_silent_server_with_one_line(cli, net, server):
    name, gw = net
    _, mute = server
    r = cli("run", "--rm", "--net", name, "busybox", "--", "wget", "-q", "-T", "1", "-O-",
            f"http://{gw}:{mute}/")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == ["wget: download timed out after 1s"]
