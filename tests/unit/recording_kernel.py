"""A recording double of ctrun.kernel.linux: every syscall of container set-up is written
to one log instead of made, so unit tests read the order of mounts, pivot_root, privilege
steps and exec without root, and nothing reaches the kernel.

Descriptors in the arguments (a /proc/self/fd/N path, or the fd of fchdir, setns,
move_mount...) are logged as the paths behind them.  fork returns 0, so one process walks
the child's whole path; execve and exit end it by raising Exited, as the real calls never
return.
"""

import inspect
import os
import re

import pytest

from ctrun.kernel import Kernel, linux
from ctrun.runtime import rootfs

# the arguments that are descriptors, by position
_FD_ARGS = {"fchdir": (0,), "set_readonly_tree": (0,), "move_mount_fd": (0, 1),
            "setns": (0,), "idmap_tree": (0, 1), "cgroup_attach": (0,)}


class Exited(BaseException):
    """The process image ended here (execve or exit); .call is the call that ended it."""

    def __init__(self, call):
        super().__init__(call)
        self.call = call


class RecordingKernel:
    def __init__(self):
        self.calls = []  # [(name, args)]

    def __enter__(self):
        for name in Kernel.CALLS:
            setattr(linux, name, self._recorder(name))
        return self

    def __exit__(self, *exc):
        for name in Kernel.CALLS:
            linux.__dict__.pop(name, None)  # the class's real call shows again

    def stub(self, monkeypatch, owner, attr, result=None):
        """Log a step above the syscalls (rootfs.prepare, loopback) in the same log."""
        def step(*args, **kwargs):
            self.calls.append((attr, args))
            return result
        monkeypatch.setattr(owner, attr, step)

    def names(self):
        """The names in order, runs of one name folded into one (capbset_drop x 40)."""
        out = []
        for name, _ in self.calls:
            if not out or out[-1] != name:
                out.append(name)
        return out

    def of(self, name):
        return [args for n, args in self.calls if n == name]

    def _recorder(self, name):
        fd_args = _FD_ARGS.get(name, ())
        try:  # logged with their defaults: mount(None, "/") shows all five
            sig = inspect.signature(getattr(Kernel, name))
        except ValueError:
            sig = None

        def call(*args):
            if sig is not None:
                bound = sig.bind(*args)
                bound.apply_defaults()
                args = bound.args
            self.calls.append((name, tuple(_shown(a, i in fd_args) for i, a in enumerate(args))))
            if name in ("execve", "exit"):
                raise Exited((name, args))
            if name == "fork":
                return 0
            if name == "getcwd":
                return "/"
            if name in ("open_tree_clone", "fsmount"):
                return os.open("/", os.O_PATH | os.O_CLOEXEC)
            return None
        return call


def _shown(arg, is_fd):
    if is_fd and isinstance(arg, int):
        return os.readlink(f"/proc/self/fd/{arg}")
    if isinstance(arg, str):  # in a target, or in overlayfs's lowerdir=
        return re.sub(r"/proc/self/fd/(\d+)", lambda m: os.readlink(m.group(0)), arg)
    return arg


# fixtures of the tests that follow the runtime through the double
@pytest.fixture
def kernel():
    with RecordingKernel() as k:
        yield k


@pytest.fixture
def rootfs_state():
    """rootfs keeps fds between its steps in module lists: none may outlive a test."""
    yield
    for fd in rootfs._NULL + rootfs._ROOT_TREE:
        os.close(fd)
    del rootfs._NULL[:], rootfs._ROOT_TREE[:], rootfs._READONLY_LATER[:]
