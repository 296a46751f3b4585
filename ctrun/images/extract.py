"""Apply one image layer (a tar, maybe compressed) onto a directory, treating it as hostile.

Every write goes through directory file descriptors opened one path component at a time with
O_NOFOLLOW, starting from a descriptor of `dest`, so no symlink, whether laid down by this layer
or an earlier one, is ever followed by the extractor.  Policy:

- Member names and hardlink targets are made relative by dropping leading '/' (as Docker does:
  an image's absolute names mean "from the image's root"); any '..' component is refused.
- Symlinks are created as they are, whatever they point at: they are data inside the rootfs
  and the container resolves them within its own root.  A later member whose parent path
  crosses a symlink (`etc -> /host-etc` then `etc/passwd`) is refused, not followed and not
  resolved in-root.  A member *at* the symlink's own path replaces the symlink.
- Existing entries are replaced by unlinking them and creating new ones (a directory over a
  directory is merged), so a file is never opened for writing through an existing name, and
  a hardlink from a lower layer is never written through.
- Hardlinks must name a regular file already present under dest.
- Device nodes and fifos are created only for trusted images; otherwise they are skipped and
  reported.  strip_setuid clears setuid/setgid on non-directories (setgid on a directory only
  sets the group of new files, and is kept).
- A root-directory entry ("./") applies its mode, owner and mtime to dest itself.
- Extended attributes are not applied (counted in "skipped").
- The archive must end with tar's end-of-archive block and its compressed stream must check
  out to the end; anything less is "truncated or corrupt".  The uncompressed bytes are hashed
  on the way (the layer's diff_id), and checked when the caller knows what they must be.

Two ways to apply whiteouts.  Flattening (the default) deletes what they name from dest, the
layers below having been applied there first.  overlay=True writes the layer into its own
empty directory as overlayfs takes it as a lower layer: a whiteout becomes a 0:0 character
device, an opaque directory gets the trusted.overlay.opaque="y" xattr.  The result depends on
the tar alone, whatever it will be stacked on, so one stored copy serves every image listing
it (so a parent the tar does not list is made 0755 root, as containerd does).

On InvalidInput the layer is partly applied: the caller discards dest.
"""

import errno
import hashlib
import os
import shutil
import stat
import tarfile

from ..errors import CtrunError, HostUnsupported, InvalidInput, NotFound
from .layers import OPAQUE_XATTR

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPAQUE = ".wh..wh..opq"
_MAX_PATH = 4000          # keeps every path usable by the kernel (PATH_MAX is 4096)
_MAX_META = 1 << 20       # pax / GNU long-name headers are read whole by tarfile: bound them
_FD_CACHE = 64
_ALIASES = {"tar": "none", "plain": "none", "none": "none", "gzip": "gzip", "gz": "gzip",
            "xz": "xz", "zstd": "zstd", "zst": "zstd", "bzip2": "bzip2", "bz2": "bzip2"}


class _Corrupt(Exception):
    """The byte stream itself is bad (decoder error, oversized header, decompressor failed)."""


def extract_layer(src, dest, trusted=False, strip_setuid=False, compression=None, name=None,
                  overlay=False, diff_id=None):
    """Apply the tar layer `src` (a path or a binary file object) onto the directory `dest`.

    compression: None to detect it from magic bytes, else one of none/gzip/xz/zstd/bzip2,
    which the content must match.  name: how messages call the layer (default: the path).
    overlay: see the module's docstring.  diff_id: "sha256:..." the uncompressed tar
    must hash to (InvalidInput otherwise).
    Returns {"files", "dirs", "symlinks", "hardlinks", "devices", "whiteouts", "bytes",
    "skipped": [reason, ...], "diff_id": "sha256:..." of the uncompressed tar}.
    """
    label = name or _label(src)
    want = None
    if compression is not None:
        want = _ALIASES.get(str(compression).lower())
        if want is None:
            raise InvalidInput(f"unknown compression {compression!r} for layer {label}; "
                               f"use one of: {', '.join(sorted(set(_ALIASES.values())))}")
    try:
        root_fd = os.open(dest, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFound(f"layer destination {dest} does not exist; create it first") from None
    own = None
    try:
        if isinstance(src, (str, bytes, os.PathLike)):
            try:
                own = raw = open(src, "rb")
            except FileNotFoundError:
                raise NotFound(f"layer {label} does not exist") from None
        else:
            raw = src
        stream = _open_stream(raw, want, label)
        ex = _Extractor(root_fd, label, dest, trusted, strip_setuid, overlay)
        try:
            tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=_Info)
            while True:
                m = tf.next()
                if m is None:
                    break
                tf.members.clear()    # stream mode would otherwise keep every header
                ex.apply(m, tf)
            if not getattr(tf, "ctrun_end", False):
                raise _Corrupt("the end-of-archive marker is missing")
            stream.drain()
            ex.finish()
            ex.stats["diff_id"] = got = "sha256:" + stream.sha.hexdigest()
            if diff_id is not None and got != diff_id:
                raise InvalidInput(f"layer {label} does not match its diff_id {diff_id} (it "
                                   f"unpacks to {got}); the image is corrupt or was tampered "
                                   "with, get a fresh copy")
            return ex.stats
        except (tarfile.TarError, _Corrupt, EOFError) as e:
            raise InvalidInput(f"layer {label} is truncated or corrupt: {_one_line(e)}; "
                               "fetch it again") from None
        finally:
            ex.close()
            stream.close()
    finally:
        if own is not None:
            own.close()
        os.close(root_fd)


def verify_tree(dest):
    """Walk dest without following symlinks and check that every directory in it really lies
    under dest (its realpath is its own path).  Returns the number of entries seen."""
    root = os.path.realpath(dest)
    seen = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            real = os.path.realpath(d)
            if real != d:
                raise InvalidInput(f"image tree {root} is unsafe: {d!r} resolves to {real!r}; "
                                   "discard it")
            with os.scandir(d) as it:
                for e in it:
                    seen += 1
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except OSError as e:
            raise InvalidInput(f"image tree {root} cannot be verified at {d!r}: {e.strerror}; "
                               "discard it") from None
    return seen


# -- the byte stream -------------------------------------------------------------------------

def _label(src):
    if isinstance(src, (str, bytes, os.PathLike)):
        return os.fsdecode(src)
    n = getattr(src, "name", None)
    return n if isinstance(n, str) else "<stream>"


def _one_line(e):
    return (str(e) or type(e).__name__).replace("\n", " ")


def _sniff(head):
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bzip2"
    return "none"


class _Prefixed:
    """A reader that gives back the sniffed bytes before the rest of `raw`."""

    def __init__(self, raw, head):
        self.raw, self.head = raw, head

    def read(self, n=-1):
        if self.head:
            if n is None or n < 0:
                b, self.head = self.head + self.raw.read(), b""
            else:
                b, self.head = self.head[:n], self.head[n:]
            return b
        return self.raw.read(n)


class _Stream:
    """Decompressed bytes for tarfile, hashed (the diff_id); decoder failures become _Corrupt."""

    def __init__(self, inner, finish=None, cleanup=None):
        self.inner, self._finish, self._cleanup = inner, finish, cleanup
        self.sha = hashlib.sha256()

    def read(self, n=-1):
        try:
            b = self.inner.read(n)
            self.sha.update(b)
            return b
        except _Corrupt:
            raise
        except Exception as e:   # zlib, lzma, bz2, zstandard, EOFError: all mean bad input
            raise _Corrupt(_one_line(e)) from None

    def drain(self):
        """Read to the end so compressed trailers (CRCs, sizes) get checked."""
        while self.read(_CHUNK):
            pass
        if self._finish:
            self._finish()

    def close(self):
        if self._cleanup:
            self._cleanup()


def _open_stream(raw, want, label):
    head = b""
    while len(head) < 10:
        b = raw.read(10 - len(head))
        if not b:
            break
        head += b
    kind = _sniff(head)
    if want is not None and want != kind:
        raise InvalidInput(f"layer {label} is declared {want}-compressed but its content is "
                           f"{'not compressed' if kind == 'none' else kind}; the image is corrupt")
    src = _Prefixed(raw, head)
    if kind == "none":
        return _Stream(src)
    if kind == "gzip":
        import gzip
        return _Stream(gzip.GzipFile(fileobj=src, mode="rb"))
    if kind == "xz":
        import lzma
        return _Stream(lzma.LZMAFile(src))
    if kind == "bzip2":
        import bz2
        return _Stream(bz2.BZ2File(src))
    return _zstd_stream(src, label)


def _zstd_stream(src, label):
    try:
        import zstandard
    except ImportError:
        pass
    else:
        return _Stream(zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True))
    if not shutil.which("zstd"):
        raise HostUnsupported(f"layer {label} is zstd-compressed and neither the python "
                              "zstandard module nor the zstd tool is installed; run: "
                              "apt-get install zstd")
    import subprocess
    import threading
    proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    failed = []

    def pump():
        try:
            while True:
                b = src.read(_CHUNK)
                if not b:
                    break
                proc.stdin.write(b)
        except (BrokenPipeError, ValueError):   # zstd gave up, or we closed the pipe
            pass
        except Exception as e:   # reading the source failed
            failed.append(e)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    pumper = threading.Thread(target=pump, name="zstd-feed", daemon=True)
    pumper.start()

    def finish():
        pumper.join()
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        if proc.wait() != 0 or failed:
            raise _Corrupt(_one_line(failed[0]) if failed else
                           err[-1] if err else f"zstd exited with status {proc.returncode}")

    def cleanup():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        pumper.join(timeout=5)
        for f in (proc.stdout, proc.stderr):
            f.close()

    return _Stream(proc.stdout, finish, cleanup)


class _Info(tarfile.TarInfo):
    """Records that the archive ended with a real end-of-archive block (tarfile's streaming
    reader otherwise treats a cut-off or garbled header as a clean end) and refuses
    oversized metadata headers before tarfile reads them into memory."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            tf.ctrun_end = True
            raise

    def _proc_member(self, tf):
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) \
                and self.size > _MAX_META:
            raise _Corrupt(f"a metadata header of {self.size} bytes (more than {_MAX_META})")
        return super()._proc_member(tf)


# -- applying members ------------------------------------------------------------------------

class _Extractor:
    def __init__(self, root_fd, label, dest, trusted, strip_setuid, overlay=False):
        self.root_fd, self.label, self.dest = root_fd, label, dest
        self.trusted, self.strip_setuid, self.overlay = trusted, strip_setuid, overlay
        self.whited = set()          # overlay: paths this layer put a whiteout at
        self.chown = os.geteuid() == 0
        self.fds = {(): root_fd}     # directory fds by path tuple; () is dest
        self.created = set()         # paths this layer wrote, and their parents
        self.dir_times = []
        self.xattrs = 0
        self.stats = {"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "devices": 0,
                      "whiteouts": 0, "bytes": 0, "skipped": []}

    def close(self):
        for k, fd in self.fds.items():
            if k:
                os.close(fd)
        self.fds = {(): self.root_fd}

    def fail(self, member, reason):
        raise InvalidInput(f"layer {self.label}: member {member!r} {reason}; "
                           "refusing the image (it is malformed or hostile)")

    # path handling

    def parts(self, name, member, what=""):
        parts = tuple(p for p in name.split("/") if p and p != ".")
        if ".." in parts:
            self.fail(member, f"has a '..' component{what}")
        if len(name) > _MAX_PATH:
            self.fail(member, f"has a path longer than {_MAX_PATH} bytes{what}")
        return parts

    def dir(self, parts, member, create=False, strict=True, via="lies beneath"):
        """fd of the directory at `parts`, walked from the deepest cached ancestor one
        component at a time without following symlinks.  Missing: created if `create`,
        else None.  Crossing a symlink or a non-directory: refused (None if not strict)."""
        fd = self.fds.get(parts)
        if fd is not None:
            return fd
        i = len(parts) - 1
        while parts[:i] not in self.fds:
            i -= 1
        fd, owned = self.fds[parts[:i]], False   # owned: an uncached intermediate to close
        done = False
        try:
            for j in range(i, len(parts)):
                comp = parts[j]
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    nfd = self.implicit_dir(fd, comp, parts[:j + 1])
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not strict:
                        return None
                    kind = "non-directory"
                    if stat.S_ISLNK(os.stat(comp, dir_fd=fd, follow_symlinks=False).st_mode):
                        kind = "symlink"
                    self.fail(member, f"{via} the {kind} {'/'.join(parts[:j + 1])!r}")
                if owned:
                    os.close(fd)
                fd, owned = nfd, True
            done = True
        finally:
            if owned and not done:
                os.close(fd)
        self.fds[parts] = fd
        return fd

    def implicit_dir(self, pfd, comp, parts):
        os.mkdir(comp, 0o700, dir_fd=pfd)
        fd = os.open(comp, _DIR_FLAGS, dir_fd=pfd)
        os.fchmod(fd, 0o755)
        self.stats["dirs"] += 1
        return fd

    def forget(self, parts):
        """Close cached fds at or under a path that is about to disappear."""
        n = len(parts)
        for k in [k for k in self.fds if k and k[:n] == parts]:
            os.close(self.fds.pop(k))

    def remove(self, pfd, parts):
        """Remove whatever is at parts (parent fd pfd); never follows a symlink."""
        self.forget(parts)
        leaf = parts[-1]
        st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(leaf, dir_fd=pfd)   # fd-based: does not follow symlinks
        else:
            os.unlink(leaf, dir_fd=pfd)

    def mark(self, parts):
        """Record parts and its parents as written by this layer (opaque dirs keep them)."""
        while parts and parts not in self.created:
            self.created.add(parts)
            parts = parts[:-1]

    # members

    def apply(self, m, tf):
        if len(self.fds) > _FD_CACHE:
            self.close()
        try:
            self._apply(m, tf)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise          # a full disk: the caller knows which store it is and says so
            if e.errno in (errno.EIO, errno.EROFS):
                raise CtrunError(f"cannot write layer {self.label} into {self.dest}: "
                                 f"{e.strerror}; fix the store's file system and retry") from None
            self.fail(m.name, f"cannot be extracted: {e.strerror or e}")
        except (ValueError, OverflowError) as e:   # NUL in a pax name, a uid past 2**32...
            self.fail(m.name, f"has an invalid header field ({_one_line(e)})")
        except RecursionError:   # removing or pruning a tree thousands of levels deep
            self.fail(m.name, "removes a directory tree nested too deeply")

    def _apply(self, m, tf):
        name = m.name
        parts = self.parts(name, name)
        if not parts:
            if not m.isdir():
                self.fail(name, "would replace the root directory with a non-directory")
            self.meta(self.root_fd, m, is_dir=True)
            self.dir_times.append(((), m.mtime))
            return
        parent, leaf = parts[:-1], parts[-1]
        if leaf.startswith(".wh."):
            return self.whiteout(parent, leaf, name)
        if any(k.startswith("SCHILY.xattr.") or k.startswith("LIBARCHIVE.xattr.")
               for k in m.pax_headers):
            self.xattrs += 1
        if m.ischr() or m.isblk() or m.isfifo():
            if not self.trusted:
                kind = "fifo" if m.isfifo() else "device node"
                self.stats["skipped"].append(f"{name}: {kind} not created (image not trusted)")
                return
        elif not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            self.stats["skipped"].append(f"{name}: unsupported member type {m.type!r}")
            return
        pfd = self.dir(parent, name, create=True)
        if m.isreg():
            self.file(pfd, parts, m, tf)
        elif m.isdir():
            self.directory(pfd, parts, m)
        elif m.issym():
            self.symlink(pfd, parts, m)
        elif m.islnk():
            self.hardlink(pfd, parts, m)
        else:
            self.node(pfd, parts, m)
        self.mark(parts)

    def mode(self, m, is_dir=False):
        mode = m.mode & 0o7777
        if self.strip_setuid and not is_dir:
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode

    def meta(self, fd, m, is_dir=False):
        """Owner, then mode (chown clears setuid bits), then mtime, on an open fd."""
        if self.chown:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, self.mode(m, is_dir))
        if not is_dir:
            _utime(fd, m.mtime)

    def file(self, pfd, parts, m, tf):
        leaf = parts[-1]
        try:
            fd = os.open(leaf, _NEW_FILE, 0o600, dir_fd=pfd)
        except FileExistsError:
            self.remove(pfd, parts)
            fd = os.open(leaf, _NEW_FILE, 0o600, dir_fd=pfd)
        try:
            data = tf.extractfile(m)
            while True:
                b = data.read(_CHUNK)
                if not b:
                    break
                view = memoryview(b)
                while view:
                    view = view[os.write(fd, view):]
            self.meta(fd, m)
        finally:
            os.close(fd)
        self.stats["files"] += 1
        self.stats["bytes"] += m.size

    def directory(self, pfd, parts, m):
        leaf = parts[-1]
        try:
            os.mkdir(leaf, 0o700, dir_fd=pfd)
            self.stats["dirs"] += 1
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(leaf, dir_fd=pfd, follow_symlinks=False).st_mode):
                self.remove(pfd, parts)
                os.mkdir(leaf, 0o700, dir_fd=pfd)
                self.stats["dirs"] += 1
        fd = self.dir(parts, m.name)
        self.meta(fd, m, is_dir=True)
        if parts in self.whited:   # this layer deleted the lower one and made a new one
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        self.dir_times.append((parts, m.mtime))

    def symlink(self, pfd, parts, m):
        if not m.linkname:
            self.fail(m.name, "is a symlink with an empty target")
        leaf = parts[-1]
        try:
            os.symlink(m.linkname, leaf, dir_fd=pfd)
        except FileExistsError:
            self.remove(pfd, parts)
            os.symlink(m.linkname, leaf, dir_fd=pfd)
        if self.chown:
            os.chown(leaf, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        _utime(leaf, m.mtime, pfd)
        self.stats["symlinks"] += 1

    def hardlink(self, pfd, parts, m):
        name, target = m.name, m.linkname
        tparts = self.parts(target, name, f" in its hardlink target {target!r}")
        if not tparts or tparts[:len(parts)] == parts:
            self.fail(name, f"is a hardlink to {target!r}, which is the member itself "
                            "or lies inside it")
        tpfd = self.dir(tparts[:-1], name, via=f"is a hardlink to {target!r}, beneath")
        try:
            if tpfd is None:
                raise FileNotFoundError
            st = os.stat(tparts[-1], dir_fd=tpfd, follow_symlinks=False)
        except FileNotFoundError:
            self.fail(name, f"is a hardlink to {target!r}, which is not in the image")
        if not stat.S_ISREG(st.st_mode):
            self.fail(name, f"is a hardlink to {target!r}, which is not a regular file")
        leaf = parts[-1]
        try:
            os.link(tparts[-1], leaf, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            self.remove(pfd, parts)
            os.link(tparts[-1], leaf, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        self.stats["hardlinks"] += 1

    def node(self, pfd, parts, m):
        leaf = parts[-1]
        kind = stat.S_IFIFO if m.isfifo() else stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        dev = 0 if m.isfifo() else os.makedev(m.devmajor, m.devminor)
        try:
            os.mknod(leaf, kind | 0o600, dev, dir_fd=pfd)
        except FileExistsError:
            self.remove(pfd, parts)
            os.mknod(leaf, kind | 0o600, dev, dir_fd=pfd)
        # opened O_PATH so nothing (not even a device open) happens; fchmod/fchown on an
        # O_PATH fd are refused, so go through the fd's /proc link, which names this inode
        fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            proc = f"/proc/self/fd/{fd}"
            if self.chown:
                os.chown(proc, m.uid, m.gid)
            os.chmod(proc, self.mode(m))
            _utime(proc, m.mtime)
        finally:
            os.close(fd)
        self.stats["devices"] += 1

    def whiteout(self, parent, leaf, member):
        if self.overlay:
            return self.overlay_whiteout(parent, leaf, member)
        if leaf == _OPAQUE:
            fd = self.dir(parent, member)
            if fd is not None:
                self.prune(fd, parent, member)
            self.mark(parent)
            self.stats["whiteouts"] += 1
            return
        if leaf.startswith(".wh..wh."):
            self.stats["skipped"].append(f"{member}: aufs metadata not applied")
            return
        target = leaf[len(".wh."):]
        if target in ("", ".", ".."):
            self.fail(member, "is a whiteout of an invalid name")
        parts = parent + (target,)
        self.stats["whiteouts"] += 1
        if parts in self.created:    # whiteouts hide lower layers only, never their own
            return
        fd = self.dir(parent, member)
        if fd is not None:
            try:
                self.remove(fd, parts)
            except FileNotFoundError:
                pass

    def overlay_whiteout(self, parent, leaf, member):
        """Whiteouts as overlayfs markers in this layer's own directory."""
        if leaf.startswith(".wh..wh.") and leaf != _OPAQUE:
            self.stats["skipped"].append(f"{member}: aufs metadata not applied")
            return
        pfd = self.dir(parent, member, create=True)
        self.stats["whiteouts"] += 1
        if leaf == _OPAQUE:
            os.setxattr(pfd, OPAQUE_XATTR, b"y")
            self.mark(parent)
            return
        target = leaf[len(".wh."):]
        if target in ("", ".", ".."):
            self.fail(member, "is a whiteout of an invalid name")
        parts = parent + (target,)
        self.whited.add(parts)
        if parts in self.created:    # only lower layers are hidden: this layer's entry stays
            if parts in self.fds or stat.S_ISDIR(os.stat(target, dir_fd=pfd,
                                                         follow_symlinks=False).st_mode):
                os.setxattr(self.dir(parts, member), OPAQUE_XATTR, b"y")
            return
        try:
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
        except FileExistsError:   # a second whiteout of the same name
            pass

    def prune(self, fd, parts, member):
        """Opaque directory: remove everything under it that this layer did not write."""
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in entries:
            p = parts + (name,)
            if p not in self.created:
                self.remove(fd, p)
            elif is_dir:
                self.prune(self.dir(p, member), p, member)

    def finish(self):
        """Directory mtimes last, deepest first, since creating entries changes them."""
        for parts, mtime in reversed(self.dir_times):
            if len(self.fds) > _FD_CACHE:
                self.close()
            fd = self.dir(parts, "/".join(parts), strict=False)
            if fd is not None:
                try:
                    _utime(fd, mtime)
                except OSError:   # cosmetic: not worth failing an import for
                    pass
        if self.xattrs:
            self.stats["skipped"].append(f"extended attributes of {self.xattrs} members "
                                         "not applied")


def _utime(target, mtime, dir_fd=None):
    try:
        if dir_fd is None:
            os.utime(target, (mtime, mtime))
        else:
            os.utime(target, (mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)
    except (OverflowError, ValueError):   # absurd timestamps in hostile headers: keep "now"
        pass
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
