"""Container cgroups on cgroup v1, v2 and hybrid hosts.

    m = manager("web")          # layout detected from /proc/self/mountinfo
    m.create(); ...; m.kill_all(); m.remove()

Resource control (limits.py parses and checks; each backend writes its own files):

    lim = limits.from_options(memory="64M", cpus="0.5")
    m.apply(lim, skip=[p.field for p in limits.unsupported(lim, m.layout)])
    m.read_limits(); m.stats(); m.freeze(); m.thaw()

Ownership: every store on a host shares the cgroup parent (CTRUN_CGROUP_PARENT, default
`ctrun`), so a container's cgroup is named `<name>.<store id8>` (container_name()): two
stores' containers of one name never share a cgroup, and a store's gc removes only the
orphans that end in its own id (children(owner=...)).  A flat name rather than a
`<parent>/<id8>/<name>` level keeps children() one scandir and leaves no per-store
directory to remove (and race with a start) once its last container goes.  The name is
recorded in the container's config ("cgroup_name"), so a container made before store ids
keeps its plain `<name>` cgroup.
"""

from .base import LEAF, CgroupManager
from .detect import Layout, detect


def manager(name, parent="ctrun", layout=None, root=None, timeout=None, leaf=LEAF):
    """The CgroupManager for this host's layout.

    `root` moves every mount point under another directory (tests point it at a fake tree).
    """
    if layout is None:
        layout = detect()
    if root is not None:
        layout = layout.rebased(root)
    if layout.kind == "v2":
        from .v2 import V2Manager as cls
    elif layout.kind == "v1":
        from .v1 import V1Manager as cls
    else:
        from .v1 import HybridManager as cls
    return cls(name, parent, layout, timeout, leaf)


def container_name(name, owner):
    """The cgroup name of container `name` of the store whose short id is `owner`."""
    return f"{name}.{owner}"


def children(parent, layout=None, owner=None):
    """Names of the container cgroups below `parent` in any hierarchy; with owner (a store's
    short id), only those of that store's containers."""
    import os
    layout = layout or detect()
    names = set()
    for mnt in list(layout.v1.values()) + ([layout.v2] if layout.v2 else []):
        try:
            names.update(e.name for e in os.scandir(mnt / parent) if e.is_dir())
        except FileNotFoundError:
            pass
    if owner is not None:
        names = {n for n in names if n.endswith("." + owner)}
    return sorted(names)


__all__ = ["CgroupManager", "LEAF", "Layout", "children", "container_name", "detect",
           "manager"]
