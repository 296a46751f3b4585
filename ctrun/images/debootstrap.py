"""Builds Debian images with debootstrap(8) from Debian's archive.

debootstrap runs in its own session and a private mount namespace: the /proc and /sys (and,
in some hosts, /dev bind) mounts it makes inside the new root vanish with it, even when it
is killed, so removing a failed build never walks into a host file system.  Afterwards the
recipe's post-steps (files, truncate, clean) run through descriptors resolved inside the new
root, since the packages' maintainer scripts may have left any symlink there.
"""

import copy
import fnmatch
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from ..errors import CtrunError, HostUnsupported, InvalidInput

MIRROR_ENV = "CTRUN_DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
VARIANTS = ("minbase", "buildd", "default")   # "default": debootstrap's own (no --variant)
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_NOT_INSTALLED = "debootstrap is not installed; run: apt-get install debootstrap"
_SUITE_RE = re.compile(r"[a-z][a-z0-9.-]{0,63}")
_PKG_RE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,127}")
_MIRROR_RE = re.compile(r"(https?|file)://[^\s,\"'\\]+")
# wget's defaults (20 tries, 900 s read timeout) make a black-holed archive look like a hang
_WGETRC = "tries = 3\nconnect_timeout = 30\nread_timeout = 120\n"


# ---- options --------------------------------------------------------------------------------

def packages(recipe_include, include) -> list[str]:
    """The recipe's packages plus --include (a "a,b" string or a list of them), in order."""
    extra = [include] if isinstance(include, str) else list(include or [])
    out = []
    for item in list(recipe_include or []) + [p for s in extra for p in s.split(",")]:
        item = item.strip()
        if not item:
            continue
        if not _PKG_RE.fullmatch(item):
            raise InvalidInput(f"bad debian package name {item!r}; --include takes names like "
                               "curl,less (lower case, comma separated)")
        if item not in out:
            out.append(item)
    return out


def archive_uris(text: str, deb822: bool) -> list[str]:
    """Main-archive URIs of an apt sources file: binary ("deb") entries with component main
    and a release suite (not -security, -updates, -backports), on http, https or file."""
    out = []
    if deb822:
        for stanza in re.split(r"\n[ \t]*\n", text):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in fields.get("types", "").split():
                suites, comps = fields.get("suites", "").split(), \
                    fields.get("components", "").split()
                out += _main([(uri, suites, comps) for uri in fields.get("uris", "").split()])
    else:
        for line in text.splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 4 and line[0] == "deb":
                out += _main([(line[1], [line[2]], line[3:])])
    return out


def _main(entries):
    return [uri.rstrip("/") for uri, suites, comps in entries
            if re.match(r"^(https?|file)://", uri) and "security" not in uri
            and "main" in comps and any("-" not in s and "/" not in s for s in suites)]


def host_mirror(etc: Path = Path("/etc")) -> str | None:
    """The host's main Debian archive from its apt sources; None unless the host is Debian."""
    try:
        osrel = (etc / "os-release").read_text()
    except OSError:
        osrel = ""
    if not re.search(r'^ID="?debian"?$', osrel, re.M):
        return None
    d = etc / "apt" / "sources.list.d"
    files = [(p, True) for p in sorted(d.glob("*.sources"))] + \
        [(etc / "apt" / "sources.list", False)] + \
        [(p, False) for p in sorted(d.glob("*.list"))]
    for path, deb822 in files:
        try:
            uris = archive_uris(path.read_text(errors="replace"), deb822)
        except OSError:
            continue
        if uris:
            return uris[0]
    return None


def mirror_for(recipe, mirror=None) -> str:
    """Explicit mirror, then $CTRUN_DEBIAN_MIRROR, then the host's archive, then the recipe's."""
    spec = recipe.get("mirror")
    spec = {"default": spec} if isinstance(spec, str) else (spec or {})
    mirror = mirror or os.environ.get(MIRROR_ENV) or \
        (spec.get("from_host") and host_mirror()) or spec.get("default") or DEFAULT_MIRROR
    if not _MIRROR_RE.fullmatch(mirror):
        raise InvalidInput(f"bad debian mirror {mirror!r}; use a url like {DEFAULT_MIRROR} "
                           f"(set {MIRROR_ENV})")
    return mirror.rstrip("/")


# ---- progress -------------------------------------------------------------------------------

# per package: "I: Retrieving libc6 2.36-9", "I: Unpacking libc6:amd64..." (other I: lines
# such as "I: Unpacking the base system..." or "I: Retrieving Packages " are phases)
_STEP_RE = re.compile(r"^I: (?:(Retrieving) (\S+) (\S+)|(Extracting|Unpacking|Configuring) "
                      r"(\S+?)\.\.\.)$")
_BAR = 20


class Progress:
    """debootstrap's I: lines as one rewritten status line on a terminal, plain lines on
    anything else (logs, pipes)."""

    def __init__(self, title, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.title = title
        self.retrieved = 0
        self.done_in = {}
        self.shown = False

    def status(self, line: str) -> str | None:
        """The status text for one debootstrap line (None: nothing to show)."""
        m = _STEP_RE.match(line.rstrip())
        if m and m.group(1):
            self.retrieved += 1
            return f"{self.title}: downloading package {self.retrieved} ({m.group(2)})"
        if m:
            # extraction covers only the required packages; every package is unpacked and
            # configured once (a few twice), so those two make the bar
            step = m.group(4).lower()
            total = max(self.retrieved, 1)
            self.done_in[step] = self.done_in.get(step, 0) + 1
            n = min(self.done_in[step], total)
            done = sum(min(self.done_in.get(s, 0), total) for s in ("unpacking", "configuring"))
            fill = _BAR * done // (2 * total)
            return (f"{self.title}: [{'#' * fill}{'-' * (_BAR - fill)}] {step} "
                    f"{n}/{total} {m.group(5).split(':')[0]}")
        if line.startswith("I: Validating "):
            return None
        if line.startswith("I: "):
            text = line[3:].strip().rstrip(".")
            return f"{self.title}: {text[:1].lower()}{text[1:]}"
        return None

    def line(self, line: str):
        if not line.startswith(("I: ", "W: ")):
            return   # E: lines become the error; anything else is stray stderr
        if not self.tty:
            print(line, file=self.stream, flush=True)
            return
        text = self.status(line)
        if line.startswith("W: "):
            self.clear()
            print(line, file=self.stream, flush=True)
        elif text:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self.stream.flush()
            self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


# ---- errors ---------------------------------------------------------------------------------

def failure(output: list[str], log: list[str], suite, variant, mirror) -> CtrunError:
    """One-line error for a failed debootstrap, from its E: line and the tail of its log."""
    errors = [line[3:].strip() for line in output if line.startswith("E: ")]
    err = errors[-1] if errors else next((x.strip() for x in reversed(output) if x.strip()),
                                         "no output")
    wget = [x.strip() for x in log if x.strip().startswith(("failed:", "wget:", "ERROR"))
            or re.match(r"^\d{4}-\d\d-\d\d \S+ ERROR", x.strip())]
    if "No such script" in err:
        return InvalidInput(f"unknown debian suite '{suite}' (debootstrap has no script for "
                            "it); use a suite such as bookworm, trixie or sid")
    if "unsupported variant" in err:
        return InvalidInput(f"suite '{suite}' cannot be built as variant '{variant}'; "
                            "use a current suite such as bookworm, or --variant default")
    if "Couldn't find these debs" in err:
        missing = err.split(":", 1)[1].strip()
        return InvalidInput(f"no package {missing} in debian {suite} at {mirror}; "
                            "fix --include")
    if "Failed getting release file" in err and any(" 404" in x for x in wget):
        return InvalidInput(f"suite '{suite}' is not in the Debian archive at {mirror} "
                            "(404 not found); use a current suite such as bookworm, or set "
                            f"{MIRROR_ENV} to an archive that keeps it")
    if "Failed getting release file" in err or "Couldn't download" in err:
        reason = re.sub(r"^(failed:|wget:)\s*", "", wget[-1]).rstrip(".") if wget else err
        return CtrunError(f"cannot reach the Debian archive at {mirror}: {reason}; check the "
                          f"network or set {MIRROR_ENV} to a reachable mirror")
    if "Release signed by unknown key" in err or "Invalid Release signature" in err:
        return CtrunError(f"the Release file of '{suite}' at {mirror} fails its signature "
                          f"check ({err}); run: apt-get install debian-archive-keyring")
    if "can only run as root" in err:
        return HostUnsupported("building a debian image needs root; run ctrun as root")
    if "noexec or nodev" in err:
        return HostUnsupported("the image store is on a file system mounted noexec or nodev; "
                               "use a store (--root) on another file system")
    last = next((x.strip() for x in reversed(log) if x.strip()), "")
    detail = f" (last log line: {last})" if last and last not in err else ""
    return CtrunError(f"debootstrap failed: {err}{detail}; fix the cause and build again")


# ---- running debootstrap --------------------------------------------------------------------

def _wgetrc(tmpdir):
    """A wgetrc with bounded retries, then the user's own settings (which win)."""
    text = _WGETRC
    user = os.environ.get("WGETRC") or os.path.expanduser("~/.wgetrc")
    try:
        text += Path(user).read_text()
    except OSError:
        pass
    path = Path(tmpdir) / "wgetrc"
    path.write_text(text)
    return str(path)


def _stop(proc):
    """End debootstrap and everything it started (its own session), then reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):   # SIGKILL too: dpkg may outlive the shell
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def _exit_on(signum, frame):
    raise SystemExit(128 + signum)


def run(argv, progress) -> tuple[int, list[str]]:
    """Run debootstrap; (exit status, its last lines of output)."""
    # preexec_fn: a mount namespace of debootstrap's own, mounts not shared back (imported
    # before the fork: the child only calls it)
    from ..namespaces import private_mounts
    path = os.pathsep.join([os.environ.get("PATH", "/usr/bin:/bin"), *SBIN])
    exe = shutil.which("debootstrap", path=path)
    if exe is None:
        raise HostUnsupported(_NOT_INSTALLED)
    tail = deque(maxlen=40)
    # SIGTERM or SIGHUP while it runs: unwind, so debootstrap is stopped and the half-built
    # root removed (^C does that already, through KeyboardInterrupt)
    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            saved[sig] = signal.signal(sig, _exit_on)
        except ValueError:   # not the main thread: leave signals alone
            break
    try:
        with tempfile.TemporaryDirectory(prefix="ctrun-debootstrap-") as tmp:
            env = dict(os.environ, PATH=path, LC_ALL="C", DEBIAN_FRONTEND="noninteractive",
                       WGETRC=_wgetrc(tmp))
            proc = subprocess.Popen([exe, *argv], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    text=True, errors="replace", start_new_session=True,
                                    preexec_fn=private_mounts)
            try:
                for line in proc.stdout:
                    line = line.rstrip("\n")
                    tail.append(line)
                    progress.line(line)
                rc = proc.wait()
            except BaseException:   # nothing may keep writing into the root
                _stop(proc)
                raise
            finally:
                proc.stdout.close()
                progress.clear()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return rc, list(tail)


# ---- post-steps -----------------------------------------------------------------------------

def _open_dir(rootfs, parts):
    from ..runtime import paths
    return paths.open_in_root(str(rootfs), "/" + "/".join(parts), os.O_RDONLY | os.O_DIRECTORY)


def _replace_file(dfd, name, data: bytes, mode: int, what):
    try:
        if stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode):
            raise InvalidInput(f"image recipe {what} is a directory in the built root; "
                               "remove it from \"files\"")
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def post_steps(recipe: dict, rootfs: Path):
    """The recipe's files (replaced), truncate (regular files emptied, if present) and clean
    (files matching a name pattern removed) steps."""
    from .busybox import _mode, _parts, file_text
    for p, spec in recipe.get("files", {}).items():
        what = f"files {p!r}"
        parts = _parts(p, what)
        spec = spec if isinstance(spec, dict) else {}
        text = file_text(spec, what)
        try:
            dfd = _open_dir(rootfs, parts[:-1])
        except FileNotFoundError:
            raise InvalidInput(f"image recipe {what}: its directory is missing in the built "
                               "root; fix the path") from None
        try:
            _replace_file(dfd, parts[-1], text.encode(), _mode(spec.get("mode", "0644"), what),
                          what)
        finally:
            os.close(dfd)
    for p in recipe.get("truncate", []):
        parts = _parts(p, "truncate")
        try:
            dfd = _open_dir(rootfs, parts[:-1])
        except FileNotFoundError:
            continue
        try:
            if stat.S_ISREG(os.lstat(parts[-1], dir_fd=dfd).st_mode):
                os.close(os.open(parts[-1], os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW |
                                 os.O_CLOEXEC, dir_fd=dfd))
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)
    for p in recipe.get("clean", []):
        parts = _parts(p, "clean")
        if any(c in "".join(parts[:-1]) for c in "*?["):
            raise InvalidInput(f"image recipe clean {p!r}: only the last component may be a "
                               "pattern; list each directory")
        try:
            dfd = _open_dir(rootfs, parts[:-1])
        except FileNotFoundError:
            continue
        try:
            for name in fnmatch.filter(os.listdir(dfd), parts[-1]):
                if not stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode):
                    os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)


# ---- the builder ----------------------------------------------------------------------------

def build(recipe: dict, rootfs: Path, suite=None, variant=None, include=None,
          mirror=None, progress=None) -> dict:
    """debootstrap the recipe's suite into the empty directory rootfs, run its post-steps,
    and return the image's config."""
    rootfs = Path(rootfs)
    suite = suite or recipe.get("suite") or "bookworm"
    if not _SUITE_RE.fullmatch(suite):
        raise InvalidInput(f"bad debian suite {suite!r}; use a name like bookworm or trixie")
    variant = variant or recipe.get("variant") or "minbase"
    if variant not in VARIANTS:
        raise InvalidInput(f"unknown debootstrap variant {variant!r}; use one of "
                           f"{', '.join(VARIANTS)}")
    pkgs = packages(recipe.get("include"), include)
    mirror = mirror_for(recipe, mirror)
    if os.listdir(rootfs):
        raise InvalidInput(f"image root {rootfs} is not empty; build into a new directory")

    argv = ([] if variant == "default" else [f"--variant={variant}"]) + \
        ([f"--include={','.join(pkgs)}"] if pkgs else []) + [suite, str(rootfs), mirror]
    rc, output = run(argv, progress or Progress(f"debian {suite}"))
    if rc != 0:
        log = _read_in_root(rootfs, "/debootstrap/debootstrap.log", 1 << 20)
        raise failure(output, log.splitlines()[-40:], suite, variant, mirror)

    post_steps(recipe, rootfs)
    config = copy.deepcopy(recipe["config"])
    config.update(built_by="debootstrap", suite=suite, variant=variant, mirror=mirror,
                  include=pkgs,
                  debian_version=_read_in_root(rootfs, "/etc/debian_version", 64).strip())
    return config


def _read_in_root(rootfs, path, limit):
    """The last `limit` bytes of a file of the new root as text ("" when unreadable)."""
    from ..runtime import paths
    try:
        with os.fdopen(paths.open_in_root(str(rootfs), path, os.O_RDONLY), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - limit))
            return f.read(limit).decode(errors="replace")
    except (OSError, InvalidInput):
        return ""
