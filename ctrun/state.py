"""The on-disk store: one directory per container, atomic JSON files, one flock per name.

Layout below the root (default /var/lib/ctrun, or --root / CTRUN_ROOT):
  images/NAME/{rootfs/,image.json}
  containers/NAME/{config.json,state.json,live.json,exit.json,spec.json,upper/,work/,rootfs/,etc/,logs/}
  locks/NAME.lock        held by every verb that changes NAME (kept outside the container
                         directory so create and destroy can lock a name that has no directory)
  run/                   the monitor's socket, lock and log; the seccomp cache
  store-id               this store's random id, made at first use: it marks what the store
                         makes outside itself (cgroup names, nftables rule comments, bridge
                         aliases), so that one store's verbs never touch another's (two
                         stores on one host share the cgroup parent and nftables table)

Each file has one writer, so no verb ever waits for the monitor: state.json is written by
CLI verbs under the lock, live.json/exit.json by whoever supervises the running process
(the shared monitor, or the CLI itself for an attached `run`).  A start is tagged with a
random start_id; live/exit files count only when their start_id matches state.json.
"""

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

DEFAULT_ROOT = "/var/lib/ctrun"


def default_root():
    return os.environ.get("CTRUN_ROOT") or DEFAULT_ROOT


def write_json(path, data, durable=True):
    """Write atomically: temp file, rename; a crashed process leaves the old or the new file.

    durable=True also fsyncs, so the file survives a power loss: used for what describes a
    container (config, state).  Live facts about a process (live.json, exit.json, the
    generated spec) skip it: a power loss ends the process anyway, and read_json treats
    a torn file as missing, which reads as "stopped".
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_json(path, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
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


def proc_start_time(pid):
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the comm field may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def alive(pid, start_time):
    return bool(pid) and proc_start_time(pid) == start_time


class Store:
    def __init__(self, root=None):
        self.root = Path(root or default_root()).absolute()
        self.images = self.root / "images"
        self.containers = self.root / "containers"
        self.locks = self.root / "locks"
        self.run = self.root / "run"

    def ensure(self):
        # 0711: a container's mapped root (--userns) must traverse to its own layers
        for d in (self.root, self.containers):
            d.mkdir(mode=0o711, exist_ok=True)
        for d in (self.images, self.locks, self.run):
            d.mkdir(mode=0o700, exist_ok=True)

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
                        from .errors import Conflict
                        raise Conflict(f"container '{name}' is locked by another ctrun command; "
                                       "wait for it to finish") from None
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
