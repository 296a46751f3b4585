"""A container's lifecycle state as a type, and the one table of which verb may run in which
state: every verb asks here, and its one-line refusal comes from here.

    created --start--> running --stop/kill/exit--> stopping --> stopped --start--> running
                       running --freeze--> frozen --thaw--> running

The state is derived from the store's files (state.status); "stopping" is the short span
in which the monitor has reaped the process but not yet written its exit record, and
"frozen" a running container whose cgroup is frozen (shown by inspect; for every verb's
check it counts as running, as the cgroup freezer is orthogonal to the process's life).
"""

import enum

from .errors import Conflict, quote


class State(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FROZEN = "frozen"


LIVE = frozenset({State.RUNNING})
IDLE = frozenset({State.CREATED, State.STOPPED})

# verb -> (states it may run in, its refusal from the name and the state)
RULES = {
    "start": (IDLE, lambda n, s: f"container {quote(n)} is already {s}"),
    "stop": (LIVE, lambda n, s: f"container {quote(n)} is not running"),
    "kill": (LIVE, lambda n, s: f"container {quote(n)} is not running; start it first"),
    "exec": (LIVE, lambda n, s: f"container {quote(n)} is not running; start it first: "
                                f"ctrun start {n}"),
    "freeze": (LIVE, lambda n, s: f"container {quote(n)} is not running; only a running container "
                                  "can be frozen"),
    "thaw": (LIVE, lambda n, s: f"container {quote(n)} is not running; only a running container "
                                "can be thawed"),
    "stats": (LIVE, lambda n, s: f"container {quote(n)} is not running; stats need a running "
                                 "container"),
    "destroy": (IDLE | {State.STOPPING},
                lambda n, s: f"container {quote(n)} is running; stop it first or use --force"),
    # changes that only the running container keeps (set --no-save)
    "set-live": (LIVE, lambda n, s: f"container {quote(n)} is not running and --no-save keeps "
                                    "nothing; drop --no-save"),
    # its files may still be mounted by the stopping process: not a second mount
    "edit": (IDLE | LIVE, lambda n, s: f"container {quote(n)} is stopping; wait for it to stop"),
}

HINTS = {("start", State.STOPPING): "; wait for it to stop"}


def may(verb, state):
    """May `verb` run on a container in `state`?"""
    return State(state) in RULES[verb][0]


def require(verb, name, state, hint=""):
    """Raise the verb's one-line Conflict unless it may run in `state`."""
    if not may(verb, state):
        raise Conflict(RULES[verb][1](name, state)
                       + HINTS.get((verb, State(state)), "") + hint)
