"""--console-socket: the container's pty master, handed to the client that asked for a tty.

The wire form is runc's, which conmon and containerd's shim read: one message on a
stream unix socket whose data is the file's name (they read at most 4096 bytes and
ignore it) and whose only ancillary data is an SCM_RIGHTS record holding the one fd.
"""

import fcntl
import os
import socket
import stat
import struct
import termios

from ctrun.errors import InvalidInput, quote

MAX_NAME = 4096  # the receivers' buffer: a name this long would be cut
_HINT = "give the path of the socket your client listens on"


def check(socket_path):
    """Refuse, before anything is made, a --console-socket that is not a unix socket (no
    connection: the client's listener takes one connection, for the pty)."""
    where = f"--console-socket {quote(socket_path)}"
    try:
        st = os.stat(socket_path)
    except OSError as e:
        raise InvalidInput(f"{where} cannot be opened: {e.strerror}; {_HINT}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidInput(f"{where} is not a unix socket; {_HINT}")


def connect(socket_path):
    """A socket connected to the client's console socket (refused with one line if the
    path is not a unix socket or nobody listens on it).

    The path is opened first and connected through /proc/self/fd: the socket checked is
    the one connected to, and a path longer than sun_path's 108 bytes still works."""
    where = f"--console-socket {quote(socket_path)}"
    try:
        fd = os.open(socket_path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidInput(f"{where} cannot be opened: {e.strerror}; {_HINT}") from None
    sock = None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise InvalidInput(f"{where} is not a unix socket; {_HINT}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.connect(f"/proc/self/fd/{fd}")
    except OSError as e:
        if sock is not None:
            sock.close()
        raise InvalidInput(f"cannot connect to {where}: {e.strerror}; {_HINT}") from None
    finally:
        os.close(fd)
    return sock


def send_fd(sock, fd, name=None):
    """Send `fd` over the connected `sock` in one message: `name` (default: what the fd
    points to, as runc sends its pty's file name) and the fd as SCM_RIGHTS."""
    data = os.fsencode(name if name is not None else os.readlink(f"/proc/self/fd/{fd}"))
    if len(data) >= MAX_NAME:
        raise InvalidInput(f"the name {quote(os.fsdecode(data))} of the console is too long "
                           f"to send (the limit is {MAX_NAME - 1} bytes)")
    socket.send_fds(sock, [data], [fd])


def send_master(socket_path, master_fd):
    """Connect to --console-socket `socket_path` and send the pty master `master_fd`."""
    with connect(socket_path) as sock:
        try:
            send_fd(sock, master_fd)
        except OSError as e:
            raise InvalidInput(f"cannot send the console to --console-socket "
                               f"{quote(socket_path)}: {e.strerror}; {_HINT}") from None


def set_size(fd, rows, cols):
    """Give the terminal on `fd` (either side of the pty) the size process.consoleSize asks."""
    for key, value in (("height", rows), ("width", cols)):
        if not (isinstance(value, int) and not isinstance(value, bool)
                and 0 <= value <= 0xffff):
            raise InvalidInput(f"process.consoleSize.{key} {quote(value)} is not an integer "
                               "from 0 to 65535")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
