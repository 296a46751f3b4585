"""The compiled client (ctrun/client.c) against the Python client it stands in front of:
for every command line it serves exactly the calls ctrun.client.store_root would send to a
server, to the same socket, with the same request; everything else goes to the Python
client untouched.  A recording server socket stands for the real one here (the protocol's
policy); the real server is driven through this binary by the rest of the suite (conftest's
CTRUN)."""

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from ctrun import client
from ctrun.serversock import passed_fds

INSTALLED_PKG = "/nonexistent/installed/ctrun"


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """(the compiled client, the file its fallback writes its argv to)"""
    d = tmp_path_factory.mktemp("cclient")
    record = d / "fallback.argv"
    fb = d / "fallback"
    fb.write_text(f"#!/bin/sh\nfor a; do printf '%s\\n' \"$a\"; done > {record}\nexit 99\n")
    fb.chmod(0o755)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f'-DCTRUN_FALLBACK="{fb}"',
                    f'-DCTRUN_PACKAGE="{INSTALLED_PKG}"', "-o", str(d / "ctrun"),
                    str(REPO / "ctrun" / "client.c")], check=True)
    return str(d / "ctrun"), record


class FakeServer:
    """Listens on ROOT/run/server.sock, takes one request, records it, answers `reply`
    (b"S" then b"x7\\n" by default), and records what the client sends afterwards."""

    def __init__(self, root, reply=(b"S", b"x7\n"), hold=0.0):
        (root / "run").mkdir(parents=True, exist_ok=True)
        self.path = root / "run" / "server.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(4)
        self.reply, self.hold = reply, hold
        self.payload = self.fds = None
        self.after = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(10)
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        with c:
            buf, fds = b"", []
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "little"):
                data, anc, _, _ = c.recvmsg(1 << 16, socket.CMSG_SPACE(16))
                fds += passed_fds(anc)
                if not data:
                    return
                buf += data
            self.payload = buf[4:]
            self.fds = len(fds)
            null = os.stat("/dev/null").st_rdev
            self.kinds = []   # what each fd is: /dev/null, a socket, or something else
            for fd in fds:
                st = os.fstat(fd)
                self.kinds.append("null" if stat.S_ISCHR(st.st_mode) and st.st_rdev == null
                                  else "socket" if stat.S_ISSOCK(st.st_mode) else "other")
                os.close(fd)
            c.sendall(self.reply[0])
            if self.hold:   # until the client relays a SIGTERM
                c.settimeout(self.hold)
                while signal.SIGTERM not in self.after:
                    try:
                        data = c.recv(16)
                    except OSError:
                        break
                    if not data:
                        break
                    self.after += data
            for part in self.reply[1:]:
                c.sendall(part)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)   # wakes an accept no client came to
        self.sock.close()
        self.path.unlink()
        self.thread.join(5)


def _run(binary, argv, env=None, cwd=None, **kw):
    exe, record = binary
    record.unlink(missing_ok=True)
    r = subprocess.run([exe, *argv], env=env or dict(os.environ), cwd=cwd,
                       capture_output=True, timeout=30, **kw)
    fell_back = record.read_text().splitlines() if record.exists() else None
    return r, fell_back


def _fields(payload):
    f = payload.split(b"\0")
    argc = int(f[3])
    return {"magic": f[0], "pkg": f[1].decode(), "umask": int(f[2], 8),
            "argv": [a.decode() for a in f[4:4 + argc]], "env": set(f[4 + argc:])}


CASES = [  # (argv with {root}, served?)
    (["list"], True),
    (["--root", "{root}", "list"], True),
    (["--root={root}", "inspect", "x"], True),
    (["--ro", "{root}", "run", "--rm", "busybox", "--", "sh", "-c", "--help"], True),
    (["--root", "{root}/a/.././/", "list"], True),
    (["--root", "/{root}", "list"], True),         # "//...": normpath keeps two slashes
    (["--root", "{rel}", "list"], True),
    (["--root=", "list"], True),                  # empty: $CTRUN_ROOT, as in Python
    (["--help"], False),
    (["list", "-h"], False),
    (["list", "--he"], False),
    (["--debug", "list"], False),
    (["--rooty", "{root}", "list"], False),
    (["--root"], False),
    (["--", "list"], False),
    ([], False),
    (["lab", "run"], False),
    (["--root", "{root}/nostore", "list"], False),  # a store not made yet
    (["--root", "/" + "x" * 100, "list"], False),   # too long a socket path
]


@pytest.mark.parametrize("argv,served", CASES)
def test_it_serves_what_the_python_client_would_serve(binary, tmp_path, monkeypatch,
                                                      argv, served):
    root = tmp_path / "store"
    argv = [a.format(root=root, rel="store") for a in argv]
    env = dict(os.environ, CTRUN_ROOT=str(root), PYTHONPATH=str(REPO))
    monkeypatch.setenv("CTRUN_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    srv = FakeServer(root)
    try:
        assert (client.store_root(argv) is not None) == served   # the Python client agrees
        r, fell_back = _run(binary, argv, env=env, cwd=tmp_path)
    finally:
        srv.close()
    if not served:
        assert (r.returncode, fell_back, srv.payload) == (99, argv, None), r.stderr
        return
    assert (r.returncode, fell_back) == (7, None), r.stderr
    assert os.path.samefile(client.store_root(argv), root)
    got = _fields(srv.payload)
    env_bytes = {os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()}
    assert got == {"magic": client.MAGIC, "pkg": client.package_dir(), "umask": 0o022,
                   "argv": argv, "env": env_bytes}
    assert srv.fds == 4   # stdin, stdout, stderr, the working directory


def test_it_falls_back_when_off_or_no_server_listens(binary, tmp_path):
    root = tmp_path / "store"
    (root / "run").mkdir(parents=True)
    env = dict(os.environ, CTRUN_ROOT=str(root))
    assert _run(binary, ["list"], env=env)[1] == ["list"]           # no socket
    srv = FakeServer(root)
    try:
        r, fell_back = _run(binary, ["list"], env=dict(env, CTRUN_SERVER="off"))
    finally:
        srv.close()
    assert (r.returncode, fell_back, srv.payload) == (99, ["list"], None)


@pytest.mark.parametrize("pythonpath,pkg", [
    ("{repo}", "{repo}/ctrun"),                # a checkout's ctrun comes first
    ("{tmp}/empty:{repo}", "{repo}/ctrun"),
    ("{tmp}/empty", INSTALLED_PKG),            # nothing there: the installed one
    ("{tmp}/empty::{repo}", None),             # the working directory: Python decides
    ("empty", None),
    ("{tmp}/nsp", None),                       # a namespace package, or something odd
    ("{tmp}/mod", None),                       # a module named ctrun (an extension here)
    ("{tmp}/lib.zip", None),                   # a zip: Python looks inside
    ("{tmp}/nosuch:{repo}", "{repo}/ctrun"),   # an entry not there is skipped
])
def test_it_names_the_package_python_would_import(binary, tmp_path, pythonpath, pkg):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nsp" / "ctrun").mkdir(parents=True)
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "ctrun.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path / "lib.zip").write_bytes(b"PK")
    root = tmp_path / "store"
    fmt = {"repo": REPO, "tmp": tmp_path}
    srv = FakeServer(root)
    try:
        r, fell_back = _run(binary, ["list"], env=dict(
            os.environ, CTRUN_ROOT=str(root), PYTHONPATH=pythonpath.format(**fmt)))
    finally:
        srv.close()
    if pkg is None:
        assert (fell_back, srv.payload) == (["list"], None)
    else:
        assert r.returncode == 7, r.stderr
        assert _fields(srv.payload)["pkg"] == os.path.realpath(pkg.format(**fmt))


@pytest.mark.parametrize("reply", [(b"m",), (b"",), (b"e",)])
def test_a_request_the_server_did_not_take_goes_to_the_python_client(binary, tmp_path, reply):
    """b"m": a server of another ctrun; b"": it left (idle) before taking it; anything
    else: refused.  Nothing ran, so the Python client decides (and retries)."""
    root = tmp_path / "store"
    srv = FakeServer(root, reply=reply)
    try:
        r, fell_back = _run(binary, ["list"], env=dict(os.environ, CTRUN_ROOT=str(root)))
    finally:
        srv.close()
    assert srv.payload is not None and (r.returncode, fell_back) == (99, ["list"])


def test_the_workers_end_becomes_the_clients(binary, tmp_path):
    root = tmp_path / "store"
    env = dict(os.environ, CTRUN_ROOT=str(root))
    srv = FakeServer(root, reply=(b"S", b"k", b"15\n"))    # in pieces, as a stream may
    try:
        r, fell_back = _run(binary, ["list"], env=env)
    finally:
        srv.close()
    assert (r.returncode, fell_back) == (-signal.SIGTERM, None)
    srv = FakeServer(root, reply=(b"S",))                   # the server died meanwhile
    try:
        r, fell_back = _run(binary, ["list"], env=env)
    finally:
        srv.close()
    assert (r.returncode, fell_back) == (1, None)
    assert r.stderr.decode() == (f"ctrun: error: the ctrun server of {root} stopped during "
                                 f"this command; see {root}/run/server.log\n")


@pytest.mark.parametrize("reply", [b"k0\n", b"k99\n", b"x+5\n", b"x 5\n", b"x\n"])
def test_a_reply_out_of_the_protocol_is_a_lost_server(binary, tmp_path, reply):
    root = tmp_path / "store"
    srv = FakeServer(root, reply=(b"S", reply))
    try:
        r, fell_back = _run(binary, ["list"], env=dict(os.environ, CTRUN_ROOT=str(root)))
    finally:
        srv.close()
    assert (r.returncode, fell_back) == (1, None)
    assert b"stopped during this command" in r.stderr


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_a_closed_stdio_fd_goes_as_dev_null(binary, tmp_path, closed):
    """Not as the connection, which would take the lowest free fd: a command would read
    its own request, or write into the signal channel."""
    root = tmp_path / "store"
    srv = FakeServer(root)
    exe, _ = binary
    try:
        r = subprocess.run(["sh", "-c", f'exec "$0" list {closed}>&-', exe], timeout=30,
                           env=dict(os.environ, CTRUN_ROOT=str(root)),
                           stdin=subprocess.DEVNULL, capture_output=True)
    finally:
        srv.close()
    assert r.returncode == 7, r.stderr
    assert srv.kinds[closed] == "null" and "socket" not in srv.kinds, srv.kinds


def test_a_name_set_twice_in_the_environment_goes_once_as_python_reads_it(binary, tmp_path):
    """execve takes a list: a name may come twice; Python's os.environ and getenv take the
    first, and so must the request (the server rebuilds the environment from it)."""
    import ctypes
    root = tmp_path / "store"
    exe, _ = binary
    srv = FakeServer(root)
    try:
        env = [f"CTRUN_ROOT={root}", "CTRUN_ROOT=/elsewhere", "X=1", "X=2",
               f"PATH={os.environ['PATH']}"]
        pid = os.fork()
        if pid == 0:
            try:
                libc = ctypes.CDLL(None)
                arr = lambda xs: (ctypes.c_char_p * (len(xs) + 1))(   # noqa: E731
                    *[x.encode() for x in xs], None)
                libc.execve(exe.encode(), arr([exe, "list"]), arr(env))
            finally:
                os._exit(127)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    finally:
        srv.close()
    got = _fields(srv.payload)["env"]
    assert got == {f"CTRUN_ROOT={root}".encode(), b"X=1", f"PATH={os.environ['PATH']}".encode()}


def _listening_as(path, uid):
    """A socket at `path` whose listener (its SO_PEERCRED) is `uid`: (pid, a pipe that
    gets how many bytes a client sent it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            s.listen(4)
            os.write(w, b"L")
            s.settimeout(5)
            got = 0
            try:
                c, _ = s.accept()
                c.settimeout(1)
                got = len(c.recv(1 << 16))
            except OSError:
                pass
            os.write(w, b"%d" % got)
        finally:
            os._exit(0)
    os.close(w)
    s.close()
    assert os.read(r, 1) == b"L"
    return pid, r


@pytest.mark.parametrize("client_", ["compiled", "python"])
def test_a_socket_bound_by_another_user_gets_nothing(binary, tmp_path, client_):
    """A store in a directory another user can write: whoever listens on its socket, if
    not root, gets no request, fds or environment from either client."""
    root = tmp_path / "store"
    (root / "run").mkdir(parents=True)
    pid, r = _listening_as(root / "run" / "server.sock", 65534)
    try:
        env = dict(os.environ, CTRUN_ROOT=str(root), PYTHONPATH=str(REPO))
        if client_ == "compiled":
            res, fell_back = _run(binary, ["list"], env=env)
            assert (res.returncode, fell_back) == (99, ["list"])
        else:
            env.pop("CTRUN_SERVER", None)   # it runs the call in-process instead
            res = subprocess.run([sys.executable, "-m", "ctrun", "list"], env=env,
                                 capture_output=True, timeout=60, cwd=tmp_path)
            assert res.returncode == 0, res.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    assert os.read(r, 16) in (b"", b"0")
    os.close(r)


def test_the_python_client_dies_by_a_kill_it_cannot_catch(tmp_path):
    """b"k9": the worker was SIGKILLed (the OOM killer): the client ends the same way
    (SIGKILL's action cannot be set, which must not stop it)."""
    root = tmp_path / "store"
    srv = FakeServer(root, reply=(b"S", b"k9\n"))
    try:
        r = subprocess.run([sys.executable, "-m", "ctrun", "list"], timeout=60,
                           env=dict(os.environ, CTRUN_ROOT=str(root), PYTHONPATH=str(REPO)),
                           capture_output=True)
    finally:
        srv.close()
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_signals_are_relayed_once_taken(binary, tmp_path):
    root = tmp_path / "store"
    srv = FakeServer(root, reply=(b"S", b"x0\n"), hold=10)
    exe, _ = binary
    p = subprocess.Popen([exe, "list"], env=dict(os.environ, CTRUN_ROOT=str(root)))
    try:
        deadline = time.monotonic() + 10
        while srv.payload is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # blocked until the server took the call, then relayed by the handlers
        p.send_signal(signal.SIGWINCH)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
    finally:
        if p.poll() is None:
            p.kill()
        srv.close()
    assert srv.after == bytes((signal.SIGWINCH, signal.SIGTERM))


def test_the_source_lists_the_python_clients_relayed_signals_and_local_verbs():
    src = (REPO / "ctrun" / "client.c").read_text()
    assert "{SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH}" in src
    assert tuple(signal.Signals(s).name for s in client.RELAYED) == \
        ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH")
    assert client._LOCAL_VERBS == ("lab",) and '"lab"' in src
    assert sys.byteorder == "little"   # the length prefix is little-endian in both
