"""Resolve paths inside a container's root file system without ever leaving it.

Everything below the root is hostile: the image or a running container can plant symlinks
(``/etc/hosts -> /host/etc/shadow``, ``/data -> ../../../../etc``) to make the runtime
create, open or mount something on the host.  So nothing here resolves a path string
through the host's view: every lookup goes through openat2(2) with
RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS on a descriptor of the root, so symlinks and ".."
are resolved as if the root were "/" and /proc magic links are refused.  New entries are
created one component at a time relative to a descriptor of an already resolved parent.
Callers mount on the returned descriptor through ``fd_path(fd)`` (/proc/self/fd/N).

API: every function takes ``root``, either an int (an O_PATH|O_DIRECTORY descriptor of the
root, borrowed, never closed) or a path string (a trusted host path, opened and closed
here).  ``path`` is an in-container path; absolute or relative, both are taken from the
root.  Returned descriptors are O_CLOEXEC and owned by the caller.  Needs Linux >= 5.6.
"""

import errno
import os
import stat

from .. import libc
from ..errors import CommandNotFound, HostUnsupported, InvalidInput

_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_DIR = os.O_PATH | os.O_DIRECTORY
_MAX_HOPS = 40  # symlinks we expand ourselves (the kernel's own limit is 40 too)
# what execvp uses when PATH is unset, with the sbin directories a root init needs
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# resolution failures that mean "this path is bad", as opposed to I/O or permission trouble
_BAD_PATH = {
    errno.ELOOP: "too many levels of symbolic links, a symlink loop or a /proc magic link",
    errno.EXDEV: "it would leave the container root",
    errno.ENOTDIR: "a component is not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENAMETOOLONG: "the name is too long",
}


def fd_path(fd):
    """The /proc path through which mount(2) and friends reach the object behind ``fd``."""
    return "/proc/self/fd/%d" % fd


class _Rooted:
    """Borrow an int root descriptor, or open (and later close) a root given as a path."""

    __slots__ = ("root", "fd")

    def __init__(self, root):
        self.root = root

    def __enter__(self):
        if isinstance(self.root, int):
            self.fd = None
            return self.root
        self.fd = os.open(self.root, _DIR | os.O_CLOEXEC)
        return self.fd

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def _openat2(rfd, path, flags, mode=0):
    """openat2 in root, with kernel errors turned into ours; ENOENT stays FileNotFoundError."""
    for _ in range(16):
        try:
            return libc.openat2(rfd, path or ".", flags, _RESOLVE, mode)
        except BlockingIOError:
            continue  # EAGAIN: a rename or mount raced the lookup; the kernel asks to retry
        except OSError as e:
            if e.errno == errno.ENOSYS:
                raise HostUnsupported("openat2 is missing: resolving paths inside a container "
                                      "safely needs linux 5.6 or newer; upgrade the kernel"
                                      ) from None
            if e.errno in _BAD_PATH:
                raise InvalidInput(f"cannot resolve '{path}' inside the container root: "
                                   f"{_BAD_PATH[e.errno]}; fix the path or the image's symlinks"
                                   ) from None
            raise
    raise InvalidInput(f"cannot resolve '{path}' inside the container root: it keeps changing "
                       "under concurrent renames or mounts; retry when the container is quiet")


def open_in_root(root, path, flags=os.O_PATH, mode=0o644):
    """Open ``path`` resolved inside ``root``; return a new descriptor.

    A final symlink is followed inside the root unless ``flags`` has O_NOFOLLOW.  ``mode``
    only matters with O_CREAT.  Raises InvalidInput for loops, magic links and non-directory
    components; FileNotFoundError when something along the path is missing.
    """
    with _Rooted(root) as rfd:
        return _openat2(rfd, os.fspath(path), flags,
                        mode if _creates(flags) else 0)


def _creates(flags):
    # O_TMPFILE includes the O_DIRECTORY bit: test it whole, or a plain O_DIRECTORY open
    # would pass a mode and openat2 would refuse it with EINVAL
    return bool(flags & os.O_CREAT) or (flags & os.O_TMPFILE) == os.O_TMPFILE


def _parts(path):
    return [p for p in os.fspath(path).split("/") if p and p != "."]


def _join(parts):
    return "/" + "/".join(parts)


def _readlink(name, dir_fd):
    """The target of ``name`` in ``dir_fd`` if it is a symlink, else None."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise


def _through_link(parent_parts, target, rest, hops, path):
    """The path that continues through a dangling symlink found in ``parent_parts``.

    Joining the link's target to the lexical path of its directory is exact: the kernel
    resolves that directory again, then the target from it, with physical "..", which is
    what following the link does.  The result is again only resolved inside the root.
    """
    if hops >= _MAX_HOPS:
        raise InvalidInput(f"cannot resolve '{path}' inside the container root: too many "
                           "levels of symbolic links; fix the image's symlinks")
    base = [] if target.startswith("/") else parent_parts
    return _join(base + _parts(target) + rest)


def _mkdirs(rfd, path, mode):
    orig, hops = path, 0
    while True:
        parts = _parts(path)
        # the deepest prefix that already resolves; "/" (i == 0) always does
        i = len(parts)
        while True:
            try:
                fd = _openat2(rfd, _join(parts[:i]), _DIR)
                break
            except FileNotFoundError:
                if i == 0:
                    raise  # the root itself was removed
                i -= 1
        if i == len(parts):
            return fd
        try:
            while i < len(parts):
                name = parts[i]
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    # missing through the lookup yet present: a dangling symlink (or a racing
                    # creator, then just open what it made)
                    target = _readlink(name, fd)
                    if target is not None:
                        hops += 1
                        path = _through_link(parts[:i], target, parts[i + 1:], hops, orig)
                        break
                # reopen through the root: whatever now sits at this name, it stays inside
                nfd = _openat2(rfd, _join(parts[:i + 1]), _DIR)
                os.close(fd)
                fd, i = nfd, i + 1
            else:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def mkdirs_in_root(root, path, mode=0o755):
    """``mkdir -p path`` inside ``root``; return an O_PATH descriptor of the final directory.

    Existing symlinks along the way are followed inside the root (``/data -> /etc`` ends at
    root/etc); a dangling one gets its missing target created inside the root.
    """
    with _Rooted(root) as rfd:
        return _mkdirs(rfd, path, mode)


def open_workdir(root, path):
    """An O_PATH descriptor of the directory ``path`` inside ``root``, to fchdir into.

    Stricter than open_in_root: the path is walked one component at a time, each symlink
    expanded here, so that a ".." that would climb above the root, written or reached
    through a symlink (``/w -> ../../..``), is an error and not a silent "/"; magic links
    (``/w -> /proc/self/fd/N``) are refused by the kernel at each step.
    """
    orig, done, todo, hops = os.fspath(path), [], _parts(path), 0
    with _Rooted(root) as rfd:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if not done:
                    raise InvalidInput(f"cannot resolve '{orig}' inside the container root: "
                                       "it climbs above the root; give a path inside it")
                done.pop()
                continue
            here = _join(done + [name])
            fd = _openat2(rfd, here, os.O_PATH | os.O_NOFOLLOW)
            try:
                if not stat.S_ISLNK(os.fstat(fd).st_mode):
                    done.append(name)
                    continue
                try:
                    os.close(_openat2(rfd, here, os.O_PATH))  # ELOOP here for a magic link
                except FileNotFoundError:
                    pass  # dangling: the walk below names what is missing
                target = os.readlink("", dir_fd=fd)
            finally:
                os.close(fd)
            hops += 1
            if hops > _MAX_HOPS:
                raise InvalidInput(f"cannot resolve '{orig}' inside the container root: too "
                                   "many levels of symbolic links; fix the image's symlinks")
            if target.startswith("/"):
                done = []
            todo[:0] = _parts(target)
        return _openat2(rfd, _join(done), _DIR)


def _kind(is_dir):
    return "a directory" if is_dir else "a file"


def ensure_mount_target(root, path, is_dir):
    """Make sure ``path`` inside ``root`` can take a bind mount of a directory or a file.

    Creates the missing directory, or an empty regular file (O_CREAT|O_EXCL|O_NOFOLLOW in
    the resolved parent, never through a symlink), and returns an O_PATH descriptor of it to
    mount on via ``fd_path``.  A dangling symlink at ``path`` is followed inside the root.
    Raises InvalidInput when what exists there is of the other kind.
    """
    with _Rooted(root) as rfd:
        orig, hops = os.fspath(path), 0
        path = orig
        while True:
            try:
                fd = _openat2(rfd, path, os.O_PATH)
            except FileNotFoundError:
                pass
            else:
                try:
                    found_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                except BaseException:
                    os.close(fd)
                    raise
                if found_dir == bool(is_dir):
                    return fd
                os.close(fd)
                raise InvalidInput(
                    f"mount target '{orig}' is {_kind(not is_dir)} inside the container but the "
                    f"source is {_kind(is_dir)}; choose another destination or source")
            if is_dir:
                return _mkdirs(rfd, path, 0o755)
            parts = _parts(path)
            if not parts or parts[-1] == "..":
                raise InvalidInput(f"mount target '{orig}' names a directory but the source is "
                                   "a file; give a file path as destination")
            pfd = _mkdirs(rfd, _join(parts[:-1]), 0o755)
            try:
                try:
                    cfd = os.open(parts[-1], os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o644, dir_fd=pfd)
                except FileExistsError:
                    # a dangling link to follow, or a racing creator: look again (bounded)
                    hops += 1
                    target = _readlink(parts[-1], pfd) or parts[-1]
                    path = _through_link(parts[:-1], target, [], hops, orig)
                    continue
            finally:
                os.close(pfd)
            try:  # hand back the same file as O_PATH, like every other function here
                return os.open(fd_path(cfd), os.O_PATH | os.O_CLOEXEC)
            finally:
                os.close(cfd)


def _is_executable(st):
    return stat.S_ISREG(st.st_mode) and st.st_mode & 0o111


def _first_executable(open_path, candidates):
    for c in candidates:
        try:
            fd = open_path(c)
        except (OSError, InvalidInput):
            continue
        try:
            if _is_executable(os.fstat(fd)):
                return c
        finally:
            os.close(fd)
    return None


def lookup_command(root, argv0, path_env, cwd=None):
    """Find ``argv0`` inside ``root`` the way execvp would; return its in-container path.

    ``root`` may also be an image's layers (ctrun.images.layers.View), looked up merged.

    An absolute ``argv0`` is checked as is; a bare name is searched in each absolute
    directory of ``path_env`` (DEFAULT_PATH when empty; relative entries such as "" or "."
    are skipped: the working directory is no place to pick a program from).  A relative
    ``argv0`` with a slash is resolved against ``cwd`` when given, else returned unchanged for
    exec to resolve against its own working directory.  Raises CommandNotFound.
    """
    if not argv0:
        raise InvalidInput("the command is empty; give the program to run")
    if "/" in argv0:
        if not argv0.startswith("/"):
            if cwd is None:
                return argv0
            argv0 = os.path.normpath(os.path.join("/", cwd, argv0))
        candidates = (argv0,)
    else:
        dirs = (path_env or DEFAULT_PATH).split(":")
        candidates = [d.rstrip("/") + "/" + argv0 for d in dirs if d.startswith("/")]

    if root == "/":
        # the process root is the container root (after pivot_root): a plain stat resolves
        # exactly as RESOLVE_IN_ROOT would, in one syscall instead of three
        for c in candidates:
            try:
                if _is_executable(os.stat(c)):
                    return c
            except OSError:
                continue
    elif hasattr(root, "open"):   # an image's layers (ctrun.images.layers.View), merged
        found = _first_executable(root.open, candidates)
        if found:
            return found
    else:
        with _Rooted(root) as rfd:
            found = _first_executable(lambda c: _openat2(rfd, c, os.O_PATH), candidates)
            if found:
                return found

    if len(candidates) == 1 and "/" in argv0:
        raise CommandNotFound(f"command '{argv0}' not found or not executable in the container; "
                              "check the image or the path")
    raise CommandNotFound(f"command '{argv0}' not found in the container's PATH "
                          f"({path_env or DEFAULT_PATH}); check the image or give an absolute path")
