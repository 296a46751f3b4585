"""The vzctl-set knobs that reach inside a container: its hostname (UTS namespace), a
user's password (/etc/shadow) and SSH keys (~/.ssh/authorized_keys).

The container's files are reached from the host, never by a program of the image: a
running container through /proc/PID/root (its own mounts, live), a stopped one through a
detached overlay mount of its layers (nothing attached anywhere, gone with the fd).  Every
path below that root is resolved inside it (runtime.paths), and the last steps of
~/.ssh/authorized_keys are opened without following symlinks at all: a container that
plants `/root/.ssh -> /etc` gets an error, not keys (and modes) written into /etc.  The
password is hashed here and only its hash is written: it never reaches argv, a config
or a process of the container.
"""

import contextlib
import errno
import os
import re
import stat
import time

from .kernel import linux
from .namespaces import join as nsjoin
from .errors import Conflict, HostUnsupported, InvalidInput, NotFound
from .runtime import paths

KEY_FILE_MAX = 64 * 1024
_KEY_RE = re.compile(r"(?:[^\s\0]+\s+)?(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|"
                     r"sk-[a-z0-9@.-]+)\s+[A-Za-z0-9+/]+={0,3}(?:\s[^\0\r\n]*)?")


def read_userpasswd(value=None, path=None, stdin=None):
    """USER:PASSWORD from `--userpasswd -` (stdin) or `--userpasswd-file FILE`, as
    (user, password); None when neither is given.  A password typed in argv is refused:
    every user of the host can read it in ps."""
    from .config import parse_userpasswd, read_secret_line
    if value is None and path is None:
        return None
    if value is not None and value != "-":
        raise InvalidInput("--userpasswd takes '-' and reads USER:PASSWORD from stdin (or use "
                           "--userpasswd-file FILE): a password in the command line shows "
                           "in ps")
    where = "stdin" if path is None else f"--userpasswd-file {path!r}"
    return parse_userpasswd(read_secret_line(path, where, stdin), where)


def read_ssh_key(path):
    """The public keys of a host file, checked line by line; returns the text to append."""
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_MAX + 1)
    except OSError as e:
        raise NotFound(f"cannot read --ssh-key {path!r} ({e.strerror}); give a public key "
                       "file such as ~/.ssh/id_ed25519.pub") from None
    if len(data) > KEY_FILE_MAX:
        raise InvalidInput(f"--ssh-key {path!r} is larger than 64 KiB; give a public key file")
    try:
        lines = [ln.strip() for ln in data.decode().splitlines()]
    except UnicodeDecodeError:
        raise InvalidInput(f"--ssh-key {path!r} is not text; give a public key file") from None
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    for ln in keys:
        if not _KEY_RE.fullmatch(ln):
            raise InvalidInput(f"--ssh-key {path!r} holds a line that is not an OpenSSH public "
                               f"key ({ln[:30]!r}...); give the .pub file, not the private key")
    if not keys:
        raise InvalidInput(f"--ssh-key {path!r} holds no public key; give a .pub file")
    return keys


def userpasswd_of(value):
    """The API's userpasswd: "USER:PASSWORD" or (user, password) -> (user, password)."""
    from .config import parse_userpasswd
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = f"{value[0]}:{value[1]}"
    if not isinstance(value, str):
        raise InvalidInput("userpasswd takes 'USER:PASSWORD' or (user, password)")
    return parse_userpasswd(value, "userpasswd")


def apply_inside(store, cdir, name, conf, live, userpasswd=None, keys=(), key_user="root"):
    """--userpasswd and --ssh-key on the container's root, running or not."""
    if not userpasswd and not keys:
        return
    with container_root(store, cdir, name, conf, live) as (rfd, shift):
        if keys:
            add_ssh_keys(rfd, key_user, keys, shift)
        if userpasswd:
            set_password(rfd, *userpasswd)


def keys_from(files):
    """The public keys of one key file (a path) or of several."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return [k for f in files or () for k in read_ssh_key(os.fspath(f))]


# ------------------------------------------------------------------ hostname
def sethostname(live, hostname):
    """sethostname(2) inside the running container's UTS namespace, from a child that
    joined only that namespace."""
    from .state import alive
    fd = os.open(f"/proc/{live['pid']}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not alive(live["pid"], live["pid_start"]):
            raise Conflict("the container stopped while ctrun was changing its hostname")
        pid = os.fork()
        if pid == 0:
            try:
                nsjoin.enter(fd, "uts")
                linux.sethostname(hostname)
                os._exit(0)
            except BaseException:  # noqa: BLE001 - the exit status carries it
                os._exit(1)
    finally:
        os.close(fd)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        raise HostUnsupported(f"cannot set the hostname {hostname!r} in the running "
                              "container's UTS namespace; restart it to apply the saved one")


# ------------------------------------------------------------------ the root
@contextlib.contextmanager
def container_root(store, cdir, name, conf, live):
    """An O_PATH descriptor of the container's root and the host id of its uid 0.

    Called with the container's lock held, so a stopped container is not started (and
    its overlay work directory not used) meanwhile."""
    shift = conf.get("userns_base") or 0 if conf.get("userns") else 0
    if live:
        from .state import alive
        fd = os.open(f"/proc/{live['pid']}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not alive(live["pid"], live["pid_start"]):
                raise Conflict(f"container '{name}' stopped meanwhile; retry")
            yield fd, shift
        finally:
            os.close(fd)
        return
    if conf.get("userns"):
        # its layers would need idmapped mounts through a namespace that only exists
        # while it runs; what were written without them would belong to nobody inside
        raise Conflict(f"container '{name}' uses --userns and is not running: start it, "
                       f"then run: ctrun set {name} --userpasswd/--ssh-key")
    from .images import store as images
    from .runtime.rootfs import lowerdir
    view, _ = images.get(store, conf["image"], build_missing=False)
    lower = [os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for d in view.dirs]
    try:
        fd = linux.fsmount("overlay", {"lowerdir": lowerdir(lower),
                                      "upperdir": str(cdir / "upper"),
                                      "workdir": str(cdir / "work")})
    finally:
        for lfd in lower:
            os.close(lfd)
    try:
        yield fd, shift
    finally:
        os.close(fd)


def _read_in_root(rfd, path):
    fd = paths.open_in_root(rfd, path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(4 * 1024 * 1024).decode(errors="replace")


def passwd_entry(rfd, user):
    """(uid, gid, home) of user in the container's /etc/passwd."""
    try:
        text = _read_in_root(rfd, "/etc/passwd")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 6 and f[0] == user and f[2].isdigit() and f[3].isdigit():
            return int(f[2]), int(f[3]), f[5] or "/"
    raise NotFound(f"user {user!r} is not in the container's /etc/passwd; add the user "
                   "inside the container first, or name another")


# ------------------------------------------------------------------ password
def hash_password(password):
    """A SHA-512 crypt(3) hash with a random salt (every libc's crypt verifies it)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:  # Python 3.13 dropped it: openssl reads the secret from stdin
            crypt = None
    if crypt is not None:
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
        if h and h.startswith("$6$"):
            return h
    import subprocess
    try:
        r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                           capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise HostUnsupported("cannot hash the password: neither Python's crypt nor openssl "
                              "works here; run: apt-get install openssl") from None
    return r.stdout.strip()


def _replace_file(dfd, name, text, like):
    """Write name in the directory dfd anew (temp file, rename), with the owner and mode
    of the file it replaces (st: like)."""
    tmp = f".{name}.ctrun-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        try:
            os.fchown(fd, like.st_uid, like.st_gid)
            os.fchmod(fd, stat.S_IMODE(like.st_mode))
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def set_password(rfd, user, password):
    """The user's hash in the container's /etc/shadow (the user must be in /etc/passwd)."""
    passwd_entry(rfd, user)
    hashed = hash_password(password)
    etc = paths.open_in_root(rfd, "/etc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = os.open("shadow", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=etc)
        except FileNotFoundError:
            raise NotFound("the container has no /etc/shadow; its image keeps no passwords "
                           "there, so --userpasswd cannot set one") from None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise InvalidInput("the container's /etc/shadow is a symlink; ctrun does not "
                               "follow it: make it a regular file inside the container") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput("the container's /etc/shadow is not a regular file; fix it "
                                   "inside the container")
            lines = f.read(16 * 1024 * 1024).decode(errors="surrogateescape").splitlines()
        days = str(int(time.time() // 86400))
        for i, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == user and len(fields) >= 2:
                fields += [""] * (9 - len(fields))
                fields[1], fields[2] = hashed, days
                lines[i] = ":".join(fields)
                break
        else:
            lines.append(f"{user}:{hashed}:{days}:0:99999:7:::")
        _replace_file(etc, "shadow", "\n".join(lines) + "\n", st)
    finally:
        os.close(etc)


# ------------------------------------------------------------------ ssh keys
def _refuse_link(path, what):
    return InvalidInput(f"{path} in the container is {what}; ctrun does not follow or "
                        "replace it: fix it inside the container, then retry")


def _open_nofollow(name, flags, dfd, shown, mode=0o600):
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise _refuse_link(shown, "a symlink or not of the expected kind") from None
        raise


def add_ssh_keys(rfd, user, keys, shift=0):
    """Append keys (those not there yet) to user's ~/.ssh/authorized_keys: the directory
    700, the file 600, both owned by the user."""
    uid, gid, home = passwd_entry(rfd, user)
    hfd = paths.open_in_root(rfd, home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(".ssh", 0o700, dir_fd=hfd)
        sshdir = home.rstrip("/") + "/.ssh"
        sfd = _open_nofollow(".ssh", os.O_RDONLY | os.O_DIRECTORY, hfd, sshdir)
    finally:
        os.close(hfd)
    try:
        os.fchown(sfd, uid + shift, gid + shift)
        os.fchmod(sfd, 0o700)
        shown = sshdir + "/authorized_keys"
        afd = _open_nofollow("authorized_keys", os.O_RDWR | os.O_APPEND | os.O_CREAT, sfd,
                             shown)
        with os.fdopen(afd, "r+b") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _refuse_link(shown, "not a regular file")
            if st.st_nlink != 1:  # a hard link to another file (/etc/shadow) of the root
                raise _refuse_link(shown, "a hard link to another file")
            have = f.read(KEY_FILE_MAX * 16).decode(errors="replace")
            new = [k for k in keys if k not in have.splitlines()]
            if new:
                f.write(("\n" if have and not have.endswith("\n") else "").encode()
                        + "".join(k + "\n" for k in new).encode())
            os.fchown(f.fileno(), uid + shift, gid + shift)
            os.fchmod(f.fileno(), 0o600)
    finally:
        os.close(sfd)
