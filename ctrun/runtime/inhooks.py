"""OCI hooks the container's init runs itself, in the container's namespaces: createContainer
(after the mounts, before pivot_root, so their paths resolve as in the runtime's mount
namespace) and startContainer (after the release, before the workload, paths resolved in the
container).  Each gets the state JSON on stdin; a failure or a timeout stops the start.

Plain fork/exec/wait: after pivot_root the init can no longer import anything."""

import os
import signal
import time

from .. import errors
from ..kernel import linux


def run(hooks, phase, pid=None):
    """hooks: [{"path", "args", "env", "timeout", "state"}]; pid, when given, replaces the
    state's pid (the init's host pid, known only inside)."""
    for h in hooks:
        state = h["state"]
        if pid is not None:
            state = state.replace('"pid": 0', f'"pid": {pid}', 1)
        r, w = os.pipe()
        child = linux.fork()
        if child == 0:
            try:
                os.setpgid(0, 0)
                os.dup2(r, 0)
                os.dup2(2, 1)
                os.execve(h["path"], h.get("args") or [h["path"]],
                          dict(e.split("=", 1) for e in h.get("env") or []))
            finally:
                os._exit(127)
        os.close(r)
        try:
            os.write(w, state.encode())
        except OSError:
            pass
        os.close(w)
        what = f"{phase} hook {errors.quote(h['path'])}"
        status = _wait(child, h.get("timeout"), what)
        if status:
            code = os.waitstatus_to_exitcode(status)
            raise errors.HookFailed(f"{what} exited with {code}" if code >= 0 else
                                    f"{what} was killed by {signal.Signals(-code).name}")


def _wait(pid, timeout, what):
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        p, status = os.waitpid(pid, os.WNOHANG if end else 0)
        if p:
            return status
        if time.monotonic() >= end:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise errors.HookFailed(f"{what} timed out after {timeout} s")
        time.sleep(0.01)
