"""Find which cgroup hierarchies the host mounts, from mountinfo (never from guessed paths)."""

import os
from pathlib import Path

from ..errors import HostUnsupported
from ..mountinfo import parse as mounts

MOUNTINFO = "/proc/self/mountinfo"

# v1 superblock options that name a controller; anything else (rw, xattr, release_agent=...,
# clone_children, nsdelegate...) is a mount flag and not part of the hierarchy's identity.
V1_CONTROLLERS = frozenset({
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
    "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc", "debug",
})


class Layout:
    """kind: "v1", "v2" or "hybrid"; v1: {"cpu,cpuacct": mount point}; v2: the cgroup2
    mount or None; v2_controllers: what cgroup2 offers.  (A plain class: dataclasses costs
    ~8 ms of start-up.)"""

    __slots__ = ("kind", "v1", "v2", "v2_controllers")

    def __init__(self, kind, v1=None, v2=None, v2_controllers=None):
        self.kind = kind
        self.v1 = dict(v1 or {})
        self.v2 = v2
        self.v2_controllers = set(v2_controllers or ())

    def __eq__(self, other):
        return isinstance(other, Layout) and all(
            getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self):
        return f"Layout({self.kind!r}, {self.v1!r}, {self.v2!r}, {self.v2_controllers!r})"

    def has_v1(self, controller):
        """The v1 hierarchy key carrying `controller`, or None."""
        for key in self.v1:
            if controller in key.split(","):
                return key
        return None

    def rebased(self, root):
        """The same layout with every mount point moved under `root` (for fake trees in tests)."""
        root = Path(root)
        v1 = {k: root / p.relative_to("/") for k, p in self.v1.items()}
        v2 = root / self.v2.relative_to("/") if self.v2 else None
        return Layout(self.kind, v1, v2, _read_controllers(v2))


def _read_controllers(v2):
    if v2 is None:
        return set()
    try:
        return set((v2 / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def parse(text, root=None):
    """Layout from mountinfo text; the cgroup2 mount's controllers are read from its files.

    `root` moves every mount point under another directory first.
    """
    v1, v1_root = {}, {}
    v2 = None
    for m in mounts(text.splitlines()):
        fstype, superopts, src, mnt = m.fstype, m.superopts, m.root, Path(m.point)
        if root is not None:
            mnt = Path(root) / mnt.relative_to("/")
        if fstype == "cgroup2":
            v2 = v2 or mnt
        elif fstype == "cgroup":
            key = ",".join(o for o in superopts.split(",")
                           if o in V1_CONTROLLERS or o.startswith("name="))
            # the same hierarchy can be mounted twice; prefer a mount of its root
            if key and (key not in v1 or (v1_root[key] != "/" and src == "/")):
                v1[key], v1_root[key] = mnt, src
    real_v1 = any(c in V1_CONTROLLERS for key in v1 for c in key.split(","))
    if not v1 and v2 is None:
        raise HostUnsupported("no cgroup hierarchy is mounted (checked mountinfo); "
                              "mount one with: mount -t cgroup2 none /sys/fs/cgroup")
    if v2 is not None:
        kind = "hybrid" if real_v1 else "v2"
    else:
        kind = "v1"
    return Layout(kind, v1, v2, _read_controllers(v2))


_cache = {}   # (mountinfo, root) -> (its text, the Layout, the pid that read or checked it)


def detect(mountinfo=MOUNTINFO, root=None):
    """The host's Layout, cached per process for the default mountinfo.

    A layout inherited over a fork (the warm server detects it once; each worker it forks
    starts with it) is checked once in the new process against mountinfo's text, which
    costs a read (~20 us) where parsing it again costs ~0.4 ms of every call.

    `root` moves every mount point under another directory, so tests can point a real or
    sample mountinfo at a fake tree.
    """
    key = (os.fspath(mountinfo), root)
    cached = _cache.get(key) if mountinfo == MOUNTINFO else None
    if cached is not None and cached[2] == os.getpid():
        return cached[1]
    with open(mountinfo) as f:
        text = f.read()
    layout = cached[1] if cached is not None and cached[0] == text else parse(text, root)
    if mountinfo == MOUNTINFO:
        _cache[key] = (text, layout, os.getpid())
    return layout


def forget():
    """Drop the cached layout: the host mounted a hierarchy since (ctrun.cgroups.named),
    or a long-lived process (the monitor) must see the host as it is now."""
    _cache.clear()
