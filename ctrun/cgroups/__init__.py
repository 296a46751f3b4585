"""Container cgroups on cgroup v1, v2 and hybrid hosts.

    m = manager("web")          # layout detected from /proc/self/mountinfo
    m.create(); ...; m.kill_all(); m.remove()

Resource control (limits.py parses and checks; each backend writes its own files):

    lim = limits.from_options(memory="64M", cpus="0.5")
    m.apply(lim, skip=[p.field for p in limits.unsupported(lim, m.layout)])
    m.read_limits(); m.stats(); m.freeze(); m.thaw()
"""

from .base import LEAF, CgroupManager
from .detect import Layout, detect


def manager(name, parent="ctrun", layout=None, root=None, timeout=None):
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
    return cls(name, parent, layout, timeout)


def children(parent, layout=None):
    """Names of the container cgroups below `parent` in any hierarchy."""
    import os
    layout = layout or detect()
    names = set()
    for mnt in list(layout.v1.values()) + ([layout.v2] if layout.v2 else []):
        try:
            names.update(e.name for e in os.scandir(mnt / parent) if e.is_dir())
        except FileNotFoundError:
            pass
    return sorted(names)


__all__ = ["CgroupManager", "LEAF", "Layout", "children", "detect", "manager"]
