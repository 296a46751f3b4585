"""A store's start pools (pre-made cgroups and network namespaces), filled by the warm
server in the background and used by starts of a Ctrun made with pool=True (or with
CTRUN_POOL=1 in the environment)."""

import os

from .config import DEFAULT_CGROUP_PARENT


def enabled(flag=None):
    """Whether starts take from the pools: the flag, or else $CTRUN_POOL == "1"."""
    return flag if flag is not None else os.environ.get("CTRUN_POOL") == "1"


def cgroup_pool(store, parent=None, layout=None):
    """The store's cgroup pool under `parent` (default $CTRUN_CGROUP_PARENT or ctrun): its
    entries carry the devices allowlist of an unprivileged container."""
    from .backends.container import DEVICE_ALLOW
    from .cgroups.pool import CgroupPool
    parent = parent or os.environ.get("CTRUN_CGROUP_PARENT", DEFAULT_CGROUP_PARENT)
    return CgroupPool(store.short_id, parent, device_rules=DEVICE_ALLOW, layout=layout)


def fill(store, n, parent=None):
    """Top both pools up to n entries each; returns (cgroups made, namespaces made)."""
    from .network.nspool import NetnsPool
    return cgroup_pool(store, parent).fill(n), NetnsPool(store).fill(n)


def drain(store, parent=None):
    """Empty both pools; returns (cgroups removed, namespaces removed)."""
    from .network.nspool import NetnsPool
    return cgroup_pool(store, parent).drain(), NetnsPool(store).drain()
