"""LXCFS: the container's own view of its memory, CPUs, uptime, load, swap and disks.

The kernel fills /proc/meminfo, /proc/stat, /proc/uptime... with host-wide numbers, so
`free`, `top` and `uptime` in a container show the host.  LXCFS is a FUSE file system that
serves the same files computed from the cgroup of the process that reads them (its memory
limit and usage, CPU quota and cpuset, the start of its init); ctrun binds them over the
container's own files (ctrun.runtime.rootfs).

One LXCFS serves every container of the host, whatever its store: it answers each reader
from the reader's cgroup and holds no state of any container.  So it is a host service,
started on demand by the first container that needs it.  No store owns it: a store's
monitor, when it leaves (its last container is gone), and `ctrun gc` stop it only once no
mount namespace on the host has a file of it bound (release()), since a stopped LXCFS
leaves the /proc files of the containers still using it failing with ENOTCONN.  A start
holds the LXCFS lock shared from the moment it gets the mount until its init has bound
the files (settled(), or the verb's exit), and release() only goes on with the lock all to
itself: never between a start's hand-out and its binds.

- A host that runs lxcfs.service has it mounted at /var/lib/lxcfs: that one is used.
- Otherwise ctrun starts its own, mounted at /run/ctrun-lxcfs/mnt with its pid file, log
  and start lock beside it.  CTRUN_LXCFS_DIR names another directory (then the host's is
  not used); CTRUN_LXCFS_DIR=none turns LXCFS off.
`nproc` counts the CPUs of sched_getaffinity, which only a cpuset narrows, and LXCFS too
counts a CPU quota only where the reader's own cgroup (the `ct` leaf) holds it.  So a
container with a quota (--cpus N) and no cpuset of its own also gets a cpuset of ceil(N)
CPUs, as Incus's limits.cpu does (spread_cpus): nproc, cpuinfo, stat and cpu/online then
all say N, at the cost of running on those CPUs only (--cpuset-cpus picks others).
A missing or broken LXCFS never stops a container from starting: it gets the host's
files, and the verb that starts it prints one warning.
"""

import fcntl
import math
import os
import shutil
import signal
import time
import zlib

from .. import mountinfo
from ..errors import CtrunError, HostUnsupported
from ..kernel import linux
from ..libc import MNT_DETACH, umount2

HOST_MOUNT = "/var/lib/lxcfs"
DEFAULT_DIR = "/run/ctrun-lxcfs"
# the files bound over the container's own (as LXC's lxcfs hook does), where LXCFS has them
FILES = ("proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "proc/loadavg",
         "proc/swaps", "proc/diskstats", "sys/devices/system/cpu/online")
# -l: a per-cgroup load average; --enable-cfs: the CPU quota counts in cpuinfo, stat and
# cpu/online (without it only the cpuset does)
OPTIONS = ("-f", "-l", "--enable-cfs")
START_TIMEOUT = 5.0
# then SIGKILL: a daemon stopped just after its start may miss both its session's end and
# SIGTERM (seen: still in a futex wait 5 s later).  What then still holds its file system
# (a lazily unmounted copy) reads ENOTCONN, as after a crash; no mount of it is bound in
# any namespace, or release() would not have stopped it
STOP_GRACE = 0.5
SERVED = "files"   # beside the pid file: the FILES ctrun's own daemon has (_served)
_held = []   # the lock fd this process holds shared from ensure() to settled()
# a warm server's spare's detached clones of its LXCFS's files (preopen): {host path: tree
# fd}, and the pid of the daemon they belong to
_trees = {}
_trees_of = []


def binds(warn):
    """[[host file, container file], ...] for the container's spec; [] (after one warning)
    when LXCFS is turned off or cannot serve."""
    try:
        mnt = ensure()
    except HostUnsupported as e:
        warn(f"{e}; the container sees the host's memory, CPUs, uptime and load")
        return []
    if mnt is None:
        return []
    if _trees and not _trees_current(mnt):
        _close_trees()
    return [[os.path.join(mnt, f), "/" + f] for f in _served(mnt)]


def preopen(called=lambda: False):
    """In a warm server's spare, before its call: each file ctrun's LXCFS serves cloned as
    a detached mount, which the call's start attaches (take_tree) instead of binding it by
    path.  A bind by path walks into the FUSE file system, whose entries expire after a
    second: then each of the 8 lookups is a round trip to the daemon, ~2 ms of a boot's
    start here (the clones are made in the host's mount namespace, where the paths are).
    called(): the spare's call has come, which the rest would delay (bound by path)."""
    base = base_dir()
    pid = _pid(base) if base else 0
    if _trees or not pid or not _running(pid):
        return
    mnt = os.path.join(base, "mnt")
    try:
        with open(os.path.join(base, SERVED)) as f:
            files = f.read().split()
    except OSError:
        return   # no start has listed them yet (_served)
    _trees_of[:] = [pid]
    for name in files:
        if called():
            return
        try:
            _trees[os.path.join(mnt, name)] = linux.open_tree_clone(os.path.join(mnt, name),
                                                                   False)
        except OSError:
            pass


def take_tree(path):
    """preopen()'s clone of the LXCFS file at path (the caller attaches and closes it), or
    None."""
    return _trees.pop(path, None)


def _trees_current(mnt):
    """preopen()'s clones are of the daemon serving mnt now (it may have been restarted)."""
    base = base_dir()
    return bool(base) and mnt == os.path.join(base, "mnt") and [_pid(base)] == _trees_of


def _close_trees():
    for fd in _trees.values():
        os.close(fd)
    _trees.clear()


def _served(mnt):
    """The FILES the LXCFS at mnt has.  For ctrun's own, the list is kept beside its pid
    file once found (its start removes it, and its stop the whole directory): each start
    then reads one file instead of asking the daemon about each (a FUSE round trip each,
    ~0.6 ms in all here)."""
    base = base_dir()
    kept = os.path.join(base, SERVED) if base and mnt == os.path.join(base, "mnt") else None
    if kept:
        try:
            with open(kept) as f:
                return f.read().split()
        except FileNotFoundError:
            pass
    files = [f for f in FILES if os.path.exists(os.path.join(mnt, f))]
    if kept:
        tmp = f"{kept}.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write("\n".join(files) + "\n")
            os.rename(tmp, kept)
        except OSError:
            pass   # the next start looks again
    return files


def spread_cpus(mgr, limits, name, skip=()):
    """Give a container with a CPU quota and no cpuset of its own ceil(quota) CPUs (all of
    them when the quota is lifted); containers start at a CPU chosen by name so they spread.
    Best effort: where the cpuset cannot be set (no cpuset controller), the quota stays
    alone and nproc shows the host's CPUs."""
    if limits.cpus is None or limits.cpuset_cpus is not None or "cpus" in skip:
        return
    from ..cgroups.limits import Limits
    allowed = sorted(os.sched_getaffinity(0))
    n = len(allowed) if limits.cpus < 0 else min(len(allowed), math.ceil(limits.cpus))
    first = zlib.crc32(name.encode()) % len(allowed)
    cpus = sorted((allowed * 2)[first:first + n])
    try:
        mgr.apply(Limits(cpuset_cpus=",".join(map(str, cpus))))
    except (CtrunError, OSError):
        pass


def base_dir():
    """ctrun's own LXCFS directory, or None when turned off."""
    d = os.environ.get("CTRUN_LXCFS_DIR", DEFAULT_DIR)
    return None if d == "none" else d


def ensure():
    """The mount point of a serving LXCFS, started if needed; None when turned off."""
    if "CTRUN_LXCFS_DIR" not in os.environ and _serving(HOST_MOUNT):
        return HOST_MOUNT
    base = base_dir()
    if base is None:
        return None
    settled()   # a lock this process still held for an earlier start would block its own
    mnt = os.path.join(base, "mnt")
    path = os.path.join(base, "lock")
    while True:
        try:
            os.makedirs(base, 0o755, exist_ok=True)
            lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _unusable(base, e) from None
        try:
            # shared: starts run side by side; release() takes it alone
            fcntl.flock(lock, fcntl.LOCK_SH)
            if not _current(lock, path):
                os.close(lock)
                continue
            if _alive(base, mnt) or _serving(mnt):
                break
            # concurrent starts: one starts it, the others wait (taking it alone is not
            # atomic: a release may have removed the file meanwhile)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _current(lock, path):
                os.close(lock)
                continue
            if not _serving(mnt):
                if mnt in _lxcfs_mounts():  # its daemon died: the mount answers ENOTCONN
                    umount2(mnt, MNT_DETACH)
                try:
                    os.makedirs(mnt, 0o755, exist_ok=True)
                except OSError as e:
                    raise _unusable(mnt, e) from None
                _start(base, mnt)
            # back to shared; a release that came in between has removed the file
            fcntl.flock(lock, fcntl.LOCK_SH)
            if _current(lock, path):
                break
            os.close(lock)
        except BaseException:
            os.close(lock)
            raise
    _held.append(lock)   # kept shared until this start's init has bound the files
    return mnt


def settled():
    """The start that got the mount has its files bound (its init is ready, or it
    failed): release() may now stop LXCFS when that container is gone."""
    while _held:
        os.close(_held.pop())


def release():
    """Stop ctrun's own LXCFS once nothing on the host uses it: no start holds its lock
    and no mount namespace has a file of it bound.  True if it was stopped.  (The host's
    lxcfs.service is never touched.)"""
    base = base_dir()
    if base is None:
        return False
    mnt = os.path.join(base, "mnt")
    try:
        lock = os.open(os.path.join(base, "lock"), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False   # never started here, or stopped already
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False   # a start is under way: its monitor, or gc, releases it later
        if not _current(lock, os.path.join(base, "lock")) or _in_use(mnt):
            return False   # (stopped meanwhile, by a release that held the old lock file)
        stop(base)
        return True
    finally:
        os.close(lock)


def _current(fd, path):
    """fd is still the lock file at path: stop() removes the directory, lock file and all,
    so a start that waited for the removed file must take the new one instead."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _in_use(mnt):
    """A mount of the LXCFS mounted at mnt (its device) other than mnt itself, in any
    mount namespace: a container's bound files."""
    dev = _lxcfs_mounts().get(mnt)
    if dev is None:
        return False
    seen = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo") as f:
                if any(m.dev == dev and m.point != mnt for m in mountinfo.parse(f)):
                    return True
        except OSError:
            pass   # gone meanwhile
    return False


def _unusable(path, e):
    return HostUnsupported(f"cannot make lxcfs's directory {path!r} ({e.strerror}); "
                           "set CTRUN_LXCFS_DIR to a writable local directory")


def stop(base):
    """Stop ctrun's LXCFS of `base` and remove the directory, whoever uses it (the tests'
    own at their end; release() once nothing does)."""
    mnt = os.path.join(base, "mnt")
    pid = _pid(base)
    # the mount first: its FUSE session ends and the daemon's loop with it (a SIGTERM
    # alone is only seen by the loop at its next request: it waited out the timeout)
    if mnt in _lxcfs_mounts():
        umount2(mnt, MNT_DETACH)
    if pid and _running(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    # renamed first, with the lock still held: a start that comes meanwhile makes a new
    # directory, which a removal from an old listing would cut into (its mount point, its
    # pid file)
    dead = f"{base}.gone.{os.getpid()}"
    try:
        os.rename(base, dead)
    except FileNotFoundError:
        return
    except OSError:   # (a crashed stop's leftover in the way)
        dead = base
    shutil.rmtree(dead, ignore_errors=True)


def _start(base, mnt):
    exe = shutil.which("lxcfs")
    if exe is None:
        raise HostUnsupported("lxcfs is not installed (apt-get install lxcfs)")
    try:   # the list of another daemon (perhaps another version): the next start looks
        os.unlink(os.path.join(base, SERVED))
    except FileNotFoundError:
        pass
    log = os.open(os.path.join(base, "lxcfs.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # double fork and setsid: the daemon outlives this verb and its tty
        try:
            os.setsid()
            pid = os.fork()
            if pid == 0:
                os.chdir("/")
                null = os.open("/dev/null", os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.closerange(3, 1 << 16)  # the start lock above all: it must not be held on
                try:  # like lxcfs.service; refused without CAP_SYS_RESOURCE, then kept as is
                    with open("/proc/self/oom_score_adj", "w") as f:
                        f.write("-1000")
                except OSError:
                    pass
                # an empty environment: a host service keeps nothing of the verb that
                # happened to start it
                os.execve(exe, [exe, *OPTIONS, "-p", os.path.join(base, "lxcfs.pid"), mnt], {})
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(log)
    try:
        pid = int(os.read(r, 32) or 0)
    finally:
        os.close(r)
        os.waitpid(child, 0)   # the intermediate, gone once it forked the daemon
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _serving(mnt):
            return
        if not pid or not _running(pid):
            break
        time.sleep(0.01)
    if pid and _running(pid):
        os.kill(pid, signal.SIGKILL)
    raise HostUnsupported(f"lxcfs did not start on {mnt!r}: "
                          f"{_last_line(os.path.join(base, 'lxcfs.log'))}")


def _serving(mnt):
    """An LXCFS is mounted at mnt and answers (a dead daemon's mount fails with ENOTCONN)."""
    if mnt not in _lxcfs_mounts():
        return False
    try:
        with open(os.path.join(mnt, "proc/uptime"), "rb") as f:
            return bool(f.read(64))
    except OSError:
        return False


def _alive(base, mnt):
    """ctrun's own LXCFS at mnt is mounted and its daemon runs (the pid in its pid file, an
    lxcfs serving mnt): the daemon of a mount answers it as long as it lives, so this
    spares every start a read through the mount (a round trip to the daemon, ~0.3 ms);
    _serving's read remains for the rest (the host's LXCFS, a pid file gone)."""
    if mnt not in _lxcfs_mounts():
        return False
    pid = _pid(base)
    if not pid or not _running(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.fsencode(mnt) in f.read().split(b"\0")
    except OSError:
        return False


def _lxcfs_mounts():
    """{mount point: its device (major:minor)} of each LXCFS mounted here."""
    with open("/proc/self/mountinfo") as f:
        return {m.point: m.dev for m in mountinfo.parse(f) if m.fstype == "fuse.lxcfs"}


def _pid(base):
    """The pid in base's pid file if it still is an lxcfs (a pid file outlives its process)."""
    try:
        with open(os.path.join(base, "lxcfs.pid")) as f:
            pid = int(f.read().strip() or 0)
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().strip() == "lxcfs" else 0
    except (OSError, ValueError):
        return 0


def _running(pid):
    """pid is alive and not a zombie (a daemon's parent is gone: init reaps it, late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "it exited without a message"
