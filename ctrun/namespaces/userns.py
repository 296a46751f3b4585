"""User namespaces: one private host id range per container, and a root file system whose
owners are shifted into that range.

Container root (uid 0) becomes host uid BASE, 65536 ids per container, taken from the
first free slot of ctrun's pool (or of root's /etc/subuid entry when the host has one).
The image is read-only and owned by host root, so a container in a user namespace gets
its own lower layer: a copy of the image (its layers merged) with every owner moved up by BASE.  That costs a
copy per container (fine for small images; an idmapped mount of the image would avoid it
and is the planned improvement); in exchange the image stays shared and untouched.
"""

import errno
import os
import stat

from ..errors import Conflict

SIZE = 65536
DEFAULT_POOL = (1 << 20, 1 << 16)  # start, how many ranges: well above regular users' ids


def pool():
    """(start, count) of ranges, from root's /etc/subuid entry or ctrun's default."""
    try:
        with open("/etc/subuid") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in ("root", "0") and int(parts[2]) >= SIZE:
                    return int(parts[1]), int(parts[2]) // SIZE
    except (OSError, ValueError):
        pass
    return DEFAULT_POOL


def allocate(used_bases):
    start, count = pool()
    used = set(used_bases)
    for i in range(count):
        base = start + i * SIZE
        if base not in used:
            return base
    raise Conflict("no free user-namespace id range is left; destroy unused --userns "
                   "containers or enlarge root's range in /etc/subuid")


def write_maps(pid, base):
    """From the parent (host root): map container 0..65535 to host base..base+65535."""
    for kind in ("gid_map", "uid_map"):
        with open(f"/proc/{pid}/{kind}", "w") as f:
            f.write(f"0 {base} {SIZE}\n")


def shifted_copy(src, dst, base, scratch=None):
    """Copy the tree at src to dst (which must not exist) with every uid/gid moved by base.
    src may be an image's layers (ctrun.images.layers.View): their merged view is copied,
    mounted in a private mount namespace under scratch."""
    if hasattr(src, "dirs"):
        from ..images import layers
        return layers.merged(src.dirs, lambda m: shifted_copy(m, dst, base), scratch)
    os.mkdir(dst)
    _copy_dir(src, dst, base)
    st = os.lstat(src)
    _own(dst, st, base)


def _own(path, st, base, follow=False):
    if st.st_uid + base >= base + SIZE or st.st_gid >= SIZE:
        uid, gid = base + SIZE - 2, base + SIZE - 2  # unmappable owners become nobody-ish
    else:
        uid, gid = st.st_uid + base, st.st_gid + base
    os.lchown(path, uid, gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))  # chown cleared setuid/setgid bits


def _copy_dir(src, dst, base):
    with os.scandir(src) as it:
        for e in it:
            s, d = e.path, os.path.join(dst, e.name)
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(d)
                _copy_dir(s, d, base)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISREG(mode):
                _copy_file(s, d)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                os.mknod(d, mode, st.st_rdev)
            else:
                continue  # sockets: nothing to copy
            _own(d, st, base)


def _copy_file(src, dst):
    fi = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fi).st_size
            ranged = True
            while size > 0:
                try:
                    n = os.copy_file_range(fi, fo, size) if ranged else \
                        os.sendfile(fo, fi, None, size)
                except OSError as e:
                    # between file systems (an image's merged overlay view to the store)
                    # copy_file_range is refused: sendfile copies in the kernel too
                    if not ranged or e.errno not in (errno.EXDEV, errno.EINVAL,
                                                     errno.EOPNOTSUPP):
                        raise
                    ranged = False
                    continue
                if n == 0:
                    break
                size -= n
        finally:
            os.close(fo)
    finally:
        os.close(fi)
