"""The host end of the VM agent against a fake agent (a socketpair playing the guest): the
hello's proofs both ways, and frames a broken or hostile guest might send; the guest end's
HMAC-SHA256 (agent.c) against Python's."""

import hashlib
import hmac
import os
import shutil
import socket
import stat
import struct
import subprocess
import threading

import pytest

from ctrun.errors import CtrunError
from ctrun.vm import agent, initramfs

KEY = bytes(range(32))
KEY_FILE = "agent.key"  # in the VM's directory, next to its agent sockets


def frame(t, payload=b""):
    return t.encode() + struct.pack("<I", len(payload)) + payload


def read_frame(s):
    h = b""
    while len(h) < 5:
        h += s.recv(5 - len(h))
    n = struct.unpack("<I", h[1:])[0]
    p = b""
    while len(p) < n:
        p += s.recv(n - len(p))
    return chr(h[0]), p


class FakeAgent:
    """The guest side of a socketpair, run in a thread by `script(sock)`; the host side is an
    Agent built around the other end (no VM, no port lock)."""

    def __init__(self, tmp_path, script, key=KEY):
        (tmp_path / KEY_FILE).write_bytes(key)  # the key the host holds
        host, self.guest = socket.socketpair()
        self.client = agent.Agent.__new__(agent.Agent)
        self.client.vmdir, self.client.lock, self.client.sock = str(tmp_path), None, host
        self.errors = []
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script):
        try:
            script(self.guest)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def finish(self):
        self.client.close()
        self.thread.join(30)
        self.guest.close()
        assert not self.thread.is_alive() and not self.errors, self.errors


def honest_hello(s, key=KEY, agent_proof=None):
    """The agent's half of the hello, as agent.c does it; returns the host's proof."""
    t, hn = read_frame(s)
    assert t == "H"
    an = os.urandom(32)
    s.sendall(frame("o", b"a previous client's output") + frame("c", an + hn))
    t, got = read_frame(s)
    assert t == "A"
    want = hmac.new(key, b"ctrun-host\0" + an + hn, hashlib.sha256).digest()
    if not hmac.compare_digest(got, want):
        s.sendall(frame("n", b"refused"))
        return got
    mine = agent_proof or hmac.new(key, b"ctrun-agent\0" + hn + an, hashlib.sha256).digest()
    s.sendall(frame("h", mine + b"6.1.0-guest"))
    return got


def test_the_hello_proves_the_key_both_ways(tmp_path):
    f = FakeAgent(tmp_path, honest_hello)
    assert f.client._hello(deadline=_later()) == "6.1.0-guest"
    f.finish()


def test_a_client_without_the_key_is_refused(tmp_path):
    f = FakeAgent(tmp_path, honest_hello, key=os.urandom(32))  # the host read another key
    with pytest.raises(agent.AgentRefused, match="refused this client's proof"):
        f.client._hello(deadline=_later())
    f.finish()


def test_an_agent_without_the_key_is_not_believed(tmp_path):
    f = FakeAgent(tmp_path, lambda s: honest_hello(s, agent_proof=b"\0" * 32))
    with pytest.raises(agent.AgentRefused, match="did not prove"):
        f.client._hello(deadline=_later())
    f.finish()


def _later():
    import time
    return time.monotonic() + 30


@pytest.mark.parametrize("header", [
    b"o" + struct.pack("<I", 0xFFFFFFFF),   # a 4 GiB output chunk
    b"c" + struct.pack("<I", 1 << 20),      # a control frame far past its size
])
def test_an_oversized_frame_is_refused_before_it_is_read(tmp_path, header):
    def script(s):
        s.sendall(header + b"x" * 1000)
        s.shutdown(socket.SHUT_WR)
    f = FakeAgent(tmp_path, script)
    with pytest.raises(agent.AgentError) as e:
        f.client.recv(timeout=30)
    msg = str(e.value)
    assert "byte" in msg and "allowed" in msg and "\n" not in msg, msg
    assert isinstance(e.value, CtrunError)
    f.finish()


def test_an_unexpected_frame_ends_an_exec(tmp_path):
    def script(s):
        read_frame(s)  # the exec request
        s.sendall(frame("o", b"hi\n") + frame("c", b"n" * 40))
        s.shutdown(socket.SHUT_WR)
    f = FakeAgent(tmp_path, script)
    r, w = os.pipe()
    try:
        with pytest.raises(agent.AgentError, match="unexpected frame 'c' during exec"):
            f.client.exec(["true"], out=w, err=w, inp=r)
        assert os.read(r, 100) == b"hi\n"
    finally:
        os.close(r)
        os.close(w)
    f.finish()


def test_an_unknown_frame_type_is_refused(tmp_path):
    def script(s):
        s.sendall(b"\xff" + struct.pack("<I", 3) + b"abc")
        s.shutdown(socket.SHUT_WR)
    f = FakeAgent(tmp_path, script)
    with pytest.raises(agent.AgentError, match="unknown frame type 0xff"):
        f.client.recv(timeout=30)
    f.finish()


def test_half_a_frame_then_silence_gives_up(tmp_path, monkeypatch):
    stop = threading.Event()

    def script(s):
        s.sendall(b"o" + struct.pack("<I", 100) + b"only part")
        stop.wait(20)  # silent, not gone (for a while: a client without a deadline fails)
        s.shutdown(socket.SHUT_WR)
    monkeypatch.setattr(agent, "FRAME_TIMEOUT", 0.5, raising=False)
    f = FakeAgent(tmp_path, script)
    with pytest.raises(agent.AgentError, match="did not answer in time"):
        f.client.recv()
    stop.set()
    f.finish()


def test_bad_stats_and_exit_codes_are_errors(tmp_path):
    def script(s):
        read_frame(s)
        s.sendall(frame("s", b"mem_total_kb lots\n"))
    f = FakeAgent(tmp_path, script)
    with pytest.raises(agent.AgentError, match="unreadable stats"):
        f.client.stats()
    f.finish()


@pytest.mark.parametrize("reply, took", [(b"poweroff", True), (b"", False)])
def test_stop_asks_for_a_power_off_and_hears_whether_systemd_took_it(tmp_path, reply, took):
    """The stop's request carries the image's signal and the power-off wish; the agent
    answers whether PID 1 (systemd) was asked for its power-off instead."""
    def script(s):
        assert read_frame(s) == ("D", b"15 poweroff")
        s.sendall(frame("d", reply))
    f = FakeAgent(tmp_path, script)
    assert f.client.signal_init(15, poweroff=True) is took
    f.finish()


def test_the_key_is_private_and_in_the_initramfs_only(tmp_path, monkeypatch):
    key = agent.new_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    assert (tmp_path / KEY_FILE).read_bytes() == key and len(key) == 32
    assert agent.new_key(tmp_path) != key  # a new one per start
    base = tmp_path / "base.cpio"
    base.write_bytes(b"")
    monkeypatch.setattr(initramfs, "base", lambda k: base)
    dest = tmp_path / "initrd.img"
    initramfs.for_vm(None, dest, {"name": "v", "argv": ["/sbin/init"]}, key=key)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    listing = subprocess.run(["cpio", "-itv"], stdin=open(dest, "rb"), capture_output=True,
                             text=True, check=True).stdout
    (line,) = [ln for ln in listing.splitlines() if ln.endswith("ctrun/key")]
    assert line.startswith("-rw-------"), line
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], stdin=open(dest, "rb"), cwd=out, check=True)
    assert (out / "ctrun/key").read_bytes() == key
    assert key.hex() not in (out / "ctrun/config").read_text()


def test_qemu_runs_sandboxed():
    from ctrun.vm import qemu
    a = qemu.argv("tcg", "/k", "/i", 256, 1)
    opts = a[a.index("-sandbox") + 1].split(",")
    assert opts[0] == "on"
    for o in ("obsolete", "elevateprivileges", "spawn", "resourcecontrol"):
        assert f"{o}=deny" in opts


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_the_guest_hmac_is_hmac_sha256(tmp_path):
    exe = tmp_path / "selftest"
    subprocess.run(["gcc", "-O2", "-DAGENT_SELFTEST", "-o", str(exe), str(initramfs.AGENT_SRC)],
                   check=True, capture_output=True)
    # message lengths around SHA-256's 64-byte block and its 56-byte padding boundary
    for n in (0, 1, 55, 56, 57, 63, 64, 65, 96, 119, 120, 1000):
        key, msg = os.urandom(32), os.urandom(n)
        got = subprocess.run([str(exe), key.hex(), msg.hex()], capture_output=True,
                             text=True, check=True, timeout=20).stdout.strip()
        assert got == hmac.new(key, msg, hashlib.sha256).hexdigest(), n
