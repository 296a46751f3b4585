"""The on-disk store: one directory per container, atomic JSON files, one flock per name.

Layout below the root (default /var/lib/ctrun, or --root / CTRUN_ROOT):
  images/NAME/{rootfs/,image.json}
  containers/NAME/{config.json,state.json,live.json,exit.json,spec.json,upper/,work/,rootfs/,etc/,logs/}
  locks/NAME.lock        held by every verb that changes NAME (kept outside the container
                         directory so create and destroy can lock a name that has no directory)
  run/                   the monitor's socket, lock and log; the seccomp cache
  layers/ tmp/ cache/ networks/   see ctrun.images.layers, ctrun.vm.disk, ctrun.network
  store-id               this store's random id, made at first use: it marks what the store
                         makes outside itself (cgroup names, nftables rule comments, bridge
                         aliases), so that one store's verbs never touch another's (two
                         stores on one host share the cgroup parent and nftables table)

Nothing below the root is reachable by other users (the class of Docker's CVE-2021-41091:
layer ids are public, so a setuid-root file of any image would be every local user's root
shell): the root and every directory the store makes are 0700 (private_dir).  Trees that
are a container's own files (a layer's diff/, a container's upper/ and rootfs/) keep the
image's modes, below a private parent.

Each file has one writer, so no verb ever waits for the monitor: state.json is written by
CLI verbs under the lock, live.json/exit.json by whoever supervises the running process
(the shared monitor, or the CLI itself for an attached `run`).  A start is tagged with a
random start_id; live/exit files count only when their start_id matches state.json.
"""

import contextlib
import contextvars
import errno
import fcntl
import json
import os
import re
import stat
import time
from pathlib import Path

from . import procs

# a process by pid and start time: in procs.py, named here too, their first home
proc_start_time, alive = procs.proc_start_time, procs.alive

DEFAULT_ROOT = "/var/lib/ctrun"


def default_root():
    return os.environ.get("CTRUN_ROOT") or DEFAULT_ROOT


# the container that `run --rm` creates and runs (ephemeral()): its records are removed
# at its end, and a power loss before that leaves debris for gc either way
_EPHEMERAL = contextvars.ContextVar("ctrun_ephemeral", default=None)


@contextlib.contextmanager
def ephemeral(name):
    """Within: write_json does not fsync the files of container `name` (None: of none),
    which the same call removes; shared files (leases, images) stay durable."""
    token = _EPHEMERAL.set(name)
    try:
        yield
    finally:
        _EPHEMERAL.reset(token)


def _ephemeral(path):
    """Is `path` a file of the ephemeral() container's directory (or of its create's
    temporary one)?"""
    name = _EPHEMERAL.get()
    d = path.parent
    return name is not None and d.parent.name == "containers" and (
        d.name == name or d.name.startswith(f".tmp-{name}-"))


# in a served call's worker (ctrun.server): the trees remove_tree leaves for after the reply
_LATER = []
_DEFERRING = []


def remove_tree(path):
    """Remove a tree nothing refers to any more (a destroyed container's directory, renamed
    out of the store's listing): now, or, in a served call, once its client has the reply
    (defer_removals); one left by a killed process is gc's."""
    if _DEFERRING:
        _LATER.append(path)
    else:
        import shutil
        shutil.rmtree(path, ignore_errors=True)


def defer_removals():
    _DEFERRING.append(True)


def finish_removals():
    _DEFERRING.clear()
    while _LATER:
        remove_tree(_LATER.pop(0))


def sync(path):
    """Make a file written with durable=False durable now (as write_json's fsync would
    have; not for an ephemeral() container's): a start writes its state.json so, and syncs
    it once the init runs, which then does not wait for the disk."""
    path = Path(path)
    if _ephemeral(path):
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, data, durable=True):
    """Write atomically: temp file, rename; a crashed process leaves the old or the new file.

    durable=True also fsyncs, so the file survives a power loss: used for what describes a
    container (config, state), unless its container is ephemeral().  Live facts about a
    process (live.json, exit.json, the generated spec) skip it: a power loss ends the
    process anyway, and read_json treats a torn file as missing, which reads as "stopped".
    """
    path = Path(path)
    data = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # TMP_RE below
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            if os.write(fd, data) != len(data):  # a full disk can take part of it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            if durable and not _ephemeral(path):
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:  # a full disk, a bad path: no temp file left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# write_json's temporary files; a process killed mid-write leaves one (gc removes it)
TMP_RE = re.compile(r"\..+\.([0-9]+)\.tmp")


def stale_temp_files(directory):
    """write_json temporary files in `directory` whose writer is gone."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for e in entries:
        m = TMP_RE.fullmatch(e.name)
        if m and e.is_file(follow_symlinks=False) and not os.path.exists(f"/proc/{m[1]}"):
            out.append(Path(e.path))
    return out


def read_json(path, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError):  # the latter: a stray file in containers/
        return default
    except ValueError:  # torn by a power loss (only non-durable files can be)
        return default


def proc_cmdlines():
    """(pid, raw NUL-separated argv) of every process still there."""
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    yield int(p), f.read()
            except OSError:
                continue


def private_dir(path):
    """Make directory `path` (its parent must exist) that only root may enter, whatever the
    umask; an existing one (a store of an older ctrun) loses group and other access.
    Returns True if it had to change the mode of an existing directory."""
    try:
        os.mkdir(path, 0o700)
        return False
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if not mode & 0o077:
            return False
        os.chmod(path, mode & ~0o077)
        return True


class Store:
    def __init__(self, root=None):
        self.root = Path(root or default_root()).absolute()
        self.images = self.root / "images"
        self.containers = self.root / "containers"
        self.locks = self.root / "locks"
        self.run = self.root / "run"

    def ensure(self):
        """Create the store (or make an existing one private: see private_dir)."""
        if private_dir(self.root):
            self._make_private_below()
        # made here even when unused, so a module that creates below them with its own
        # mode (the seccomp cache, a builder's scratch) is still inside a private directory
        for d in (self.images, self.containers, self.locks, self.run, self.root / "layers",
                  self.root / "tmp", self.root / "cache"):
            private_dir(d)

    def private_dir(self, *parts):
        """<root>/parts..., each level made by private_dir: the store's directories that
        are not at its top level are made here."""
        self.ensure()
        d = self.root
        for p in parts:
            d = d / p
            private_dir(d)
        return d

    def _make_private_below(self):
        """A store made by an older ctrun (its root was 0711): take other users' access
        away from the directories it made (0711 and 0755 ones: layers, containers, blobs,
        disks), down to the layer and container directories; the trees inside those keep
        their modes, since they are the containers' own files."""
        for top in os.scandir(self.root):
            if not top.is_dir(follow_symlinks=False):
                continue
            private_dir(top.path)
            for sub in os.scandir(top.path):
                if sub.is_dir(follow_symlinks=False):
                    private_dir(sub.path)
                    if sub.path == str(self.root / "layers" / "sha256"):
                        for layer in os.scandir(sub.path):
                            if layer.is_dir(follow_symlinks=False):
                                private_dir(layer.path)

    @property
    def id(self):
        """The store's id (32 hex digits), made on first use.

        Written to a temp file and hard-linked into place: link() fails if a concurrent
        first use won, and then both read the winner's id, never a torn file."""
        if getattr(self, "_id", None):
            return self._id
        path = self.root / "store-id"
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            self.ensure()
            tmp = path.with_name(f".store-id.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, os.urandom(16).hex().encode() + b"\n")
                os.fsync(fd)  # the id outlives a power loss, or was never there
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            value = path.read_text().strip()
        if not (len(value) == 32 and all(c in "0123456789abcdef" for c in value)):
            from .errors import CtrunError
            raise CtrunError(f"store id file {path} is corrupt; if no container of this store "
                             "is running, remove it and run the command again")
        self._id = value
        return value

    @property
    def short_id(self):
        """The 8 hex digits that mark the store's cgroups, rules and bridges."""
        return self.id[:8]

    def container_dir(self, name):
        return self.containers / name

    def image_dir(self, name):
        return self.images / name

    def container_names(self):
        try:
            return sorted(n for n in os.listdir(self.containers) if not n.startswith("."))
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def lock(self, name, timeout=30.0):
        """Exclusive per-name lock: verbs on one container serialize, others run in parallel."""
        self.ensure()
        fd = os.open(self.locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        from .errors import Conflict, quote
                        raise Conflict(f"container {quote(name)} is locked by another ctrun "
                                       "command; wait for it to finish") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)


def _monitor_alive(run):
    """Does a monitor hold the store's monitor lock?"""
    try:
        fd = os.open(run / "monitor.lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def status(cdir):
    """Derive a container's live status from its files: (status, state, live, exit)."""
    state = read_json(cdir / "state.json", {}) or {}
    sid = state.get("start_id")
    if not sid:
        return "created", state, None, None
    exit_ = read_json(cdir / "exit.json")
    if exit_ and exit_.get("start_id") == sid:
        return "stopped", state, None, exit_
    live = read_json(cdir / "live.json")
    if live and live.get("start_id") == sid:
        if alive(live["pid"], live["pid_start"]):
            return "running", state, live, None
        if live.get("monitor") == "shared" and _monitor_alive(cdir.parent.parent / "run"):
            # reaped, and the monitor is still recording the exit (cgroup, rules): not lost
            return "stopping", state, live, None
        return "stopped", state, live, {"exit_code": None, "exit_reason": "monitor-lost",
                                        "finished_at": None}
    return "stopped", state, None, {"exit_code": None, "exit_reason": "start-interrupted",
                                    "finished_at": None}
