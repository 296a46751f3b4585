"""Pseudo-terminals: created inside the container's devpts, relayed by the host side."""

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
import tty

TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
TIOCSCTTY = 0x540E
TIOCGPTPEER = 0x5441


def open_pty_inside():
    """Open a pty pair from /dev/ptmx of the (already entered) container; (master, slave)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
    return master, slave


def become_session_leader_on(slave):
    """Make `slave` our controlling terminal and stdio."""
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def send_fd(sock, fd):
    socket.send_fds(sock, [b"M"], [fd])


def recv_fd(sock):
    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    return fds[0]


def copy_winsize(src_fd, dst_fd):
    try:
        ws = fcntl.ioctl(src_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst_fd, termios.TIOCSWINSZ, ws)
    except OSError:
        pass


@contextlib.contextmanager
def user_terminal(fd):
    """The user's terminal on fd in raw mode (when it is a terminal), restored on exit.
    Yields the read end of a pipe that becomes readable at each SIGWINCH (a resize)."""
    old = termios.tcgetattr(fd) if os.isatty(fd) else None
    rd, wr = os.pipe()
    os.set_blocking(wr, False)
    prev = signal.signal(signal.SIGWINCH, lambda *_: os.write(wr, b"w"))
    if old is not None:
        tty.setraw(fd)
    try:
        yield rd
    finally:
        signal.signal(signal.SIGWINCH, prev)
        if old is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
        os.close(rd)
        os.close(wr)


def open_peer(master):
    """The slave of `master`, opened through the master itself (TIOCGPTPEER: no path
    into the container's devpts is followed).  Held by the side that relays an init's
    console: an init closes its stdio before it opens /dev/console, and with no slave
    open for that moment the master reads EIO, which ends the relay."""
    return fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)


def relay(master, child_done, forward_stdin=True):
    """Copy the user's terminal <-> master until the child exits; resize follows SIGWINCH.

    child_done() is polled; it returns the exit status once the process has ended.
    """
    stdin = sys.stdin.fileno()
    is_tty = os.isatty(stdin)
    if is_tty:
        copy_winsize(stdin, master)
    with user_terminal(stdin) as rd:
        return _relay(master, child_done, forward_stdin, stdin, is_tty, rd)


def _relay(master, child_done, forward_stdin, stdin, is_tty, rd):
    stdout = sys.stdout.fileno()
    watch = [master, rd] + ([stdin] if forward_stdin else [])
    while True:
        try:
            ready, _, _ = select.select(watch, [], [], 0.1)
        except InterruptedError:
            continue
        if rd in ready:
            os.read(rd, 64)
            if is_tty:
                copy_winsize(stdin, master)
        if stdin in ready:
            data = os.read(stdin, 65536)
            if data:
                os.write(master, data)
            else:  # EOF on our stdin: send the terminal's EOF character
                watch.remove(stdin)
                os.write(master, b"\x04")
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave fd closed
                data = b""
            if not data:
                watch.remove(master)
            else:
                os.write(stdout, data)
        status = child_done()
        if status is not None and master not in watch:
            return status
        if status is not None:
            # drain what the process wrote before it exited
            while select.select([master], [], [], 0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                os.write(stdout, data)
            return status
