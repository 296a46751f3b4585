"""`ctrun image pull`: images from an OCI distribution registry (Docker Registry HTTP API v2).

References: [HOST[:PORT]/]REPO[:TAG][@sha256:...]; without a host, docker.io (with library/
for a one-part name).  Auth: anonymous, HTTP basic, or a bearer token fetched from the realm
a 401 names (WWW-Authenticate: Bearer realm=...,service=...,scope=...); credentials from
--creds or a containers-auth.json file (as skopeo and podman read it).  Manifest lists and
OCI indexes resolve to this host's platform (or --platform).  Every manifest and blob is
checked against its digest, layers also against their diff_id while they are extracted.

Blobs download into <root>/tmp/blobs/<hex>.partial; a download cut short (or a killed
pull) continues from there with an HTTP Range request; no more than a blob's declared size
is ever read (the rest of a longer answer is dropped, the digest decides).  Layers the store
holds (by diff_id, or by the compressed digest they were imported from) are not downloaded
at all.

Credentials go only to the registry they were given for and to the token realm that
registry's own 401 names, and only over https unless --tls-verify=false: a redirect to
another host (a blob store) or down to plain http drops them, and a 401 from a host the
registry redirected to is an error, never a reason to send them (or a token) elsewhere.

Only the stdlib: http.client, so redirects and Range are explicit and nothing is imported
that the other verbs would pay for (cli.py imports this module for `image pull` only).
"""

import base64
import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass

from ..errors import CtrunError, InvalidInput, NotFound, quote
from . import oci

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
ATTEMPTS = 3            # tries of one blob download (each one resumes the last)
TIMEOUT = 60            # seconds without a byte from the registry
_CHUNK = 1 << 20
_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                   r"[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")


class RegistryError(CtrunError):
    """The registry failed or refused us (unreachable, unauthorized, a server error)."""


@dataclass
class Reference:
    registry: str       # as the user wrote it (docker.io for Docker Hub)
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self):
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += ":" + self.tag
        return out + ("@" + self.digest if self.digest else "")

    @property
    def host(self):
        """host[:port] the API is served from."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry


def parse_reference(text):
    """A Reference, or InvalidInput naming what is wrong."""
    bad = (f"invalid image reference {text!r}: use [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:"
           "DIGEST], e.g. 127.0.0.1:5000/busybox:latest")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise InvalidInput(bad + "; the digest must be sha256: and 64 hex digits")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, remainder
        if not _HOST.fullmatch(registry):
            raise InvalidInput(bad)
    else:
        registry = DOCKER_HUB
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    repo, tag = rest, None
    if ":" in rest.rpartition("/")[2]:
        repo, _, tag = rest.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise InvalidInput(bad + f"; {tag!r} is not a valid tag")
    if not _REPO.fullmatch(repo or "") or len(repo) > 255:
        raise InvalidInput(bad + "; repository names are lower-case letters, digits and "
                                 "separators")
    if registry == DOCKER_HUB and "/" not in repo:
        repo = "library/" + repo
    if tag is None and not digest:
        tag = "latest"
    return Reference(registry, repo, tag, digest or None)


def _loopback(host):
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in ("localhost", "[::1]") or name.startswith("127.")


# -- credentials -----------------------------------------------------------------------------

def auth_files(authfile=None):
    """Where credentials are looked for, first match wins (podman's and skopeo's order)."""
    if authfile:
        return [authfile]
    out = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers/auth.json"))
    home = os.path.expanduser("~")
    out += [os.path.join(home, ".config/containers/auth.json"),
            os.path.join(home, ".docker/config.json")]
    return out


def read_creds(creds=None, creds_file=None, stdin=None):
    """USER:PASSWORD from --creds, from stdin (--creds -) or from --creds-file, so that a
    secret need not sit in argv where `ps` shows it; None if none was given."""
    if creds == "-" or creds_file is not None:
        from ..config import read_secret_line
        where = "stdin" if creds == "-" else f"--creds-file {creds_file!r}"
        creds = read_secret_line(None if creds == "-" else creds_file,
                                 f"credentials from {where}", stdin)
        if not creds:
            raise InvalidInput(f"no credentials on {where}; give USER:PASSWORD on one line")
    return creds


def credentials(ref, creds=None, authfile=None):
    """(user, password) for the reference, or None for anonymous access."""
    if creds is not None:
        user, sep, password = creds.partition(":")
        if not sep or not user:
            raise InvalidInput("--creds takes USER:PASSWORD; give both")
        return user, password
    keys = [f"{ref.registry}/{ref.repository}"]
    parts = ref.repository.split("/")
    keys += [f"{ref.registry}/{'/'.join(parts[:i])}" for i in range(len(parts) - 1, 0, -1)]
    keys += [ref.registry, f"https://{ref.registry}", f"http://{ref.registry}"]
    if ref.registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for path in auth_files(authfile):
        try:
            with open(path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            if authfile:
                raise NotFound(f"auth file {quote(path)} does not exist; give an existing "
                               "--authfile") from None
            continue
        except (OSError, ValueError) as e:
            raise InvalidInput(f"auth file {path} is not readable JSON ({e}); fix or "
                               "remove it") from None
        auths = doc.get("auths") if isinstance(doc, dict) else None
        for key in keys:
            entry = auths.get(key) if isinstance(auths, dict) else None
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                try:
                    user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except ValueError:
                    sep = ""
                if not sep:
                    raise InvalidInput(f"the {key} entry of auth file {path} is not "
                                       "base64 of USER:PASSWORD; log in again")
                return user, password
    return None


def _challenge(header):
    """('bearer'|'basic', {param: value}) of a WWW-Authenticate header."""
    scheme, _, rest = (header or "").strip().partition(" ")
    params = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', rest))
    params.update((k, v) for k, v in re.findall(r'(\w+)\s*=\s*([^",\s]+)', rest)
                  if k not in params)
    return scheme.lower(), params


# -- the HTTP client -------------------------------------------------------------------------

class Client:
    """One repository of one registry: requests with auth, redirects and scheme fallback."""

    def __init__(self, ref, creds=None, tls_verify=True):
        self.ref, self.creds = ref, creds
        self.tls_verify = tls_verify
        # like docker and skopeo: plain http is allowed for loopback registries and with
        # --tls-verify=false, after https was tried
        self.schemes = ["https"] + (["http"] if not tls_verify or _loopback(ref.host) else [])
        self.auth = None            # the Authorization header that worked
        self.secret = False         # self.auth stands for the credentials (not anonymous)
        self.withheld = False       # credentials were not sent: plain http
        self.scope = f"repository:{ref.repository}:pull"

    def _connect(self, scheme, host):
        if scheme == "https":
            ctx = ssl.create_default_context()
            if not self.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(host, timeout=TIMEOUT, context=ctx)
        return http.client.HTTPConnection(host, timeout=TIMEOUT)

    def _may_carry(self, url):
        """Whether a secret of ours may travel to url's scheme: https, or plain http only
        with --tls-verify=false (given for the registry: it names its realm itself)."""
        return urllib.parse.urlsplit(url).scheme == "https" or not self.tls_verify

    def _send(self, url, headers, secret=False):
        """One GET (following redirects); returns (response, connection, final URL).  The
        Authorization header stays on the host it was meant for, and a secret one (from
        credentials) also never goes down to plain http."""
        for _ in range(6):
            u = urllib.parse.urlsplit(url)
            conn = self._connect(u.scheme, u.netloc)
            try:
                conn.request("GET", (u.path or "/") + ("?" + u.query if u.query else ""),
                             headers=headers)
                resp = conn.getresponse()
            except BaseException:
                conn.close()
                raise
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                resp.read()
                conn.close()
                nxt = urllib.parse.urljoin(url, resp.getheader("Location"))
                if urllib.parse.urlsplit(nxt).netloc != u.netloc or (
                        secret and not self._may_carry(nxt)):
                    # a blob store on another host gets no credentials of ours
                    headers = {k: v for k, v in headers.items() if k != "Authorization"}
                url = nxt
                continue
            return resp, conn, url
        raise RegistryError(f"registry {self.ref.registry} redirects too often for {url}; "
                            "check the registry")

    def get(self, path, headers=None):
        """GET /v2/<repository>/<path>: (response, connection) of a 2xx or 206; errors are
        one line naming the cause."""
        headers = dict(headers or {})
        last = None
        for scheme in list(self.schemes):
            url = f"{scheme}://{self.ref.host}/v2/{self.ref.repository}/{path}"
            try:
                return self._get(url, headers)
            except (ssl.SSLError, ConnectionError, http.client.HTTPException) as e:
                last = e        # try the next scheme, and keep to it for later requests
                if scheme != self.schemes[-1]:
                    self.schemes.remove(scheme)
                    continue
                break
            except OSError as e:
                last = e
                break
        if isinstance(last, ssl.SSLCertVerificationError):
            raise RegistryError(f"cannot verify the TLS certificate of registry "
                                f"{self.ref.registry} ({last.verify_message}); fix its "
                                "certificate or pass --tls-verify=false") from None
        raise RegistryError(f"cannot reach registry {self.ref.registry} "
                            f"({_reason(last)}); check the network and the reference"
                            ) from None

    def _get(self, url, headers):
        for _ in range(3):
            h = dict(headers)
            if self.auth and (not self.secret or self._may_carry(url)):
                h["Authorization"] = self.auth
            resp, conn, final = self._send(url, h, self.secret)
            if resp.status == 401 and self._authenticate(resp, final):
                conn.close()
                continue
            if resp.status in (200, 206):
                return resp, conn
            body = resp.read(65536)
            conn.close()
            raise self._refusal(resp.status, body, url)
        raise RegistryError(f"registry {self.ref.registry} keeps refusing the credentials "
                            f"it asked for; {self._fix()}")

    def _authenticate(self, resp, url):
        """Set self.auth from a 401's challenge; False if nothing more can be tried.  Only
        the registry's own 401 counts: a host it redirected to gets nothing of ours."""
        resp.read()
        u = urllib.parse.urlsplit(url)
        if u.netloc != self.ref.host:
            # a refusal, not a hiccup: InvalidInput is not retried
            raise InvalidInput(f"{u.netloc}, where registry {self.ref.registry} redirected "
                               f"{u.path}, asks for credentials (401); ctrun gives them only "
                               "to the registry itself and its token service, check the "
                               "registry")
        creds = self.creds if self._may_carry(url) else None
        self.withheld = bool(self.creds) and not creds
        scheme, params = _challenge(resp.getheader("WWW-Authenticate"))
        if scheme == "basic":
            if not creds or self.auth:
                return False
            self.auth = "Basic " + base64.b64encode(":".join(creds).encode()).decode()
            self.secret = True
            return True
        if scheme != "bearer" or not params.get("realm") or (
                self.auth and self.auth.startswith("Bearer") and "error" not in params):
            return False
        self.auth = "Bearer " + self._token(params, creds)
        return True

    def _fix(self):
        """How to fix a refusal: give credentials, check them, or let them travel."""
        if self.withheld:
            return ("ctrun sends credentials over https only; pass --tls-verify=false to "
                    "send them over plain http")
        return ("check --creds or the auth file" if self.creds else
                "give credentials with --creds USER:PASSWORD or --authfile FILE")

    def _token(self, params, creds):
        query = {k: params[k] for k in ("service",) if params.get(k)}
        query["scope"] = params.get("scope") or self.scope
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + \
            urllib.parse.urlencode(query)
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("https", "http"):
            raise RegistryError(f"registry {self.ref.registry} names token realm {url!r}, "
                                "which is not an http(s) URL; check the registry")
        headers = {}
        # the realm this registry named is where its credentials go, but never in clear
        if creds and self._may_carry(url):
            headers["Authorization"] = "Basic " + base64.b64encode(
                ":".join(creds).encode()).decode()
        elif creds:
            self.withheld = True
        self.secret = "Authorization" in headers    # the token stands for the credentials
        try:
            resp, conn, _ = self._send(url, headers, secret=True)
            with contextlib.closing(conn):
                body = resp.read(1 << 20)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"cannot get a token from {u.netloc} for registry "
                                f"{self.ref.registry} ({_reason(e)}); check the network"
                                ) from None
        if resp.status != 200:
            raise self._refusal(resp.status, body, url)
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service {u.netloc} of registry "
                                f"{self.ref.registry} gave no token; check the registry")
        return token

    def _refusal(self, status, body, url):
        try:
            errs = json.loads(body).get("errors") or []
            detail = "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}".strip()
                               for e in errs if isinstance(e, dict))
        except (ValueError, AttributeError):
            detail = ""
        detail = (detail or http.client.responses.get(status, "")).replace("\n", " ")[:200]
        if status == 401:
            return InvalidInput(f"registry {self.ref.registry} refused access to "
                                f"{self.ref.repository} (401 {detail}); {self._fix()}")
        if status == 403:
            return InvalidInput(f"registry {self.ref.registry} denies access to "
                                f"{self.ref.repository} (403 {detail}); use an account with "
                                "pull access")
        if status == 404:
            return NotFound(f"{self.ref} is not in registry {self.ref.registry} (404 "
                            f"{detail}); check the repository, tag or digest")
        return RegistryError(f"registry {self.ref.registry} answered {status} {detail} for "
                             f"{urllib.parse.urlsplit(url).path}; try again later")


def _reason(e):
    if isinstance(e, socket.timeout):
        return f"no answer within {TIMEOUT} s"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e).replace("\n", " ") or type(e).__name__


# -- manifests and blobs ---------------------------------------------------------------------

def _read_verified(client, path, digest, what, accept=None, limit=oci.MAX_JSON, size=None):
    """(bytes, digest) of a small document; its sha256 must be `digest` when given.  With
    the descriptor's size, no more than that is read: the digest judges what came."""
    if size is not None and size > limit:
        raise InvalidInput(f"{what} of {client.ref} is over {limit} bytes; the registry "
                           "serves something that is not an image")
    resp, conn = client.get(path, {"Accept": accept} if accept else None)
    with contextlib.closing(conn):
        try:
            body = resp.read(limit + 1 if size is None else size)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"reading {what} from registry {client.ref.registry} failed "
                                f"({_reason(e)}); try again") from None
        if len(body) > limit:
            raise InvalidInput(f"{what} of {client.ref} is over {limit} bytes; the registry "
                               "serves something that is not an image")
    got = "sha256:" + hashlib.sha256(body).hexdigest()
    said = resp.getheader("Docker-Content-Digest")
    if not digest and said and said.startswith("sha256:"):
        digest = said           # by tag: the registry's own word is what we can check
    if digest and got != digest:
        raise InvalidInput(f"{what} of {client.ref} does not match its digest {digest} (it "
                           f"hashes to {got}); the registry or the network corrupted it, "
                           "pull again")
    return body, got, resp.getheader("Content-Type", "").split(";")[0].strip()


def _json(body, what, ref):
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidInput(f"{what} of {ref} is not valid JSON ({e}); the image is "
                           "malformed") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} of {ref} is not a JSON object; the image is malformed")
    return doc


def resolve(client, platform=None):
    """The oci.Image the reference names (a manifest list resolved to one platform), its
    layers not yet downloaded (Layer._opener is None)."""
    ref = client.ref
    plat = oci._platform(platform)
    want = ref.digest
    body, digest, ctype = _read_verified(client, f"manifests/{ref.digest or ref.tag}", want,
                                         "the manifest", ACCEPT)
    for _ in range(oci.MAX_DEPTH):
        doc = _json(body, "the manifest", ref)
        mt = doc.get("mediaType") or ctype
        if doc.get("schemaVersion") == 1 or "signed" in mt or mt.endswith("v1+prettyjws"):
            raise InvalidInput(f"{ref} is a docker schema 1 image, which ctrun does not "
                               "pull; convert it with skopeo copy --format v2s2")
        if mt in oci.INDEX_TYPES or (not mt and "manifests" in doc):
            entries = [e for e in doc.get("manifests") or [] if isinstance(e, dict)]
            if not entries:
                raise InvalidInput(f"the image index of {ref} lists no images; the image is "
                                   "malformed")
            child = oci._pick_platform(entries, plat, str(ref))
            if not isinstance(child.get("digest"), str) or not _DIGEST.fullmatch(
                    child["digest"]):
                raise InvalidInput(f"the image index of {ref} has digest "
                                   f"{child.get('digest')!r}; only sha256 is supported")
            size = child.get("size")
            body, digest, ctype = _read_verified(
                client, f"manifests/{child['digest']}", child["digest"], "the manifest",
                ACCEPT, size=size if isinstance(size, int) and size >= 0 else None)
            continue
        if mt not in oci.MANIFEST_TYPES and not (not mt and "layers" in doc):
            raise InvalidInput(f"{ref} has media type {mt!r}, which is not a container "
                               "image; convert it with skopeo")
        break
    else:
        raise InvalidInput(f"{ref} nests image indexes too deeply; the image is malformed")
    cdesc = doc.get("config")
    if not isinstance(cdesc, dict) or cdesc.get("mediaType") not in oci.CONFIG_TYPES:
        raise InvalidInput(f"the config of {ref} has media type "
                           f"{(cdesc or {}).get('mediaType')!r}, which is not a container "
                           "image config (an OCI artifact?)")
    _check_desc(cdesc, "the image config", ref)
    cbody, _, _ = _read_verified(client, f"blobs/{cdesc['digest']}", cdesc["digest"],
                                 "the image config", size=cdesc["size"])
    config = _json(cbody, "the image config", ref)
    ldescs = doc.get("layers")
    diff_ids = oci._diff_ids(config, str(ref), ldescs, f"the manifest of {ref} lists", "",
                             "image")
    layers = []
    for i, (ld, diff_id) in enumerate(zip(ldescs, diff_ids), 1):
        _check_desc(ld, f"layer {i}", ref)
        lmt = ld.get("mediaType")
        if lmt not in oci.LAYER_TYPES:
            raise InvalidInput(f"layer {i} of {ref} has media type {lmt!r}, which ctrun "
                               "cannot unpack; convert the image with skopeo")
        layers.append(oci.Layer(ld["digest"], lmt, ld["size"], oci.LAYER_TYPES[lmt], diff_id))
    return oci.Image(config, layers, str(ref), digest, cdesc["digest"])


def _check_desc(d, what, ref):
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or \
            not _DIGEST.fullmatch(d["digest"]) or not isinstance(d.get("size"), int) or \
            isinstance(d.get("size"), bool) or d["size"] < 0:
        raise InvalidInput(f"{what} of {ref} has a bad descriptor (digest and size); only "
                           "sha256 digests are supported, the image is malformed")


class Download:
    """One blob into <tmp>/<hex>.partial, continued where an earlier try stopped."""

    def __init__(self, client, layer, tmp, progress):
        self.client, self.layer, self.progress = client, layer, progress
        self.path = os.path.join(tmp, layer.digest.partition(":")[2] + ".partial")

    def fetch(self):
        """The complete, verified blob's path (the .partial file, renamed when done)."""
        done = self.path[:-len(".partial")]
        if os.path.exists(done):
            return done
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._once()
                break
            except RegistryError:
                if attempt == ATTEMPTS:
                    raise
                time.sleep(0.5 * attempt)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    # the disk, not the network: keep no part that holds on to the space
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                raise
        have = os.path.getsize(self.path)
        if have != self.layer.size:
            os.unlink(self.path)
            raise InvalidInput(f"layer {self.layer.digest} of {self.client.ref} has {have} "
                               f"bytes but its descriptor says {self.layer.size}; the "
                               "registry serves a corrupt image")
        sha = hashlib.sha256()
        with open(self.path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
        if "sha256:" + sha.hexdigest() != self.layer.digest:
            os.unlink(self.path)
            raise InvalidInput(f"layer {self.layer.digest} of {self.client.ref} does not "
                               f"match its digest (it hashes to sha256:{sha.hexdigest()}); "
                               "the registry or the network corrupted it, pull again")
        os.rename(self.path, done)
        return done

    def _once(self):
        if not os.path.exists(self.path):
            open(self.path, "wb").close()
        have = os.path.getsize(self.path)
        if have >= self.layer.size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        resp, conn = self.client.get(f"blobs/{self.layer.digest}", headers)
        with contextlib.closing(conn):
            if resp.status == 200:
                have = 0          # the server ignored the range: start over
            # the file is the store's disk: its errors (ENOSPC) are not the network's
            with open(self.path, "ab" if have else "wb") as out:
                while have < self.layer.size:   # never more than declared: cut off there
                    try:
                        chunk = resp.read(min(_CHUNK, self.layer.size - have))
                    except (OSError, http.client.HTTPException) as e:
                        raise RegistryError(f"download of layer {self.layer.digest} from "
                                            f"{self.client.ref.registry} broke off at {have} "
                                            f"of {self.layer.size} bytes ({_reason(e)}); pull "
                                            "again to resume") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    have += len(chunk)
                    self.progress(self.layer, have)
        if have < self.layer.size:
            raise RegistryError(f"download of layer {self.layer.digest} from "
                                f"{self.client.ref.registry} broke off at {have} of "
                                f"{self.layer.size} bytes; pull again to resume")


class Progress:
    """One line per layer on a terminal, redrawn in place; silent otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.on = stream.isatty()
        self.last = 0.0

    def __call__(self, layer, have):
        if not self.on:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and have < layer.size:
            return
        self.last = now
        frac = have / layer.size if layer.size else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{layer.digest[7:19]} [{bar:<30}] {have / 1048576:7.1f}/"
                          f"{layer.size / 1048576:.1f} MiB")
        if have >= layer.size:
            self.stream.write("\n")
        self.stream.flush()


# -- the verb --------------------------------------------------------------------------------

def default_name(ref):
    """busybox for 127.0.0.1:5000/library/busybox:latest, busybox-1.36 for :1.36."""
    base = ref.repository.rpartition("/")[2]
    return base if ref.tag in (None, "latest") else f"{base}-{ref.tag}"


def pull(store, reference, name=None, creds=None, authfile=None, tls_verify=True,
         platform=None, trusted=False):
    """Pull REFERENCE into the store as image NAME; returns its image config."""
    from ..config import check_name
    from ..errors import Conflict
    from ..state import read_json
    from .transfer import store_space
    ref = parse_reference(reference)
    name = name or default_name(ref)
    check_name(name, "image")
    old = read_json(store.image_dir(name) / "image.json")
    if old is not None and (old.get("source") or {}).get("reference") != str(ref):
        raise Conflict(f"image '{name}' already exists and was not pulled from {ref}; "
                       f"choose another name with --name or remove it (ctrun image rm {name})")
    client = Client(ref, credentials(ref, creds, authfile), tls_verify)
    img = resolve(client, platform)
    if old is not None and old.get("digest") == img.digest:
        return old                              # up to date
    with store_space(store):
        return _install(store, name, client, img, old is not None, trusted)


def _install(store, name, client, img, replace, trusted):
    """Download the layers the store lacks, stack them as image NAME."""
    from . import store as images
    from .transfer import stack_image
    ref = client.ref
    tmp = store.private_dir("tmp", "blobs")
    progress = Progress()
    fetched = []

    def fetch(layer):
        with store.lock(f"blob.{layer.digest[7:23]}"):   # one download of a blob at a time
            path = Download(client, layer, str(tmp), progress).fetch()
        fetched.append(path)
        # Download verified the digest before the file took its final name: no second hash
        return oci.BlobReader(open(path, "rb", buffering=0), layer.size, None,
                              f"layer {layer.digest} of {ref}")

    def fill(stage):
        cfg = stack_image(store, stage, img, trusted, fetch)
        cfg.update(source={"kind": "registry", "reference": str(ref)}, built_by="pull")
        return cfg
    try:
        return images.install_layers(store, name, fill, replace=replace)
    finally:
        for path in fetched:                      # verified and applied (or refused): done
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
