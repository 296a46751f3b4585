"""ctrun.oci.console: the pty master sent over a real unix socket, as a client receives it."""

import array
import contextlib
import os
import socket

import pytest

from ctrun.errors import InvalidInput
from ctrun.oci import console


@contextlib.contextmanager
def listening(path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(str(path))
        srv.listen(1)
        yield srv
    finally:
        srv.close()


@pytest.fixture
def pty():
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def _close_all(fds):
    for fd in fds:
        os.close(fd)


def test_the_master_arrives_and_drives_the_slave(tmp_path, pty):
    master, slave = pty
    path = tmp_path / "console.sock"
    with listening(path) as srv:
        console.send_master(str(path), master)
        conn, _ = srv.accept()
        with conn:
            msg, fds, flags, _ = socket.recv_fds(conn, console.MAX_NAME, 1)
    try:
        assert msg == os.readlink(f"/proc/self/fd/{master}").encode()  # the name, as runc
        assert len(fds) == 1 and not flags & socket.MSG_CTRUNC
        got = fds[0]
        os.write(got, b"typed\n")
        assert os.read(slave, 100) == b"typed\n"
        os.write(slave, b"shown")
        out = b""
        while not out.endswith(b"shown"):
            out += os.read(got, 100)  # after the echo of "typed"
    finally:
        _close_all(fds)


def test_one_message_holding_exactly_one_fd(tmp_path, pty):
    """What runc's receivers insist on: the ancillary data of one fd and no more."""
    path = tmp_path / "console.sock"
    with listening(path) as srv:
        console.send_master(str(path), pty[0])
        conn, _ = srv.accept()
        with conn:
            msg, anc, flags, _ = conn.recvmsg(console.MAX_NAME, socket.CMSG_SPACE(4 * 4))
            rest = conn.recv(10)  # the sender closed after its one message
    fds = array.array("i")
    for level, kind, data in anc:
        fds.frombytes(data)
    try:
        assert [(level, kind) for level, kind, _ in anc] == [(socket.SOL_SOCKET,
                                                               socket.SCM_RIGHTS)]
        assert len(fds) == 1 and msg and not flags & socket.MSG_CTRUNC
        assert rest == b""
    finally:
        _close_all(fds)


def test_a_socket_path_longer_than_sun_path(tmp_path, pty):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "console.sock"
    assert len(str(path)) > 108  # too long for sun_path: connect(path) itself would fail
    dirfd = os.open(deep, os.O_PATH)
    try:
        with listening(f"/proc/self/fd/{dirfd}/console.sock") as srv:  # a name bind() takes
            console.send_master(str(path), pty[0])
            conn, _ = srv.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, console.MAX_NAME, 1)
    finally:
        os.close(dirfd)
    _close_all(fds)
    assert len(fds) == 1


def test_refusals(tmp_path, pty):
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(InvalidInput) as e:
        console.send_master(str(plain), pty[0])
    assert str(e.value) == (f"--console-socket '{plain}' is not a unix socket; give the path of "
                            "the socket your client listens on")

    missing = tmp_path / "missing"
    with pytest.raises(InvalidInput) as e:
        console.send_master(str(missing), pty[0])
    assert str(e.value) == (f"--console-socket '{missing}' cannot be opened: No such file or "
                            "directory; give the path of the socket your client listens on")

    idle = tmp_path / "idle.sock"  # bound, nobody listening
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(idle))
        with pytest.raises(InvalidInput) as e:
            console.send_master(str(idle), pty[0])
    assert str(e.value) == (f"cannot connect to --console-socket '{idle}': Connection refused; "
                            "give the path of the socket your client listens on")


def test_set_size_reaches_the_terminal(pty):
    master, slave = pty
    console.set_size(master, 40, 132)
    assert os.get_terminal_size(slave) == os.terminal_size((132, 40))
    console.set_size(slave, 25, 80)
    assert os.get_terminal_size(master) == os.terminal_size((80, 25))
    with pytest.raises(InvalidInput, match=r"^process.consoleSize.width '-1' is not an integer "
                                           r"from 0 to 65535$"):
        console.set_size(master, 10, -1)
    with pytest.raises(InvalidInput, match=r"^process.consoleSize.height '70000' is not"):
        console.set_size(master, 70000, 10)
    assert os.get_terminal_size(slave) == os.terminal_size((80, 25))
