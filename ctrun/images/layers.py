"""Content-addressed layers, stored once and shared by the images that list them.

    <root>/layers/sha256/<hex>/diff/        the layer as overlayfs takes a lower layer
                                            (whiteouts: 0:0 char devices; opaque dirs:
                                            trusted.overlay.opaque="y")
    <root>/layers/sha256/<hex>/layer.json   {"diff_id", "size"}

layers/, sha256/ and each <hex>/ are 0700: diff/ keeps the image's mode for its root
directory (it is the container's /), and its private parent keeps other users out.

<hex> is the sha256 of the uncompressed layer tar (its diff_id), checked while the layer is
extracted; a tree made by a builder is keyed by the digest of a tar of it.  An image lists
its layers, bottom first, in image.json's "layers"; a layer lives as long as an image lists
it.  Nothing counts references on disk: they are read from the image.json files under the
"layers" lock, which every commit of an image and every removal of layers takes, so a crash
leaves at worst an unreferenced layer (or a temp directory) that the next gc removes.

Layers are written into temp directories (.tmp-IMAGE-RANDOM, guarded by the image's lock)
without the "layers" lock, then renamed into place with it.

View is the merged read-only view of a stack of layer directories, resolved in Python for
the few files the runtime reads before a container exists (/etc/passwd, the command), and
merged() mounts it in a private mount namespace for the verbs that copy it whole.
"""

import errno
import os
import re
import shutil
import stat

from ..errors import CtrunError, InvalidInput
from ..state import private_dir, read_json, write_json

_HEX = re.compile(r"sha256:([0-9a-f]{64})")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HOPS = 40
OPAQUE_XATTR = "trusted.overlay.opaque"
LOCK = "layers"
# a container's overlay names each layer as /proc/self/fd/N in one page of mount options:
# ~210 fit (overlayfs itself stops at 500; Docker at 125)
MAX_LAYERS = 200


def root(store):
    return store.root / "layers"


def path(store, diff_id):
    """<root>/layers/sha256/<hex> of a diff_id ("sha256:<hex>")."""
    m = _HEX.fullmatch(diff_id or "")
    if not m:
        raise InvalidInput(f"layer id {diff_id!r} is not a sha256 digest; the image record "
                           "is corrupt, remove the image and import it again")
    return root(store) / "sha256" / m.group(1)


def diff_dir(store, diff_id):
    return path(store, diff_id) / "diff"


def exists(store, diff_id):
    return (path(store, diff_id) / "layer.json").exists()


def all_layers(store):
    """{diff_id: layer.json} of every layer in the store."""
    out = {}
    try:
        names = os.listdir(root(store) / "sha256")
    except FileNotFoundError:
        return out
    for hx in names:
        meta = read_json(root(store) / "sha256" / hx / "layer.json")
        if meta is not None:
            out["sha256:" + hx] = meta
    return out


def tree_digest(tree):
    """sha256 of a deterministic tar of a directory (names sorted, symlinks not followed):
    the content address of a layer a builder made as a tree."""
    class Sink:
        def __init__(self):
            import hashlib  # loads OpenSSL: kept off the container start path
            self.sha = hashlib.sha256()

        def write(self, b):
            self.sha.update(b)
            return len(b)

    import tarfile
    sink = Sink()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for entry in sorted(os.listdir(tree)):
            tf.add(os.path.join(tree, entry), arcname=entry)
    return "sha256:" + sink.sha.hexdigest()


class Stage:
    """The layers of one image being made: new ones extracted into temp directories, known
    ones reused.  commit() moves the new ones into place (under the "layers" lock)."""

    def __init__(self, store, owner):
        self.store, self.owner = store, owner
        self.diff_ids = []           # bottom first, what image.json lists
        self.staged = {}             # diff_id -> temp dir of a layer new to the store
        self.temps = []

    def temp(self):
        """A new empty temp directory for one layer; its tree goes in temp/diff."""
        t = self.store.private_dir("layers") / f".tmp-{self.owner}-{os.urandom(4).hex()}"
        private_dir(t)    # renamed to sha256/<hex>: what keeps other users out of diff/
        (t / "diff").mkdir()
        os.chmod(t / "diff", 0o755)  # the container's / (the layer's "./" entry may change it)
        self.temps.append(t)
        return t

    def add(self, diff_id, temp=None):
        """Put a layer on top of the stack: extracted into temp (temp/diff), or, without
        temp, one already in the store."""
        if temp is not None:
            if diff_id in self.staged or exists(self.store, diff_id):
                shutil.rmtree(temp, ignore_errors=True)
            else:
                self.staged[diff_id] = temp
        self.diff_ids.append(diff_id)

    def commit(self):
        """Rename the new layers into place; call with the "layers" lock held."""
        for diff_id in dict.fromkeys(self.diff_ids):
            final = path(self.store, diff_id)
            temp = self.staged.pop(diff_id, None)
            if exists(self.store, diff_id):     # known, or committed by another import
                if temp is not None:
                    shutil.rmtree(temp, ignore_errors=True)
                continue
            if temp is None:
                from ..errors import Conflict
                raise Conflict(f"layer {diff_id} was removed while this image was being made "
                               "(a concurrent image rm or gc); run the command again")
            write_json(temp / "layer.json", {"diff_id": diff_id, "size": du(temp / "diff")})
            self.store.private_dir("layers", "sha256")
            if final.exists():                  # a half-removed leftover without layer.json
                _discard(self.store, final)
            os.rename(temp, final)

    def cleanup(self):
        for t in self.temps:
            shutil.rmtree(t, ignore_errors=True)


def _discard(store, d):
    """Rename away, then delete: a crash in between leaves a .rm- directory for gc."""
    old = root(store) / f".rm-{d.name[:12]}-{os.urandom(4).hex()}"
    os.rename(d, old)
    shutil.rmtree(old, ignore_errors=True)


def referenced(store):
    """diff_ids that some image lists (read from every image.json)."""
    refs = set()
    try:
        names = os.listdir(store.images)
    except FileNotFoundError:
        return refs
    for n in names:
        cfg = read_json(store.images / n / "image.json") if not n.startswith(".") else None
        if cfg and isinstance(cfg.get("layers"), list):
            refs.update(cfg["layers"])
    return refs


def prune(store):
    """Remove the layers no image lists; call with the "layers" lock held.  Returns them."""
    refs = referenced(store)
    gone = []
    try:
        names = os.listdir(root(store) / "sha256")
    except FileNotFoundError:
        return gone
    for hx in names:
        if "sha256:" + hx not in refs:
            _discard(store, root(store) / "sha256" / hx)
            gone.append("sha256:" + hx)
    return gone


def du(tree):
    """Bytes used by a tree (allocated blocks; hard links counted once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for n in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


# -- the merged view -------------------------------------------------------------------------

def _is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(fd):
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


class View:
    """The merged read-only view of layer directories (top first), as overlayfs shows it:
    the topmost entry of a name wins, a whiteout hides the name below, a directory merges
    with the directories below it down to an opaque one.  Lookups walk the layers one
    component at a time without following any symlink on the host: symlinks are expanded
    here, in the merged view, so ".." and absolute targets stay inside the image."""

    def __init__(self, dirs):
        self.dirs = [str(d) for d in dirs]

    def __repr__(self):
        return f"View({self.dirs!r})"

    def open(self, path, flags=os.O_PATH):
        """Open `path` of the merged view (a final symlink followed unless O_NOFOLLOW);
        FileNotFoundError if it is not there, InvalidInput for loops and non-directories."""
        from ..runtime import paths
        if len(self.dirs) == 1:
            return paths.open_in_root(self.dirs[0], path, flags)
        layer, rel = self.resolve(path, follow=not flags & os.O_NOFOLLOW)
        return paths.open_in_root(self.dirs[layer], rel, flags | os.O_NOFOLLOW)

    def resolve(self, path, follow=True):
        """(index of the layer holding it, its symlink-free path in that layer)."""
        roots = [os.open(d, _DIR & ~os.O_NOFOLLOW) for d in self.dirs]
        held = []
        try:
            todo, cur, hops = _parts(path), [], 0
            level = list(enumerate(roots))
            while todo:
                name = todo.pop(0)
                if name == "..":     # cur is physical: walk it again without its last part
                    todo, cur, level = cur[:-1] + todo, [], list(enumerate(roots))
                    continue
                found, sub = None, []
                for i, fd in level:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    if _is_whiteout(st) or (sub and not stat.S_ISDIR(st.st_mode)):
                        break
                    if not stat.S_ISDIR(st.st_mode):
                        found = (i, fd, st)
                        break
                    dfd = os.open(name, _DIR, dir_fd=fd)
                    held.append(dfd)
                    sub.append((i, dfd))
                    if _opaque(dfd):
                        break
                if sub:
                    cur.append(name)
                    level = sub
                    continue
                if found is None:
                    raise FileNotFoundError(errno.ENOENT, f"{path} is not in the image")
                i, fd, st = found
                if stat.S_ISLNK(st.st_mode) and (todo or follow):
                    hops += 1
                    if hops > _MAX_HOPS:
                        raise InvalidInput(f"cannot resolve '{path}' in the image: too many "
                                           "levels of symbolic links; fix the image's symlinks")
                    target = os.readlink(name, dir_fd=fd)
                    todo = _parts(target) + todo
                    if target.startswith("/"):
                        cur, level = [], list(enumerate(roots))
                    continue
                if todo:
                    raise InvalidInput(f"cannot resolve '{path}' in the image: a component is "
                                       "not a directory; fix the path or the image")
                return i, "/".join(cur + [name])
            return level[0][0], "/".join(cur)
        finally:
            for fd in held + roots:
                os.close(fd)

    def read_text(self, path):
        fd = self.open(path, os.O_RDONLY)
        with os.fdopen(fd, errors="replace") as f:
            return f.read()


def drop_overlay_bookkeeping(tree):
    """Remove overlayfs's private xattrs (origin, impure, nlink...) from a copied upper
    directory, keeping what makes it a layer: the opaque marker (whiteouts are devices)."""
    for d, dirs, files in os.walk(tree):
        for n in [d] + [os.path.join(d, x) for x in dirs + files]:
            try:
                names = os.listxattr(n, follow_symlinks=False)
            except OSError:
                continue
            for x in names:
                if x.startswith("trusted.overlay.") and x != OPAQUE_XATTR:
                    os.removexattr(n, x, follow_symlinks=False)


def _parts(path):
    return [p for p in os.fspath(path).split("/") if p and p != "."]


def merged(dirs, fn, scratch):
    """Run fn(path of the merged view of dirs, top first) in a forked child that has its own
    mount namespace, where the layers are stacked read-only by overlayfs on a directory made
    under scratch; the mount dies with the child.  The child's error comes back as one
    line: a CtrunError keeps its kind, anything else becomes a CtrunError naming the copy."""
    dirs = [str(d) for d in dirs]
    private_dir(scratch)
    mnt = os.path.join(str(scratch), f".mnt-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(mnt, 0o700)
    r, w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 1
            try:
                if len(dirs) == 1:           # overlayfs wants two lowers without an upper
                    fn(dirs[0])
                else:
                    from .. import libc, namespaces
                    from ..kernel import linux
                    from ..runtime.rootfs import lowerdir
                    namespaces.private_mounts()
                    fds = [os.open(d, _DIR) for d in dirs]
                    linux.mount("overlay", mnt, "overlay", libc.MS_RDONLY,
                                f"lowerdir={lowerdir(fds)}")
                    fn(mnt)
                code = 0
            except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
                if isinstance(e, CtrunError):
                    kind, text = type(e).__name__, str(e)
                else:
                    kind = "CtrunError"
                    text = (f"copying the image's merged layers failed: "
                            f"{getattr(e, 'strerror', None) or e}"
                            + (f" ({e.filename})" if getattr(e, "filename", None) else ""))
                os.write(w, f"{kind}\n{text}".encode())
            os._exit(code)
        os.close(w)
        w = None
        msg = b""
        while chunk := os.read(r, 65536):
            msg += chunk
        _, st = os.waitpid(pid, 0)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
        os.rmdir(mnt)
    if st != 0:
        from .. import errors
        kind, _, text = msg.decode(errors="replace").partition("\n")
        raise getattr(errors, kind, CtrunError)(text.strip().splitlines()[0] if text.strip()
                                                else "copying the image's merged layers "
                                                     f"failed (status {st})")
