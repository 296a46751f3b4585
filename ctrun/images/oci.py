"""Reads OCI image layouts (a directory, or a tar of one) and `docker save` archives: picks
one image, checks every blob against its digest, and hands out the layers still packed.

Nothing is unpacked here: ctrun.images.extract applies each layer.  Blobs are read in place
(a directory through openat2 beneath it, a plain tar by member offset); only a compressed
outer archive is first copied, member by member, into a private temporary directory.
"""

import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import tarfile
import tempfile
import weakref
import zlib
from dataclasses import dataclass, field

from ..errors import HostUnsupported, InvalidInput, NotFound, quote

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}
CONFIG_TYPES = {"application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json"}
# layer media type -> how its blob is compressed
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": None,
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": None,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": None,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
TAR_TYPE = "application/vnd.oci.image.layer.v1.tar"
GZIP_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

MAX_JSON = 8 << 20       # manifests, indexes and configs are small; refuse a huge "JSON" blob
MAX_DEPTH = 4            # nested indexes followed before giving up (cycles)
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ": "xz", b"BZh": "bzip2"}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
         "i686": "386", "i386": "386"}
_CHUNK = 1 << 20


@dataclass
class Layer:
    digest: str                 # "sha256:..." of the blob as stored (what open() verifies)
    media_type: str
    size: int                   # bytes of the blob as stored
    compression: str | None     # None, "gzip" or "zstd"
    diff_id: str | None         # sha256 of the uncompressed tar, from the image config
    _opener: object = field(repr=False, compare=False, default=None)

    def open(self):
        """The blob's bytes as a BlobReader: use it in a `with` block (or call verify())."""
        return self._opener()


@dataclass
class Image:
    config: dict                # the whole image config (architecture, config, rootfs, ...)
    layers: list                # Layer, bottom first
    ref: str                    # the name it was chosen by, or its digest
    digest: str | None          # the manifest's digest (None for a docker save archive)
    config_digest: str | None   # None only for a docker save config with no content address


class BlobReader(io.RawIOBase):
    """A blob's bytes, hashed as they are read; a wrong size or digest raises InvalidInput.

    The check runs when the last byte is read.  A tar reader may stop before the end of its
    input (end-of-archive blocks, padding, the gzip trailer), so leaving a `with` block
    reads the rest and checks (also when the block raised); verify() does it explicitly.
    """

    def __init__(self, f, size, digest, what, diff_id=None):
        super().__init__()
        self._f, self._size, self._left, self._what = f, size, size, what
        self._want = digest
        self._hash = hashlib.new(digest.partition(":")[0]) if digest else None
        self._diff_id = diff_id     # checked on the gunzipped bytes (docker save, gzip layer)
        self._gz = zlib.decompressobj(wbits=31) if diff_id else None
        self._gz_hash = hashlib.sha256() if diff_id else None
        self._checked = False
        self.name = digest or what      # how ctrun.images.extract names it in messages

    def readable(self):
        return True

    def readinto(self, b):
        if self._left == 0:
            self._check()
            return 0
        mv = memoryview(b).cast("B")[:min(len(b), self._left)]
        n = self._f.readinto(mv)
        if not n:
            raise InvalidInput(f"{self._what} is truncated ({self._size - self._left} of "
                               f"{self._size} bytes); get a complete copy of the image")
        if self._hash:
            self._hash.update(mv[:n])
        if self._gz:
            self._gunzip(bytes(mv[:n]))
        self._left -= n
        if self._left == 0:
            self._check()
        return n

    def readall(self):
        out, buf = [], bytearray(_CHUNK)
        while n := self.readinto(buf):
            out.append(bytes(buf[:n]))
        return b"".join(out)

    def verify(self):
        """Read whatever the consumer left and check size and digest."""
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass

    def __exit__(self, exc_type, exc, tb):
        # On the consumer's own error (say, gzip choking on a flipped byte) the digest is
        # still checked: "does not match its digest" is the true diagnosis when it fails.
        try:
            if not self.closed and not self._checked and (
                    exc_type is None or issubclass(exc_type, Exception)):
                try:
                    self.verify()
                except InvalidInput as mine:
                    if exc is None:
                        raise
                    raise mine from exc
        finally:
            self.close()

    def close(self):
        if not self.closed:
            self._f.close()
        super().close()

    def _gunzip(self, data):
        try:
            while data:
                self._gz_hash.update(self._gz.decompress(data))
                data = b""
                if self._gz.eof and self._gz.unused_data:     # another gzip member follows
                    data = self._gz.unused_data
                    self._gz = zlib.decompressobj(wbits=31)
        except zlib.error as e:
            raise InvalidInput(f"{self._what} is not valid gzip ({e}); "
                               "get a fresh copy of the image") from None

    def _check(self):
        if self._checked:
            return
        self._checked = True
        if self._hash:
            got = f"{self._hash.name}:{self._hash.hexdigest()}"
            if got != self._want:
                raise InvalidInput(f"{self._what} does not match its digest (the bytes hash to "
                                   f"{got}); the image is corrupt or was tampered with, "
                                   "get a fresh copy")
        if self._gz:
            got = "sha256:" + self._gz_hash.hexdigest()
            if not self._gz.eof or got != self._diff_id:
                raise InvalidInput(f"{self._what} does not match its diff_id {self._diff_id} "
                                   f"(it unpacks to {got}); the image is corrupt or was "
                                   "tampered with, get a fresh copy")


# -- where the blobs are: a directory or a plain tar -------------------------------------

def _clean(name, what):
    """A member or file name as a plain relative path ("./a/b/" -> "a/b"), or InvalidInput."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise InvalidInput(f"{what} names {name!r}, which is not a path inside the archive; "
                           "the image is malformed")
    return "/".join(parts)


def _link_target(base, link, what):
    """Where a link member at directory base points, as a clean name inside the archive."""
    parts = base.split("/") if base else []
    for p in link.split("/"):
        if p == "..":
            if not parts:
                break
            parts.pop()
        elif p not in ("", "."):
            parts.append(p)
    else:
        if parts and not link.startswith("/"):
            return "/".join(parts)
    raise InvalidInput(f"{what} has a link to {link!r}, outside the archive; "
                       "the image is malformed")


class _Dir:
    """Files below a directory, opened so that no name or symlink leads outside it."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.close = weakref.finalize(self, os.close, self.fd)

    def open(self, name):
        from .. import libc
        flags = os.O_RDONLY | os.O_NONBLOCK       # a planted FIFO must not hang us
        try:
            fd = libc.openat2(self.fd, name, flags,
                              libc.RESOLVE_BENEATH | libc.RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno == errno.ENOSYS:   # before Linux 5.6: names are clean, no symlinks
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            elif e.errno in (errno.EXDEV, errno.ELOOP):     # a symlink leading outside
                raise InvalidInput(f"{name} in {self.path} is a symlink leading outside the "
                                   "image; the image is malformed") from None
            else:
                raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InvalidInput(f"{name} in {self.path} is not a regular file; "
                               "the image is malformed")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0), st.st_size


class _Tar:
    """Members of an uncompressed tar, read by offset: one scan of the headers, no copy."""

    def __init__(self, path):
        self.path = path
        try:
            with tarfile.open(path, "r:") as tf:
                members = tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise InvalidInput(f"{path} is truncated or not a tar archive ({e}); give a "
                               "complete OCI layout or docker save archive") from None
        self.members = {}
        for m in members:               # a later member of the same name replaces an earlier
            try:
                self.members[_clean(m.name, path)] = m
            except InvalidInput:
                pass                    # never looked up: only clean names are asked for

    def _resolve(self, name):
        for _ in range(8):
            m = self.members.get(name)
            if m is None:
                raise FileNotFoundError(name)
            if m.issym() or m.islnk():   # a symlink is relative to its directory
                base = os.path.dirname(name) if m.issym() else ""
                name = _link_target(base, m.linkname, self.path)
            elif m.isreg() and not m.issparse():
                return m
            else:
                raise InvalidInput(f"{name} in {self.path} is not a regular file; "
                                   "the image is malformed")
        raise InvalidInput(f"{name} in {self.path} is a chain of links; the image is malformed")

    def open(self, name):
        m = self._resolve(name)
        f = open(self.path, "rb", buffering=0)
        f.seek(m.offset_data)
        return f, m.size

    def close(self):
        pass


def _unpack(path, kind, work_dir):
    """Copy the regular members of a compressed tar into a new directory under work_dir.

    Names are cleaned and parents made here; links become hard links to members already
    copied, so the directory holds no symlink at all."""
    tmp = tempfile.mkdtemp(prefix=".ctrun-oci-", dir=work_dir)
    proc = None
    try:
        if kind == "zstd":
            import subprocess
            if not shutil.which("zstd"):
                raise HostUnsupported(f"{path} is zstd-compressed and the zstd tool is not "
                                      "installed; run: apt-get install zstd")
            proc = subprocess.Popen(["zstd", "-dcq", "--", path], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
            tf = tarfile.open(fileobj=proc.stdout, mode="r|")
        else:
            tf = tarfile.open(path, {"gzip": "r|gz", "xz": "r|xz", "bzip2": "r|bz2"}[kind])
        links = {}
        with tf:
            for m in tf:
                try:
                    name = _clean(m.name, path)
                except InvalidInput:
                    continue
                if m.isreg():
                    links.pop(name, None)
                    dest = os.path.join(tmp, name)
                    try:
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        if os.path.isdir(dest):
                            raise IsADirectoryError(dest)
                        src = tf.extractfile(m)
                        with open(dest, "wb") as out:
                            shutil.copyfileobj(src, out, _CHUNK)
                    except (NotADirectoryError, IsADirectoryError, FileExistsError):
                        raise InvalidInput(f"{path} has clashing members at {name!r}; "
                                           "the image is malformed") from None
                elif m.issym() or m.islnk():
                    base = os.path.dirname(name) if m.issym() else ""
                    try:
                        links[name] = _link_target(base, m.linkname, path)
                    except InvalidInput:
                        pass
        if proc and proc.wait() != 0:
            raise tarfile.ReadError("zstd could not decompress it")
        for name, target in links.items():
            for _ in range(8):
                target = links.get(target, target)
            src, dest = os.path.join(tmp, target), os.path.join(tmp, name)
            if os.path.isfile(src) and not os.path.islink(src):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if os.path.isfile(dest):
                    os.unlink(dest)
                os.link(src, dest)
        return tmp
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno:    # the disk, not the archive (ENOSPC...)
            raise
        raise InvalidInput(f"{path} is truncated or corrupt ({e}); get a complete copy "
                           "of the image archive") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the source ----------------------------------------------------------------------------

def open_source(path, work_dir=None):
    """An OCI layout directory, an OCI layout tar (plain or compressed), or a docker save
    archive, ready for select().  A compressed archive is copied into a temporary directory
    under work_dir (default: the system's), removed by close() or when the Source is freed."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            backend, tmp = _Dir(path), None
        elif not stat.S_ISREG(mode):
            raise InvalidInput(f"{path} is not a regular file or a directory; give an OCI "
                               "layout or a docker save archive")
        else:
            with open(path, "rb") as f:
                head = f.read(6)
            kind = next((k for m, k in _MAGIC.items() if head.startswith(m)), None)
            if kind:
                tmp = _unpack(path, kind, work_dir)
                try:
                    backend = _Dir(tmp)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            else:
                backend, tmp = _Tar(path), None
    except FileNotFoundError:
        raise NotFound(f"{quote(path)} does not exist; give an OCI layout or a docker save "
                       "archive") from None
    except PermissionError as e:
        raise InvalidInput(f"cannot read {path} ({e.strerror})") from None
    src = Source(path, backend, tmp)
    try:
        src.kind = src._detect()
    except BaseException:
        src.close()
        raise
    return src


class Source:
    """One image archive; select() picks an image and checks its manifest and config."""

    def __init__(self, path, backend, tmp):
        self.path, self._b, self.kind = path, backend, None
        self._cleanup = weakref.finalize(self, shutil.rmtree, tmp, True) if tmp else None

    def close(self):
        self._b.close()
        if self._cleanup:
            self._cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _exists(self, name):
        try:
            f, _ = self._b.open(name)
        except (FileNotFoundError, NotADirectoryError):
            return False
        f.close()
        return True

    def _detect(self):
        if self._exists("oci-layout") and self._exists("index.json"):
            return "oci"
        if self._exists("manifest.json"):
            return "docker"
        raise InvalidInput(f"{self.path} is neither an OCI image layout (no oci-layout and "
                           "index.json) nor a docker save archive (no manifest.json); import "
                           "a root file system tarball as a plain tarball instead")

    # reading

    def _open(self, name, what):
        try:
            return self._b.open(name)
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidInput(f"{what} is missing from {self.path} (no {name}); the image "
                               "is incomplete, export it again with all its blobs") from None

    def _read_json(self, name, what, digest=None, size=None):
        """A small JSON file (a blob when digest is given, then size and digest checked)."""
        f, have = self._open(name, what)
        if size is not None and have != size:
            f.close()
            raise InvalidInput(f"{what} in {self.path} has {have} bytes but its descriptor "
                               f"says {size}; the image is corrupt or was tampered with")
        if have > MAX_JSON:
            f.close()
            raise InvalidInput(f"{what} in {self.path} is {have} bytes, too large for "
                               "metadata; the image is malformed")
        with BlobReader(f, have, digest, what) as r:
            data = r.readall()
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise InvalidInput(f"{what} in {self.path} is not valid JSON ({e}); "
                               "the image is malformed") from None
        return doc

    def _blob(self, desc, what):
        """(name, digest, size) of a descriptor, checked for shape."""
        if not isinstance(desc, dict):
            raise InvalidInput(f"{what} in {self.path} is not a descriptor object; "
                               "the image is malformed")
        digest, size = desc.get("digest"), desc.get("size")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise InvalidInput(f"{what} in {self.path} has digest {digest!r}; only sha256 "
                               "and sha512 digests are supported")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{what} in {self.path} has size {size!r}; the image is "
                               "malformed")
        return "blobs/" + digest.replace(":", "/", 1), digest, size

    def _json_blob(self, desc, what):
        name, digest, size = self._blob(desc, what)
        doc = self._read_json(name, f"{what} {digest}", digest, size)
        if not isinstance(doc, dict):
            raise InvalidInput(f"{what} {digest} in {self.path} is not a JSON object; "
                               "the image is malformed")
        return doc

    # choosing

    def choices(self):
        """The names (or digests) of the images at the top of the archive."""
        if self.kind == "docker":
            return [_docker_name(e) for e in self._docker_entries()]
        return list(dict.fromkeys(_desc_name(d) for d in self._index_entries()))

    def select(self, ref=None, platform=None):
        """The image named ref (a tag, a ref.name annotation, a repo:tag, or a digest), or
        the only one; from a multi-platform index, the entry for platform ("linux/arm64",
        default: this host's)."""
        if self.kind == "docker":
            return self._select_docker(ref)
        return self._select_oci(ref, _platform(platform))

    # OCI layouts

    def _index_entries(self):
        layout = self._read_json("oci-layout", "the oci-layout file")
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise InvalidInput(f"{self.path} has OCI layout version {version!r}; only 1.x "
                               "layouts are supported")
        index = self._read_json("index.json", "index.json")
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list) or not entries:
            raise InvalidInput(f"index.json in {self.path} lists no images; the layout is "
                               "empty or malformed")
        return [e for e in entries if isinstance(e, dict)]

    def _select_oci(self, ref, plat):
        entries = self._index_entries()
        names = list(dict.fromkeys(_desc_name(d) for d in entries))
        chosen = entries
        if ref is not None:
            chosen = [d for d in entries if ref in _desc_names(d)]
            if not chosen and not _DIGEST.fullmatch(ref):
                want = _norm_tag(ref)            # busybox against docker.io/library/busybox:latest
                chosen = [d for d in entries if want in {_norm_tag(n) for n in _desc_names(d)}]
            if not chosen and ":" in ref.rpartition("/")[2]:
                tag = ref.rpartition(":")[2]     # "repo:tag" against a bare ref.name "tag"
                chosen = [d for d in entries if tag in _desc_names(d)]
            if not chosen:
                raise NotFound(f"{self.path} has no image {ref!r}; it has: {', '.join(names)}")
        if len(chosen) > 1:       # one name for several platforms is one image, else ambiguous
            if (len({_desc_name(d) for d in chosen}) == 1
                    and all(isinstance(d.get("platform"), dict) for d in chosen)):
                chosen = [_pick_platform(chosen, plat, self.path)]
            else:
                raise InvalidInput(f"{self.path} holds {len(names)} images; choose one by "
                                   f"name: {', '.join(names)}")
        desc = chosen[0]
        return self._resolve(desc, plat, ref or _desc_name(desc), 0)

    def _resolve(self, desc, plat, ref, depth, what="manifest"):
        doc = self._json_blob(desc, what)
        mt = desc.get("mediaType") or doc.get("mediaType")
        if doc.get("mediaType") and mt != doc["mediaType"]:
            raise InvalidInput(f"{what} {desc['digest']} in {self.path} is {doc['mediaType']!r}"
                               f" but its descriptor says {mt!r}; the image is malformed")
        if not mt:                                # old indexes omit it: judge by shape
            mt = ("application/vnd.oci.image.index.v1+json" if "manifests" in doc else
                  "application/vnd.oci.image.manifest.v1+json" if "layers" in doc else None)
        if mt in INDEX_TYPES:
            if depth >= MAX_DEPTH:
                raise InvalidInput(f"{self.path} nests image indexes too deeply; "
                                   "the image is malformed")
            entries = [e for e in doc.get("manifests") or [] if isinstance(e, dict)]
            if not entries:
                raise InvalidInput(f"image index {desc['digest']} in {self.path} lists no "
                                   "images; the image is malformed")
            child = _pick_platform(entries, plat, self.path)
            return self._resolve(child, plat, ref, depth + 1)
        if mt not in MANIFEST_TYPES:
            raise InvalidInput(f"{what} {desc['digest']} in {self.path} has media type {mt!r},"
                               " which is not a container image; convert it with skopeo to an "
                               "OCI or docker v2 image")
        cdesc = doc.get("config")
        cmt = cdesc.get("mediaType") if isinstance(cdesc, dict) else None
        if cmt not in CONFIG_TYPES:
            raise InvalidInput(f"the config of {ref} in {self.path} has media type {cmt!r}, "
                               "which is not a container image config (an OCI artifact?)")
        config = self._json_blob(cdesc, "image config")
        ldescs = doc.get("layers")
        diff_ids = _diff_ids(config, self.path, ldescs,
                             f"manifest {desc['digest']} in {self.path} lists", "", "image")
        layers = []
        for i, (ld, diff_id) in enumerate(zip(ldescs, diff_ids), 1):
            lwhat = f"layer {i} of {ref}"
            name, digest, size = self._blob(ld, lwhat)
            lmt = ld.get("mediaType")
            if lmt not in LAYER_TYPES:
                raise InvalidInput(f"{lwhat} in {self.path} has media type {lmt!r}, which "
                                   "ctrun cannot unpack; convert the image with skopeo")
            f, have = self._open(name, f"layer {digest}")
            f.close()
            if have != size:
                raise InvalidInput(f"layer {digest} in {self.path} has {have} bytes but its "
                                   f"descriptor says {size}; the image is corrupt or was "
                                   "tampered with")
            layers.append(Layer(digest, lmt, size, LAYER_TYPES[lmt], diff_id,
                                self._opener(name, digest, size)))
        return Image(config, layers, ref, desc["digest"], cdesc["digest"])

    def _opener(self, name, digest, size, diff_id=None):
        what = f"layer {digest}"

        def opener():
            f, have = self._open(name, what)
            if have != size:
                f.close()
                raise InvalidInput(f"{what} in {self.path} changed size since it was checked;"
                                   " import it again")
            return BlobReader(f, size, digest, f"{what} in {self.path}", diff_id)
        return opener

    # docker save archives

    def _docker_entries(self):
        doc = self._read_json("manifest.json", "manifest.json")
        if not isinstance(doc, list) or not doc or not all(isinstance(e, dict) for e in doc):
            raise InvalidInput(f"manifest.json in {self.path} is not a list of images; "
                               "the archive is not a docker save archive")
        return doc

    def _select_docker(self, ref):
        entries = self._docker_entries()
        names = [_docker_name(e) for e in entries]
        chosen = entries
        if ref is not None:
            want = _norm_tag(ref)
            chosen = [e for e in entries
                      if want in {_norm_tag(t) for t in e.get("RepoTags") or []
                                  if isinstance(t, str)}
                      or _config_hex(e.get("Config")) in (ref.partition(":")[2], ref)]
            if not chosen:
                raise NotFound(f"{self.path} has no image {ref!r}; it has: {', '.join(names)}")
        if len(chosen) > 1:
            raise InvalidInput(f"{self.path} holds {len(chosen)} images; choose one by name: "
                               f"{', '.join(names)}")
        entry = chosen[0]
        ref = ref or _docker_name(entry)
        cname = entry.get("Config")
        if not isinstance(cname, str):
            raise InvalidInput(f"manifest.json in {self.path} names no config for {ref}; "
                               "the archive is malformed")
        cname = _clean(cname, "manifest.json")
        chex = _config_hex(cname)
        cdigest = "sha256:" + chex if chex else None
        config = self._read_json(cname, f"image config {cname}", cdigest)
        if not isinstance(config, dict):
            raise InvalidInput(f"image config {cname} in {self.path} is not a JSON object; "
                               "the archive is malformed")
        lnames = entry.get("Layers")
        diff_ids = _diff_ids(config, self.path, lnames, f"manifest.json in {self.path} lists",
                             f" for {ref}", "archive")
        layers = []
        for i, (lname, diff_id) in enumerate(zip(lnames, diff_ids), 1):
            if not isinstance(lname, str):
                raise InvalidInput(f"manifest.json in {self.path} has a non-text layer name; "
                                   "the archive is malformed")
            lname = _clean(lname, "manifest.json")
            f, size = self._open(lname, f"layer {i} ({lname})")
            with f:
                head = f.read(6)
            comp = next((k for m, k in _MAGIC.items() if head.startswith(m)), None)
            if comp not in (None, "gzip"):
                raise InvalidInput(f"layer {lname} in {self.path} is {comp}-compressed, which a "
                                   "docker save archive never holds; the archive is malformed")
            named = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", lname)
            if comp is None:      # the blob is the layer tar: its digest is its diff_id
                digest, check_diff = diff_id, None
                if named and "sha256:" + named.group(1) != diff_id:
                    raise InvalidInput(f"layer {lname} in {self.path} is named for another "
                                       f"digest than its diff_id {diff_id}; the archive is "
                                       "malformed")
            else:
                digest = "sha256:" + named.group(1) if named else self._hash_file(lname)
                check_diff = diff_id
            layers.append(Layer(digest, TAR_TYPE if comp is None else GZIP_TYPE, size, comp,
                                diff_id, self._opener(lname, digest, size, check_diff)))
        return Image(config, layers, ref, None, cdigest)

    def _hash_file(self, name):
        f, left = self._open(name, name)
        h = hashlib.sha256()
        with f:
            while left and (chunk := f.read(min(left, _CHUNK))):
                h.update(chunk)
                left -= len(chunk)
        return "sha256:" + h.hexdigest()


# -- helpers -------------------------------------------------------------------------------

def _desc_names(d):
    ann = d.get("annotations") if isinstance(d.get("annotations"), dict) else {}
    return {v for v in (ann.get(REF_NAME), ann.get(CONTAINERD_NAME), d.get("digest"))
            if isinstance(v, str)}


def _desc_name(d, default="?"):
    ann = d.get("annotations") if isinstance(d.get("annotations"), dict) else {}
    name = ann.get(REF_NAME) or ann.get(CONTAINERD_NAME)
    if isinstance(name, str):
        return name
    return d.get("digest") if isinstance(d.get("digest"), str) else default


def _docker_name(e):
    tags = [t for t in e.get("RepoTags") or [] if isinstance(t, str)]
    return tags[0] if tags else f"sha256:{_config_hex(e.get('Config')) or '?'}"


def _config_hex(name):
    m = re.fullmatch(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", name or "") \
        if isinstance(name, str) else None
    return m.group(1) if m else None


def _norm_tag(ref):
    """docker.io/library/busybox:latest, busybox:latest and busybox compare equal."""
    ref = ref.split("@", 1)[0]
    if ":" not in ref.rpartition("/")[2]:
        ref += ":latest"
    for prefix in ("docker.io/", "index.docker.io/", "library/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    return ref


def _diff_ids(config, path, layers, where, which, thing):
    """The config's rootfs.diff_ids, checked to pair one to one with the manifest's
    `layers` (named in errors as "<where> N layers<which> ...; the <thing> is malformed")."""
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if (not isinstance(ids, list)
            or not all(isinstance(i, str) and _DIGEST.fullmatch(i) for i in ids)):
        raise InvalidInput(f"the image config in {path} has no valid rootfs.diff_ids; "
                           "the image is malformed")
    if not isinstance(layers, list) or len(layers) != len(ids):
        raise InvalidInput(f"{where} {len(layers) if isinstance(layers, list) else 'no'} "
                           f"layers{which} but its config has {len(ids)} diff_ids; the "
                           f"{thing} is malformed")
    return ids


def host_platform():
    """("linux", arch, variant) of this host in OCI terms (x86_64 -> amd64, ...)."""
    machine = os.uname().machine
    arch = _ARCH.get(machine, machine)
    variant = {"aarch64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine)
    return ("linux", arch, variant)


def _platform(text):
    if text is None:
        return host_platform()
    parts = text.split("/")
    if len(parts) == 1:
        parts = ["linux"] + parts
    if len(parts) > 3 or not all(parts):
        raise InvalidInput(f"bad platform {text!r}; use os/arch[/variant], e.g. linux/arm64")
    os_, arch = parts[0], _ARCH.get(parts[1], parts[1])
    return (os_, arch, parts[2] if len(parts) == 3 else None)


def _plat_of(d):
    p = d.get("platform") if isinstance(d.get("platform"), dict) else {}
    return (p.get("os"), p.get("architecture"), p.get("variant"))


def _plat_text(p):
    return "/".join(x for x in p if x)


def _pick_platform(entries, plat, path):
    """The entry for platform plat; attestation manifests (platform unknown) are skipped."""
    usable = [d for d in entries if _plat_of(d)[1] != "unknown"]
    match = [d for d in usable if _plat_of(d)[:2] == plat[:2]]
    if len(match) > 1 and plat[2]:
        exact = [d for d in match if (_plat_of(d)[2] or ("v8" if plat[1] == "arm64" else None))
                 == plat[2]]
        match = exact or match
    if match:
        return match[0]
    if len(usable) == 1 and not any(_plat_of(usable[0])):
        return usable[0]                       # a one-entry index that names no platform
    have = sorted({_plat_text(_plat_of(d)) or "unknown" for d in usable})
    raise InvalidInput(f"{path} has no {_plat_text(plat[:2])} image; it has: {', '.join(have)}"
                       "; choose one with a platform such as " + (have[0] if have else
                                                                 "linux/amd64"))


def image_defaults(config):
    """The container defaults an image config asks for, in image.json's shape: cmd (Entrypoint
    then Cmd), env, workdir, user, exposed_ports, stop_signal, and notes for the user
    (a user given by name must be resolved against the image's /etc/passwd: resolve_user)."""
    c = config.get("config") if isinstance(config.get("config"), dict) else (
        {} if "rootfs" in config or "config" in config else config)
    notes = []

    def strings(key):
        v = c.get(key)
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InvalidInput(f"the image config's {key} is {v!r}, not a list of strings; "
                               "the image is malformed")
        return v

    env = []
    for item in strings("Env"):
        if "=" in item and not item.startswith("="):
            env.append(item)
        else:
            notes.append(f"ignored environment entry {item!r} without a name=value form")
    user = c.get("User") or "0:0"
    if not isinstance(user, str):
        raise InvalidInput(f"the image config's User is {user!r}; the image is malformed")
    if not all(p.isdigit() for p in user.split(":")):
        notes.append(f"the image runs as user {user!r}, a name to look up in its /etc/passwd")
    elif ":" not in user:
        notes.append(f"the image runs as uid {user} with no group; its primary group comes "
                     "from its /etc/passwd")
    workdir = c.get("WorkingDir") or "/"
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        notes.append(f"working directory {workdir!r} is not absolute; using /")
        workdir = "/"
    ports = c.get("ExposedPorts") or {}
    ports = sorted(ports) if isinstance(ports, dict) else []
    stop = c.get("StopSignal") or "SIGTERM"
    stop = _signal_name(stop) if isinstance(stop, (str, int)) else None
    if stop is None:
        notes.append(f"unknown stop signal {c.get('StopSignal')!r}; using SIGTERM")
        stop = "SIGTERM"
    return {"cmd": strings("Entrypoint") + strings("Cmd"), "env": env, "workdir": workdir,
            "user": user, "exposed_ports": ports, "stop_signal": stop, "notes": notes}


def _signal_name(sig):
    s = str(sig).upper()
    if s.isdigit():
        try:
            return signal.Signals(int(s)).name
        except ValueError:
            return None
    s = s if s.startswith("SIG") else "SIG" + s
    if s.startswith("SIGRTMIN+") and s[9:].isdigit() or s in signal.Signals.__members__:
        return s
    return None


def resolve_user(user, passwd_text, group_text=""):
    """"uid:gid" for an image's User ("name", "uid", "name:group", "uid:gid"), looked up in
    the text of the image's /etc/passwd and /etc/group; InvalidInput if a name is unknown."""
    def table(text):
        rows = {}
        for line in text.splitlines():
            f = line.split(":")
            if len(f) >= 4 and f[2].isdigit() and f[0] not in rows:
                rows[f[0]] = f
        return rows

    users, groups = table(passwd_text), table(group_text)
    u, _, g = (user or "0").partition(":")
    if u.isdigit():
        uid = u
        primary = next((f[3] for f in users.values() if f[2] == u), "0")
    elif u in users:
        uid, primary = users[u][2], users[u][3]
    else:
        raise InvalidInput(f"the image's user {u!r} is not in its /etc/passwd; "
                           "pass a numeric --user")
    if not g:
        gid = primary if primary.isdigit() else "0"
    elif g.isdigit():
        gid = g
    elif g in groups:
        gid = groups[g][2]
    else:
        raise InvalidInput(f"the image's group {g!r} is not in its /etc/group; "
                           "pass a numeric --user uid:gid")
    return f"{uid}:{gid}"
