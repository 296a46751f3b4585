"""What happens after a container's init exits: classify the exit, free the cgroup.

Shared by the monitor (detached containers) and the CLI (attached `run`).  The OOM count
is read before the cgroup is removed, since the kernel's record goes with it.
"""

import signal
import time


def now(digits=3):
    """UTC now in RFC 3339 with `digits` of fraction, truncated like datetime's isoformat
    (whose import costs ~2 ms of every verb)."""
    sec, ns = divmod(time.time_ns(), 10 ** 9)
    frac = f".{ns // 10 ** (9 - digits):0{digits}d}" if digits else ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + frac + "+00:00"


def classify(status, oom_kills, stop_requested):
    import os
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
        if sig == signal.SIGKILL and oom_kills:
            reason = "oom-killed"
        elif stop_requested:
            reason = "stopped"
        else:
            reason = "killed by " + signal.Signals(sig).name
    else:
        code = os.waitstatus_to_exitcode(status)
        if code == 137 and oom_kills and not stop_requested:
            reason = "oom-killed"  # a shell or reaper passed on its child's OOM death
        else:
            reason = "stopped" if stop_requested else "exited"
    return code, reason


def finalize(cdir, name, start_id, status, cgroup_parent="ctrun", cgroup_name=None):
    """Record exit.json for this start, then tear down the container's cgroup (cgroup_name:
    the one its config records, `<name>.<store id8>`; the plain name before store ids)."""
    from .. import cgroups
    from ..state import read_json, write_json   # here: the monitor's logs take now() alone
    oom = 0
    mgr = None
    try:
        # a long-lived monitor's cached layout may predate a name=systemd hierarchy
        # mounted for this container (ctrun.cgroups.named): its cgroup there goes too
        from ..cgroups import named
        from ..cgroups.detect import detect, forget
        if named.needed(detect()):   # (a cached layout that has it is still the host's)
            forget()
        mgr = cgroups.manager(cgroup_name or name, parent=cgroup_parent)
        oom = mgr.oom_kills()
    except Exception:  # noqa: BLE001 - a missing cgroup must not lose the exit record
        pass
    state = read_json(cdir / "state.json", {}) or {}
    from ..config import Config
    net = getattr(Config.load(cdir), "net", None) or {}
    if net.get("ip"):
        try:
            from ..network import container as netc
            from ..state import Store
            netc.down(Store(cdir.parent.parent), name, net)
        except Exception:  # noqa: BLE001 - `ctrun gc` removes rules of stopped containers
            pass
    code, reason = classify(status, oom, state.get("stop_requested") == start_id)
    try:
        if mgr is not None:
            mgr.discard()
    except Exception:  # noqa: BLE001 - `ctrun gc` retries what is left
        pass
    finally:
        # written last: whoever waits for the exit record finds the cgroup already gone
        write_json(cdir / "exit.json", {"start_id": start_id, "exit_code": code,
                                        "exit_reason": reason, "finished_at": now(),
                                        "oom_kills": oom}, durable=False)
    return code, reason
