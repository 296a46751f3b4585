"""A store's pool of pre-made container cgroups, renamed into place at start.

An entry is a complete `<parent>/.pool-<id>.<owner>/ct` in every cgroup v1 hierarchy, in
the state a fresh create() leaves (cpuset inherited, the pool's device allowlist written
before `ct` exists), so take() only renames it to the container's cgroup name: a rename is
a few microseconds per hierarchy where mkdir and the cpuset and devices writes are about a
millisecond for all of them.  cgroup2 refuses rename (EPERM), so on a hybrid host the
unified side is made at start as before, and a pure v2 host has nothing to pool.

What the pool does not remove is the kernel's wait for an RCU grace period on the first
attach of a task after a quiet spell (cgroup_threadgroup_rwsem): that is paid by the write
to cgroup.procs, fresh or pooled cgroup alike.

Entries carry the store's short id like its containers' cgroups (`.<owner>` suffix), so
two stores never take each other's, and `ctrun gc` removes them with the store's other
cgroups no container recorded.  An entry is made as `.fill-<id>.<owner>` and renamed to
its pool name in the first hierarchy last; take() claims it by renaming it there first:
a half-made entry is never taken, and two takers never get the same one.
"""

import errno
import os

from . import children, manager
from .detect import detect

POOL = ".pool-"
FILLING = ".fill-"


class CgroupPool:
    def __init__(self, owner, parent="ctrun", device_rules=None, layout=None):
        """owner: the store's short id; device_rules: the v1 devices allowlist every entry
        gets (a start asking for other rules makes its cgroup as before)."""
        self.owner, self.parent = owner, parent
        self.device_rules = list(device_rules) if device_rules is not None else None
        self.layout = layout or detect()
        # first hierarchy: where an entry is claimed; the order is the same for every taker
        self.mounts = [self.layout.v1[k] for k in sorted(self.layout.v1)]

    @property
    def usable(self):
        return bool(self.mounts)

    def _v1(self, name):
        """The v1 side only: cgroup2 cannot rename, its part is made by the start."""
        from .v1 import V1Manager
        return V1Manager(name, self.parent, self.layout)

    def _dir(self, mnt, name):
        return mnt.joinpath(*[p for p in self.parent.split("/") if p], name)

    def entries(self):
        """Names of this store's ready entries."""
        if not self.usable:
            return []
        try:
            with os.scandir(self._dir(self.mounts[0], "")) as it:
                return sorted(e.name for e in it if e.name.startswith(POOL)
                              and e.name.endswith("." + self.owner) and e.is_dir())
        except FileNotFoundError:
            return []

    def fill(self, n):
        """Make entries until there are n; returns how many were made."""
        if not self.usable:
            return 0
        made = 0
        while len(self.entries()) < n:
            tag = f"{os.urandom(4).hex()}.{self.owner}"
            mgr = self._v1(FILLING + tag)
            try:
                mgr.create(device_rules=self.device_rules)
                for mnt in self.mounts[1:] + self.mounts[:1]:
                    os.rename(self._dir(mnt, FILLING + tag), self._dir(mnt, POOL + tag))
            except BaseException:
                self._v1(FILLING + tag).remove()
                self._v1(POOL + tag).remove()
                raise
            made += 1
        return made

    def procs_files(self, entry):
        """The cgroup.procs files of an entry's leaf, for a zygote to join (runtime.zygote)."""
        return self._v1(entry).procs_files()

    def take(self, name, device_rules=None):
        """Rename one entry to `name` (a container's cgroup name) in every v1 hierarchy;
        returns the entry's name (a zygote parked in it moved along), or False when the pool is empty or cannot serve this start (other device rules, a
        cgroup of that name already there): the caller then creates as before."""
        if not self.usable or device_rules != self.device_rules:
            return False
        for entry in self.entries():
            done = []
            try:
                for mnt in self.mounts:
                    os.rename(self._dir(mnt, entry), self._dir(mnt, name))
                    done.append(mnt)
                return entry
            except OSError as e:
                for mnt in done:   # undo: the entry stays whole for the next taker
                    os.rename(self._dir(mnt, name), self._dir(mnt, entry))
                if not done and e.errno == errno.ENOENT:
                    continue       # another taker claimed it first
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
        return False

    def drain(self):
        """Remove every entry of this store (and half-made ones); returns how many."""
        names = [n for n in children(self.parent, self.layout, owner=self.owner)
                 if n.startswith((POOL, FILLING))]
        for n in names:
            manager(n, parent=self.parent, layout=self.layout).discard()
        return len(names)
