"""A store's start pools (pre-made cgroups and network namespaces), filled by the warm
server's spare worker once the host is quiet (ctrun.server) and emptied when the server
leaves; used by the starts of its workers, and of a Ctrun made with pool=True (or with
CTRUN_POOL=1 in the environment; CTRUN_POOL=0 turns them off, the server's too).

The server may also park a zygote (runtime.zygote) in each pooled cgroup with park(): a
start in this process that takes that cgroup has the zygote fork its init, so no task is
moved into a cgroup on the start path.
"""

import os

from .config import DEFAULT_CGROUP_PARENT

# {pool entry name: Zygote} of this process (zygotes are its children: only this process
# can hand them a start and reap them)
ZYGOTES = {}


# set in a worker of a store's warm server, whose spares fill the pools (ctrun.server)
SERVED = False


def enabled(flag=None):
    """Whether starts take from the pools: the flag; else $CTRUN_POOL ("1" or "0"); else
    whether this process is a warm server's worker."""
    if flag is not None:
        return flag
    env = os.environ.get("CTRUN_POOL")
    return env == "1" if env in ("0", "1") else SERVED


def cgroup_pool(store, parent=None, layout=None):
    """The store's cgroup pool under `parent` (default $CTRUN_CGROUP_PARENT or ctrun): its
    entries carry the devices allowlist of an unprivileged container."""
    from .cgroups.base import DEVICE_ALLOW
    from .cgroups.pool import CgroupPool
    parent = parent or os.environ.get("CTRUN_CGROUP_PARENT", DEFAULT_CGROUP_PARENT)
    return CgroupPool(store.short_id, parent, device_rules=DEVICE_ALLOW, layout=layout)


def fill(store, n, parent=None):
    """Top both pools up to n entries each; returns (cgroups made, namespaces made)."""
    from .network.nspool import NetnsPool
    return cgroup_pool(store, parent).fill(n), NetnsPool(store).fill(n)


def park(store, parent=None):
    """A zygote in every entry of the store's cgroup pool that has none; returns how many
    were forked.  Call it from the server's main thread (it forks)."""
    from .runtime.zygote import Zygote
    pool = cgroup_pool(store, parent)
    made = 0
    for entry in pool.entries():
        if entry not in ZYGOTES:
            ZYGOTES[entry] = Zygote(pool.procs_files(entry), pool.mounts)
            made += 1
    return made


def zygote_for(entry):
    """The parked zygote a start that took pool entry `entry` hands its launch to."""
    return ZYGOTES.pop(entry, None) if entry else None


def drain(store, parent=None):
    """Empty both pools (and end this process's parked zygotes); returns (cgroups
    removed, namespaces removed)."""
    from .network.nspool import NetnsPool
    for entry in [e for e in ZYGOTES if e.endswith("." + store.short_id)]:
        ZYGOTES.pop(entry).discard()
    return cgroup_pool(store, parent).drain(), NetnsPool(store).drain()
