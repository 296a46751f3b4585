"""The thin client (ctrun.client): which calls go to the store's warm server, which run
in-process, and that it stays thin."""

import os
import subprocess
import sys

import pytest

from conftest import REPO
from ctrun import client, state

pytestmark = pytest.mark.root  # the client sends a non-root caller to the CLI's refusal


def test_the_default_store_is_the_clis():
    assert client.DEFAULT_ROOT == state.DEFAULT_ROOT


def test_which_calls_the_server_takes(tmp_path, monkeypatch):
    made, unmade = tmp_path / "made", tmp_path / "unmade"
    (made / "run").mkdir(parents=True)
    unmade.mkdir()
    monkeypatch.delenv("CTRUN_SERVER", raising=False)
    monkeypatch.setenv("CTRUN_ROOT", str(made))
    m = str(made)
    served = {
        ("--root", m, "list"): m,
        (f"--root={m}", "list"): m,
        ("--ro", m, "list"): m,                     # argparse's unambiguous prefix
        ("list",): m,                               # $CTRUN_ROOT
        ("--root", "unmade", "list"): None,         # relative, and no store there yet
        ("--root", str(unmade), "list"): None,      # a server would have to make it
        ("--root", str(tmp_path / "none"), "list"): None,
        ("--debug", "--root", m, "list"): None,     # tracebacks: in-process
        ("--root", m, "run", "-h"): None,
        ("--root", m, "--help"): None,
        ("--root", m, "--version"): None,           # what the parser refuses
        ("--root", m): None,                        # no verb
        ("--root",): None,
        ("--root", m, "lab", "--quick"): None,      # long, and named after its pid
        ("--root", m, "exec", "c", "--", "sh", "-h"): m,  # the command's own -h
        ("--root", m, "run", "--rm", "busybox", "--", "--help"): m,
    }
    monkeypatch.chdir(tmp_path)
    for argv, want in served.items():
        assert client.store_root(list(argv)) == want, argv
    monkeypatch.setenv("CTRUN_SERVER", "off")
    assert client.store_root(["--root", m, "list"]) is None


def test_the_client_imports_next_to_nothing():
    """Its start is the interpreter's: no ctrun module but itself and serversock (the
    socket's name, os alone), no json, argparse or socket (with enum, re and the rest)."""
    code = ("import sys; before = set(sys.modules); import ctrun.client; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-sS", "-c", code], check=True, text=True,
                         capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         cwd="/").stdout.split()
    allowed = {"ctrun", "ctrun.client", "ctrun.serversock", "_socket", "os", "os.path", "posixpath",
               "genericpath", "stat", "_stat", "_collections_abc"}
    assert set(out) <= allowed, set(out) - allowed


def test_a_call_the_server_answered_before_the_client_was_done_sending_runs_once(
        tmp_path, monkeypatch):
    """A loaded host can deschedule the client between its send and what follows while the
    server reads the request, runs it, answers and closes.  The client must then take the
    answer: a send on the closed connection (even an empty one) fails with EPIPE, and
    treating that as "not taken" retried, running the command twice (seen as a served
    `inspect` printing its JSON twice)."""
    import _socket
    import socket
    import threading
    run = tmp_path / "run"
    run.mkdir()
    path = str(run / client.SOCK)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    calls, closed = [], threading.Event()

    def server():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            data = b""
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "little"):
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
            calls.append(data)
            conn.sendall(b"S" + b"x7\n")   # it ran, and it is over
            conn.close()
            closed.set()
    t = threading.Thread(target=server, daemon=True)
    t.start()

    class Slow(_socket.socket):   # descheduled after its first send, until the server closed
        def sendmsg(self, *a):
            n = super().sendmsg(*a)
            closed.wait(5)
            return n
    monkeypatch.setattr(client._socket, "socket", Slow)
    try:
        assert client._call(str(tmp_path), ["list"]) == 7
    finally:
        listener.close()
    assert len(calls) == 1
