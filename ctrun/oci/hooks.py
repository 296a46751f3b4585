"""Runtime-spec hooks: the programs config.json's `hooks` runs at each lifecycle step.

Each hook gets the container's State JSON on stdin; its stdout and stderr both go to
our stderr, where the client (conmon, the containerd shim) collects a runtime's
messages.  Where the spec is silent the semantics are runc's: a hook without `args`
runs with its path as argv[0], one without `env` inherits ours (an empty list gives an
empty environment, and of two settings of a name the last wins).  A timed-out hook is
killed with everything it started: it runs in a process group of its own.

This module is imported before the init leaves the host's root (a startContainer
hook runs inside the container), so it imports all it needs at the top.
"""

import json
import os
import signal
import subprocess

from ctrun.errors import HookFailed, InvalidInput, quote

PHASES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
          "poststop")


def validate(hooks_obj, field="hooks"):
    """Check the shape of config.json's `hooks` object; InvalidInput names the field."""
    if hooks_obj is None:
        return
    _need(isinstance(hooks_obj, dict), f"{field} must be an object, not {quote(hooks_obj)}")
    for phase, hooks in hooks_obj.items():
        _need(phase in PHASES, f"{field}.{phase} is not a hook phase; use one of "
                               f"{', '.join(PHASES)}")
        if hooks is None:
            continue
        _need(isinstance(hooks, list), f"{field}.{phase} must be a list of hooks")
        for i, hook in enumerate(hooks):
            _check(hook, f"{field}.{phase}[{i}]")


def run(hooks, state, phase, keep_going=False):
    """Run the hooks of `phase` one after another, each fed the State JSON `state` (a dict).

    The first failure raises HookFailed, unless keep_going (the spec's poststart and
    poststop, where a failure is only a warning): then every hook runs and the failures
    are returned, in order, for the caller to log."""
    data = json.dumps(state).encode()
    failures = []
    for i, hook in enumerate(hooks or ()):
        _check(hook, f"hooks.{phase}[{i}]")
        try:
            _run_one(hook, data, f"{phase} hook {quote(hook['path'])}")
        except HookFailed as e:
            if not keep_going:
                raise
            failures.append(e)
    return failures


def _run_one(hook, data, what):
    path = hook["path"]
    env = hook.get("env")
    if env is not None:
        env = dict(entry.split("=", 1) for entry in env)
    timeout = hook.get("timeout")
    try:
        proc = subprocess.Popen(hook.get("args") or [path], executable=path, env=env,
                                stdin=subprocess.PIPE, stdout=2, stderr=2, process_group=0)
    except OSError as e:
        raise HookFailed(f"{what} cannot be run: {e.strerror}") from None
    try:
        proc.communicate(data, timeout=timeout)  # a hook need not read its stdin
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise HookFailed(f"{what} timed out after {timeout} s") from None
    except BaseException:
        _kill_group(proc)  # interrupted: leave no hook behind
        raise
    if proc.returncode < 0:
        raise HookFailed(f"{what} was killed by {signal.Signals(-proc.returncode).name}")
    if proc.returncode:
        raise HookFailed(f"{what} exited with {proc.returncode}")


def _kill_group(proc):
    """SIGKILL the hook and whatever it started (its group outlives it while they run)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _need(ok, message):
    if not ok:
        raise InvalidInput(message)


def _strings(hook, key, field):
    value = hook.get(key)
    _need(value is None or isinstance(value, list) and all(
        isinstance(s, str) and "\0" not in s for s in value),
        f"{field}.{key} must be a list of strings")
    return value or []


def _check(hook, field):
    _need(isinstance(hook, dict), f"{field} must be an object, not {quote(hook)}")
    path = hook.get("path")
    _need(path is not None, f"{field}.path is missing; give the hook's absolute path")
    _need(isinstance(path, str) and path.startswith("/") and "\0" not in path,
          f"{field}.path {quote(path)} is not an absolute path; give the hook's absolute path")
    _strings(hook, "args", field)
    for j, entry in enumerate(_strings(hook, "env", field)):
        _need(entry.partition("=")[0] and "=" in entry,
              f"{field}.env[{j}] {quote(entry)} is not NAME=VALUE")
    timeout = hook.get("timeout")
    _need(timeout is None or isinstance(timeout, int) and not isinstance(timeout, bool)
          and timeout > 0,
          f"{field}.timeout {quote(timeout)} is not a whole number of seconds above 0")
