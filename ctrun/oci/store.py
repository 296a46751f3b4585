"""ctrun-oci's state directory (--root): one private directory per container ID holding its
state record, the runtime spec it was created from, its seccomp program and its exec fifo.

The status is derived, never stored: the init's pid and start time say whether it lives
(a zombie waiting for the client to reap it counts as stopped), the exec fifo says whether
`start` has released it yet, and the cgroup freezer says whether it is paused.
"""

import fcntl
import os
import time

from ..errors import AlreadyExists, InvalidInput, NotFound, quote

# imported by every verb a client calls, several times per container: only os and fcntl
# here (ctrun.state, the cgroup package and `re` load on the verbs that need them).  Not
# even json: its import loads re and enum, a few ms of each call; the records are read and
# the state document written through the C functions json itself uses (_json) instead.

DEFAULT_ROOT = "/run/ctrun-oci"


def _id_char(c):
    return c.isalnum() or c in "_+-."


def check_id(cid):
    """runc's rule for an ID ([\\w+\\-.]+): it becomes a directory name, and a cgroup name
    by default."""
    if not cid or not all(map(_id_char, cid)) or cid in (".", "..") or len(cid) > 1024:
        raise InvalidInput(f"invalid container id {quote(cid)}; use letters, digits and "
                           "'_', '+', '-', '.' only (no '/' and not '..')")
    return cid


class Root:
    """The --root directory."""

    def __init__(self, path=None):
        self.path = os.path.abspath(path or DEFAULT_ROOT)

    def dir(self, cid):
        return os.path.join(self.path, check_id(cid))

    def ensure(self):
        try:
            if os.stat(self.path).st_mode & 0o077 == 0:
                return  # made (root-only) by an earlier call
        except FileNotFoundError:
            pass
        from ..state import private_dir
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            private_dir(self.path)
        except FileExistsError:
            pass

    def make(self, cid):
        """The new container's directory, or AlreadyExists (runc's wording)."""
        self.ensure()
        d = self.dir(cid)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            raise AlreadyExists(f"container with id exists: {cid}") from None
        return d

    def lock(self, cid):
        """An exclusive lock on one ID (held until the returned fd is closed): verbs on one
        container from concurrent client calls run one after another.  A POSIX record lock,
        not flock: the init forked during create must not hold it while it waits for
        `start` (a flock would be shared with it through the inherited descriptor)."""
        self.ensure()
        fd = os.open(os.path.join(self.path, f".{check_id(cid)}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        return fd

    def unlock(self, cid, fd, remove=False):
        if remove:
            try:
                os.unlink(os.path.join(self.path, f".{cid}.lock"))
            except FileNotFoundError:
                pass
        os.close(fd)

    def load(self, cid):
        d = self.dir(cid)
        rec = _read_json(os.path.join(d, "state.json"))
        if rec is None:
            raise NotFound("container does not exist" if os.path.isdir(d) is False
                           else f"container {quote(cid)} is still being created or was "
                                "left half-made; delete it with: ctrun-oci delete --force "
                                f"{cid}")
        return Container(d, rec)

    def cached(self, key, make):
        """make()'s bytes for `key` (a str naming all they depend on), made once and kept in
        the root's .cache.  The file name is only a checksum of the key: the whole key is
        stored with the data and compared on every read, so two keys never share an entry
        (a profile crafted to collide with another gets its own program, never the other's)."""
        import zlib
        k = key.encode()
        path = os.path.join(self.path, ".cache", f"{zlib.crc32(k):08x}{zlib.adler32(k):08x}")
        try:
            with open(path, "rb") as f:
                if f.read(len(k) + 1) == k + b"\0":
                    return f.read()
        except FileNotFoundError:
            pass
        data = make()
        self.ensure()
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        write_private(path, k + b"\0" + data)
        return data

    def ids(self):
        try:
            return sorted(e.name for e in os.scandir(self.path)
                          if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []


class Container:
    """One container's record: id, pid, pid_start, bundle, created, annotations, cgroup
    (parent, name), owner."""

    def __init__(self, directory, rec):
        self.dir, self.rec = directory, rec

    def __getattr__(self, key):
        try:
            return self.rec[key]
        except KeyError:
            raise AttributeError(key) from None

    def path(self, name):
        return os.path.join(self.dir, name)

    def save(self):
        write_json(self.path("state.json"), self.rec)

    def spec(self):
        return _read_json(self.path("spec.json"))

    def bpf(self):
        """The container's seccomp program and its load flags, or None."""
        try:
            with open(self.path("seccomp.bpf"), "rb") as f:
                return f.read(), self.rec.get("seccomp_flags", 0)
        except FileNotFoundError:
            return None

    def alive(self):
        from ..procs import proc_start_time
        return bool(self.pid) and proc_start_time(self.pid) == self.pid_start

    def status(self):
        if not self.alive():
            return "stopped"
        if os.path.exists(self.path("exec.fifo")):
            return "created"
        return "paused" if self.frozen() else "running"

    def frozen(self):
        """Read from the freezer file recorded at create, without the cgroup package."""
        f = self.rec.get("freezer")
        try:
            with open(f or "") as fh:
                text = fh.read()
        except OSError:
            return False
        return text.strip() == "FROZEN" if f.endswith("freezer.state") else \
            "frozen 1" in text.splitlines()


def _read_json(path):
    try:
        with open(path) as f:
            return loads(f.read())
    except FileNotFoundError:
        return None


class _Decoding:
    """What json's C scanner reads from its decoder: json.loads's defaults."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def loads(text):
    """json.loads(text), without importing json."""
    try:
        from _json import make_scanner
    except ImportError:   # a Python without the accelerator
        import json
        return json.loads(text)
    start = len(text) - len(text.lstrip())
    try:
        obj, end = make_scanner(_Decoding)(text, start)
    except StopIteration:
        end = None
    if end is None or text[end:].strip():
        import json
        return json.loads(text)   # raises json's error, naming the place
    return obj


def dumps(obj):
    """json.dumps(obj, indent=2) of a document of str, int, bool, None, lists and dicts
    with str keys (the state document), without importing json."""
    try:
        from _json import encode_basestring_ascii as quote_str
    except ImportError:
        quote_str = None
    if quote_str is None or not _plain(obj):
        import json
        return json.dumps(obj, indent=2)
    return _dumps(obj, quote_str, "\n")


def _plain(obj):
    if isinstance(obj, dict):
        return all(type(k) is str and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(map(_plain, obj))
    return obj is None or type(obj) in (str, int, bool)


def _dumps(obj, quote_str, nl):
    if isinstance(obj, str):
        return quote_str(obj)
    if obj is None or type(obj) is bool:
        return {None: "null", True: "true", False: "false"}[obj]
    if type(obj) is int:
        return str(obj)
    inner = nl + "  "
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = (f"{quote_str(k)}: {_dumps(v, quote_str, inner)}" for k, v in obj.items())
        return "{" + inner + ("," + inner).join(items) + nl + "}"
    if not obj:
        return "[]"
    return "[" + inner + ("," + inner).join(_dumps(v, quote_str, inner) for v in obj) + nl + "]"


def now():
    """The time in RFC 3339 with nanoseconds, as runc writes `created`."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def write_json(path, obj):
    """A record of this directory, whole or not at all, root-only.  Compact: json's C
    encoder writes it (indent would take the Python one), and only ctrun-oci reads it; not
    fsynced: it lives in /run, and a record outliving a power loss would be stale anyway."""
    import json
    write_private(path, json.dumps(obj, separators=(",", ":")).encode())


def write_private(path, data):
    """Bytes to a root-only file, whole or not at all."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path, text):
    """A pid file (or any file a client reads) whole or not at all."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def self_start():
    """This process's start time: a create under way is known by its pid and this."""
    from ..procs import proc_start_time
    return proc_start_time(os.getpid())


def rmtree(d):
    """A container's state directory, whatever is left in it; errors ignored.  Not shutil's:
    its import loads the compression modules, on every delete."""
    try:
        with os.scandir(d) as it:
            entries = list(it)
    except OSError:
        entries = []
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            pass
    try:
        os.rmdir(d)
    except OSError:
        pass
