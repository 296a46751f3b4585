"""A cgroup's removal by its directories alone, on any hierarchy: leaves first, retrying
while the kernel still counts exiting tasks.

The cgroup managers (ctrun.cgroups) remove through this, and so does ctrun-oci's delete,
which its clients run once per container, each a new process: it reads the directories from
the record made at create and skips the package's imports (pathlib, re, the managers).
"""

import errno
import os
import time

POLL = 0.02      # seconds between tries while a cgroup stays busy
TIMEOUT = 5.0    # the default bound, in seconds, on waiting for its processes to go
_BUSY = (errno.EBUSY, errno.ENOTEMPTY)


def subtree(top):
    """Every directory at or below `top` (top itself as given, the others as str), deepest
    first; [] if `top` is gone."""
    found, i = [top], 0
    while i < len(found):   # breadth first: reversed, every child precedes its parent
        try:
            with os.scandir(found[i]) as entries:
                found += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            if i == 0:
                return []   # gone, or removed while we looked: skip it
        i += 1
    return found[::-1]


def rmdir_retry(path, deadline, rmdir=os.rmdir):
    """rmdir, retrying while busy until `deadline` (time.monotonic()); False if it stays
    busy.  A directory already gone counts as removed."""
    while True:
        try:
            rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno not in _BUSY:
                raise
            if time.monotonic() >= deadline:
                return False
        time.sleep(POLL)


def remove(tops, deadline, rmdir=os.rmdir):
    """Remove each of `tops` and everything below it; the first directory that stays busy
    past `deadline`, or None once all are gone."""
    for top in tops:
        for d in subtree(top):
            if not rmdir_retry(d, deadline, rmdir):
                return d
    return None


def rmdir_if_empty(path, rmdir=os.rmdir):
    """rmdir a level that may still hold other cgroups; False if it does (it stays)."""
    try:
        rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno in _BUSY:
            return False
        raise
    return True
