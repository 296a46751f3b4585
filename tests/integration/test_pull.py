"""`ctrun image pull` against a real registry: Debian's docker-registry on 127.0.0.1, images
pushed by skopeo from layouts umoci built; htpasswd auth; the bearer-token flow through a
token endpoint and an auth-checking proxy the test runs in front of the registry (which
also corrupts a blob, lengthens it, cuts a download short, or redirects blobs to another
host on request); a store on a small tmpfs for a file system that fills up."""

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from test_cli_errors import assert_clean_error

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("docker-registry", "skopeo", "umoci", "htpasswd")),
    reason="apt-get install docker-registry skopeo umoci apache2-utils")

TOKEN = "tok-" + os.urandom(8).hex()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry serving a temp directory on 127.0.0.1 (with htpasswd auth if users)."""

    def __init__(self, base, users=None):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        base.mkdir()
        config = {"version": 0.1, "log": {"level": "error"},
                  "storage": {"filesystem": {"rootdirectory": str(base / "data")},
                              "delete": {"enabled": True}},
                  "http": {"addr": self.host, "secret": "test"}}
        if users:
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(["htpasswd", "-B", "-b"] + (["-c"] if i == 0 else []) +
                               [str(base / "htpasswd"), user, password], check=True,
                               capture_output=True)
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(base / "htpasswd")}}
        (base / "config.yml").write_text(json.dumps(config))   # JSON is YAML
        self.log = open(base / "log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                c = http.client.HTTPConnection(self.host, timeout=5)
                c.request("GET", "/v2/")
                c.getresponse().read()
                c.close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(base / 'log').read_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def push(self, src, name, creds=None, all_=False):
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
                       + (["--all"] if all_ else [])
                       + (["--dest-creds", creds] if creds else [])
                       + [src, f"docker://{self.host}/{name}"], check=True,
                       capture_output=True)


def umoci(*args):
    subprocess.run(["umoci", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """An OCI layout (umoci): busybox, then a layer adding /etc/pulled and deleting
    /etc/shells; Cmd and Env set; plus "multi", an index of it for linux/amd64 and of a
    copy whose config says linux/arm64."""
    from ctrun.images import busybox, recipe
    tmp = tmp_path_factory.mktemp("pull-layout")
    lay, bundle = tmp / "oci", tmp / "bundle"
    umoci("init", "--layout", lay)
    umoci("new", "--image", f"{lay}:t")
    umoci("unpack", "--image", f"{lay}:t", bundle)
    busybox.build(recipe.load_recipe("busybox"), bundle / "rootfs")
    umoci("repack", "--image", f"{lay}:t", bundle)
    shutil.rmtree(bundle)       # a bundle repacks onto the image it was unpacked from
    umoci("unpack", "--image", f"{lay}:t", bundle)
    (bundle / "rootfs/etc/pulled").write_text("from the registry\n")
    (bundle / "rootfs/etc/shells").unlink()
    umoci("repack", "--image", f"{lay}:t", bundle)
    umoci("config", "--image", f"{lay}:t", "--config.cmd", "sh", "--config.cmd", "-c",
          "--config.cmd", "echo $GREETING; cat /etc/pulled; ls /etc/shells 2>&1 || true",
          "--config.env", "GREETING=pulled-env", "--config.env", "PATH=/bin:/sbin")
    shutil.rmtree(bundle)
    _multi(lay)
    return lay


def _multi(lay):
    blobs = lay / "blobs/sha256"
    index = json.loads((lay / "index.json").read_text())
    mdesc = next(d for d in index["manifests"]
                 if d["annotations"]["org.opencontainers.image.ref.name"] == "t")

    def put(doc):
        data = json.dumps(doc).encode()
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
        return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = json.loads((blobs / mdesc["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    arm = dict(manifest, config=dict(manifest["config"],
                                     **put(dict(config, architecture="arm64"))))
    mt = "application/vnd.oci.image.manifest.v1+json"
    entries = [{"mediaType": mt, "digest": mdesc["digest"], "size": mdesc["size"],
                "platform": {"os": "linux", "architecture": "amd64"}},
               {"mediaType": mt, **put(arm), "platform": {"os": "linux", "architecture": "arm64"}}]
    idx = {"mediaType": "application/vnd.oci.image.index.v1+json", "schemaVersion": 2,
           **put({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                  "manifests": entries}),
           "annotations": {"org.opencontainers.image.ref.name": "multi"}}
    del idx["schemaVersion"]
    index["manifests"].append(idx)
    (lay / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def registry(tmp_path_factory, layout):
    reg = Registry(tmp_path_factory.mktemp("registry") / "r")
    try:
        reg.push(f"oci:{layout}:t", "test/busybox:latest")
        reg.push(f"oci:{layout}:multi", "test/multi:latest", all_=True)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory, layout):
    reg = Registry(tmp_path_factory.mktemp("registry") / "r", users={"alice": "s3cret"})
    try:
        reg.push(f"oci:{layout}:t", "private/busybox:1", creds="alice:s3cret")
        yield reg
    finally:
        reg.stop()


class Proxy(http.server.ThreadingHTTPServer):
    """In front of a registry: optionally asks for a bearer token (served at /token), and
    can corrupt, cut short or redirect blob downloads.  Records what it was asked."""

    daemon_threads = True

    def __init__(self, upstream, addr="127.0.0.1", port=0, tls=None):
        super().__init__((addr, port), _Handler)
        if tls:                      # (cert, key): https
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.upstream = upstream
        self.port = self.server_address[1]
        self.host = f"{addr}:{self.port}"
        self.bearer = False          # require Authorization: Bearer TOKEN on /v2/
        self.basic = None            # require Authorization: Basic of this "user:password"
        self.redirect = False        # blobs: 307 to localhost:PORT (another host name)
        self.redirect_to = f"http://localhost:{self.port}"    # ... or to this origin
        self.corrupt = set()         # blob digests served with one byte flipped
        self.append = {}             # blob digest -> bytes served after the blob
        self.cut = {}                # blob digest -> how many more responses to cut short
        self.seen = []               # (path, headers) of every request
        self.tokens = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join()

    def handle_error(self, request, client_address):
        pass                         # a client that stops reading (as ctrun may): not news


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv = self.server
        srv.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/token"):
            srv.tokens += 1
            return self.reply(200, json.dumps({"token": TOKEN}).encode())
        redirected = self.path.startswith("/redirected/")
        path = self.path[len("/redirected"):] if redirected else self.path
        if srv.bearer and not redirected and \
                self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', [(
                "WWW-Authenticate", f'Bearer realm="http://{srv.host}/token",'
                                    f'service="test-registry",scope="repository:x:pull"')])
        if srv.basic and not redirected and self.headers.get("Authorization") != \
                "Basic " + base64.b64encode(srv.basic.encode()).decode():
            return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                              [("WWW-Authenticate", 'Basic realm="test"')])
        digest = path.rpartition("/")[2]
        if "/blobs/" in path and srv.redirect and not redirected:
            return self.reply(307, headers=[("Location",
                                             f"{srv.redirect_to}/redirected{path}")])
        up = http.client.HTTPConnection(srv.upstream, timeout=30)
        up.request("GET", path, headers={k: v for k, v in self.headers.items()
                                         if k in ("Accept", "Range")})
        resp = up.getresponse()
        body = resp.read()
        up.close()
        if "/blobs/" in path and digest in srv.corrupt and body:
            body = bytearray(body)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        if "/blobs/" in path and resp.status == 200:
            body += srv.append.get(digest, b"")
        headers = [(k, v) for k, v in resp.getheaders()
                   if k in ("Content-Type", "Docker-Content-Digest", "Content-Range")]
        if "/blobs/" in path and srv.cut.get(digest):
            srv.cut[digest] -= 1
            self.send_response(resp.status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.reply(resp.status, body, headers)


@pytest.fixture
def proxy(registry):
    p = Proxy(registry.host)
    yield p
    p.stop()


def blob_gets(proxy):
    return [p for p, _ in proxy.seen if "/blobs/" in p]


def test_pull_runs_with_the_images_cmd_and_env_and_shares_layers(cli, store, proxy):
    ref = f"{proxy.host}/test/busybox:latest"
    assert cli("image", "pull", ref, check=True).stdout.strip() == "busybox"
    info = cli.json("image", "inspect", "busybox")
    assert info["built_by"] == "pull" and len(info["layers"]) == 2
    assert info["env"] == ["GREETING=pulled-env", "PATH=/bin:/sbin"]
    r = cli("run", "--rm", "busybox")
    assert r.stdout.splitlines()[:2] == ["pulled-env", "from the registry"], r.stderr
    assert "No such file" in r.stdout     # layer 2's whiteout of /etc/shells
    # by digest, under another name: the layers are in the store already, none is fetched
    n = len(blob_gets(proxy))
    cli("image", "pull", f"{proxy.host}/test/busybox@{info['digest']}", "--name", "again",
        check=True)
    assert len(blob_gets(proxy)) == n + 1          # the config blob only
    assert cli.json("image", "inspect", "again")["layers"] == info["layers"]
    assert len(os.listdir(store / "layers/sha256")) == 2
    cli("image", "rm", "busybox", check=True)
    assert len(os.listdir(store / "layers/sha256")) == 2     # still used by "again"
    cli("image", "rm", "again", check=True)
    assert os.listdir(store / "layers/sha256") == []
    assert os.listdir(store / "tmp/blobs") == []


def test_pull_with_htpasswd_auth(cli, auth_registry, tmp_path):
    ref = f"{auth_registry.host}/private/busybox:1"
    plain = "--tls-verify=false"        # the registry speaks plain http: credentials need it
    assert_clean_error(cli("image", "pull", ref), "--creds")
    assert_clean_error(cli("image", "pull", ref, "--creds", "alice:wrong", plain), "401")
    # over plain http credentials are not sent unless the user says so
    assert_clean_error(cli("image", "pull", ref, "--creds", "alice:s3cret"), plain)
    assert cli("image", "pull", ref, "--creds", "alice:s3cret", plain,
               check=True).stdout.strip() == "busybox-1"
    auth = tmp_path / "run/containers/auth.json"
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({"auths": {auth_registry.host: {
        "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    cli("image", "pull", ref, "--name", "viafile", "--authfile", str(auth), plain, check=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    r = subprocess.run(["python3", "-m", "ctrun", "--root", str(cli.root), "image", "pull", ref,
                        "--name", "viaxdg", plain], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr
    assert cli("run", "--rm", "viaxdg", "--", "cat", "/etc/pulled").stdout == \
        "from the registry\n"


def test_creds_from_stdin_or_a_file_stay_out_of_argv(cli, auth_registry, tmp_path):
    ref = f"{auth_registry.host}/private/busybox:1"
    args = ["image", "pull", ref, "--tls-verify=false", "--creds", "-"]
    assert_clean_error(cli(*args, input=""), "stdin")
    assert_clean_error(cli(*args, input="alice:wrong\n"), "401")
    assert cli(*args, input="alice:s3cret\n", check=True).stdout.strip() == "busybox-1"
    assert not any("s3cret" in a for a in args)
    f = tmp_path / "creds"
    f.write_text("alice:s3cret\n")
    args = ["image", "pull", ref, "--tls-verify=false", "--name", "viafile", "--creds-file"]
    cli(*args, str(f), check=True)
    assert_clean_error(cli(*args, str(tmp_path / "missing")), "--creds-file")
    r = cli(*args, str(f), "--creds", "alice:s3cret")
    assert r.returncode == 2 and "not allowed with" in r.stderr
    assert cli("run", "--rm", "viafile", "--", "cat", "/etc/pulled").stdout == \
        "from the registry\n"


def test_bearer_token_flow_and_redirects_without_credentials(cli, proxy):
    proxy.bearer = proxy.redirect = True
    cli("image", "pull", f"{proxy.host}/test/busybox:latest", "--name", "tok",
        "--creds", "bob:pw", "--tls-verify=false", check=True)
    assert proxy.tokens >= 1
    token_req = next(h for p, h in proxy.seen if p.startswith("/token"))
    assert token_req["Authorization"] == "Basic " + base64.b64encode(b"bob:pw").decode()
    assert "scope=repository%3Ax%3Apull" in next(p for p, _ in proxy.seen
                                                 if p.startswith("/token"))
    redirected = [h for p, h in proxy.seen if p.startswith("/redirected/")]
    assert len(redirected) == 3       # config and two layers, fetched from "another host"
    assert not any("Authorization" in h for h in redirected)
    assert cli("run", "--rm", "tok", "--", "cat", "/etc/pulled").stdout == "from the registry\n"


def test_a_plain_http_realm_gets_no_credentials_unless_tls_verify_is_off(cli, proxy):
    proxy.bearer = True             # the realm is http://127.0.0.1:PORT/token
    cli("image", "pull", f"{proxy.host}/test/busybox:latest", "--creds", "bob:pw", check=True)
    token_reqs = [h for p, h in proxy.seen if p.startswith("/token")]
    assert token_reqs and not any("Authorization" in h for h in token_reqs)


class Stranger(http.server.ThreadingHTTPServer):
    """A host a registry redirects to, fishing for credentials: every request gets a 401
    whose bearer realm is this host itself; records every request's headers."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _StrangerHandler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self.seen = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join()


class _StrangerHandler(_Handler):
    def do_GET(self):
        self.server.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/token"):
            return self.reply(200, json.dumps({"token": "stranger"}).encode())
        self.reply(401, b"{}", [("WWW-Authenticate", f'Bearer realm="{self.server.origin}'
                                 '/token",service="x",error="invalid_token"')])


@pytest.mark.parametrize("registry_auth", ["anonymous", "bearer"])
def test_credentials_never_reach_a_host_the_registry_redirects_to(cli, proxy, registry_auth):
    stranger = Stranger()
    try:
        proxy.bearer = registry_auth == "bearer"
        proxy.redirect, proxy.redirect_to = True, stranger.origin
        # plain http allowed: only the host decides here
        r = cli("image", "pull", f"{proxy.host}/test/busybox:latest", "--creds", "bob:pw",
                "--tls-verify=false")
        assert stranger.seen, "the registry did not redirect"
        assert not any("Authorization" in h for _, h in stranger.seen), stranger.seen
        assert not any(p.startswith("/token") for p, _ in stranger.seen)
        assert_clean_error(r, stranger.origin[7:], "asks for credentials")
    finally:
        stranger.stop()


@pytest.fixture
def tls_pair(tmp_path):
    """A registry at https://ADDR (port 443, certificate trusted through SSL_CERT_FILE) whose
    blobs redirect to http://ADDR (port 80): the same host, down to plain http."""
    if not shutil.which("openssl"):
        pytest.skip("apt-get install openssl")
    addr = f"127.{os.getpid() % 200 + 20}.{os.urandom(1)[0]}.7"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=registry", "-addext", f"subjectAltName=IP:{addr}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return addr, cert, key


def test_a_redirect_down_to_plain_http_on_the_same_host_drops_credentials(
        cli, registry, tls_pair, monkeypatch):
    addr, cert, key = tls_pair
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))       # inherited by the CLI
    secure = Proxy(registry.host, addr, 443, tls=(str(cert), str(key)))
    try:
        plain = Proxy(registry.host, addr, 80)
    except BaseException:
        secure.stop()
        raise
    try:
        secure.basic, secure.redirect, secure.redirect_to = "bob:pw", True, f"http://{addr}"
        cli("image", "pull", f"{addr}/test/busybox:latest", "--creds", "bob:pw", check=True)
        assert any("Authorization" in h for _, h in secure.seen)    # https: they were used
        assert len(plain.seen) == 3            # the config and two layers, over http...
        assert not any("Authorization" in h for _, h in plain.seen), plain.seen
        assert cli("run", "--rm", "busybox", "--", "cat", "/etc/pulled").returncode == 0
    finally:
        secure.stop()
        plain.stop()


def test_manifest_list_picks_this_hosts_platform(cli, proxy):
    if os.uname().machine != "x86_64":
        pytest.skip("the index holds linux/amd64 and linux/arm64 with one root file system")
    cli("image", "pull", f"{proxy.host}/test/multi", check=True)
    assert cli("run", "--rm", "multi", "--", "cat", "/etc/pulled").returncode == 0
    r = cli("image", "pull", f"{proxy.host}/test/multi", "--name", "s390",
            "--platform", "linux/s390x")
    assert_clean_error(r, "linux/amd64, linux/arm64")


def _manifest(proxy):
    c = http.client.HTTPConnection(proxy.upstream)
    c.request("GET", "/v2/test/busybox/manifests/latest",
              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    body = c.getresponse().read()
    c.close()
    return body


def _layer_digests(proxy, sizes=False):
    layers = json.loads(_manifest(proxy))["layers"]
    return [(ly["digest"], ly["size"]) if sizes else ly["digest"] for ly in layers]


def test_corrupt_blob_leaves_nothing(cli, store, proxy):
    proxy.corrupt.add(_layer_digests(proxy)[0])
    r = cli("image", "pull", f"{proxy.host}/test/busybox:latest")
    assert_clean_error(r, "does not match its digest")
    assert not (store / "images/busybox").exists()
    assert not [n for n in os.listdir(store / "images") if n.startswith(".")]
    left = sorted(str(p.relative_to(store)) for p in (store / "layers").rglob("*"))
    assert left in ([], ["layers/sha256"])          # no layer, no temp directory
    assert os.listdir(store / "tmp/blobs") == []


def _nothing_left(root, name):
    """No image, layer, temp directory or blob is left by a failed pull or import."""
    assert not (root / "images" / name).exists()
    assert not [n for n in os.listdir(root / "images") if n.startswith(".")]
    assert [p.name for p in (root / "layers").rglob("*")] in ([], ["sha256"])
    assert [p.name for p in (root / "tmp").rglob("*")] in ([], ["blobs"])


def test_a_blob_longer_than_declared_is_cut_off_at_its_size(cli, store, proxy):
    layer = _layer_digests(proxy)[0]
    config = json.loads(_manifest(proxy))["config"]["digest"]
    garbage = os.urandom(1 << 20) * 8
    proxy.append.update({layer: garbage, config: garbage})
    cli("image", "pull", f"{proxy.host}/test/busybox:latest", check=True)   # the digest holds
    assert cli("run", "--rm", "busybox", "--", "cat", "/etc/pulled").returncode == 0
    assert os.listdir(store / "tmp/blobs") == []
    cli("image", "rm", "busybox", check=True)
    proxy.corrupt.add(layer)         # the first `size` bytes are wrong: the digest says so
    r = cli("image", "pull", f"{proxy.host}/test/busybox:latest")
    assert_clean_error(r, f"layer {layer}", "does not match its digest")
    _nothing_left(store, "busybox")


def test_cut_downloads_resume_with_range(cli, store, proxy):
    from ctrun.images.registry import ATTEMPTS
    big = _layer_digests(proxy)[0]
    proxy.cut[big] = ATTEMPTS        # every try of the first pull is cut: it gives up
    r = cli("image", "pull", f"{proxy.host}/test/busybox:latest")
    assert_clean_error(r, "pull again to resume")
    partial = store / "tmp/blobs" / (big[7:] + ".partial")
    have = partial.stat().st_size
    assert have > 0
    cli("image", "pull", f"{proxy.host}/test/busybox:latest", check=True)   # like after a kill
    ranges = [h.get("Range") for p, h in proxy.seen if p.endswith(big)]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert ranges[-1] == f"bytes={have}-"
    assert cli("run", "--rm", "busybox", "--", "cat", "/etc/pulled").returncode == 0
    assert os.listdir(store / "tmp/blobs") == []


@contextlib.contextmanager
def nearly_full_fs(free):
    """A 64 MiB tmpfs with all but about `free` bytes taken by a file: a store on it fills
    up.  Named without "ctrun" and unmounted however the test ends."""
    mnt = Path(tempfile.mkdtemp(prefix="fullfs-", dir="/var/tmp"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "fullfs",
                        str(mnt)], check=True)
        try:
            st = os.statvfs(mnt)
            fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - free)
            finally:
                os.close(fd)
            yield mnt / "store"
        finally:
            if subprocess.run(["umount", str(mnt)]).returncode:
                subprocess.run(["umount", "-l", str(mnt)], check=True)
    finally:
        os.rmdir(mnt)


def _full_store_error(r, root, name):
    assert_clean_error(r, f"no space left on the store's file system ({root})", "--root")
    _nothing_left(root, name)


@pytest.mark.parametrize("kind", ["rootfs tarball", "compressed OCI archive"])
def test_an_import_that_fills_the_store_stops_and_leaves_nothing(layout, tmp_path, kind):
    from conftest import CLI
    if kind == "rootfs tarball":
        src = tmp_path / "rootfs"
        (src / "bin").mkdir(parents=True)
        (src / "bin/big").write_bytes(os.urandom(8 << 20))
        archive, extra = tmp_path / "big.tar", []
        subprocess.run(["tar", "-C", str(src), "-cf", str(archive), "."], check=True)
    else:          # unpacked under the store before its layers are: that fills it first
        archive, extra = tmp_path / "oci.tar.gz", ["--ref", "t"]
        subprocess.run(["tar", "-C", str(layout), "-czf", str(archive), "."], check=True)
    with nearly_full_fs(256 << 10) as root:
        r = CLI(root)("image", "import", str(archive), "big", *extra)
        _full_store_error(r, root, "big")


@pytest.mark.parametrize("stage", ["download", "extraction"])
def test_a_pull_that_fills_the_store_stops_and_leaves_nothing(proxy, stage):
    from conftest import CLI
    size = max(s for _, s in _layer_digests(proxy, sizes=True))
    free = 64 << 10 if stage == "download" else size + (256 << 10)
    with nearly_full_fs(free) as root:
        r = CLI(root)("image", "pull", f"{proxy.host}/test/busybox:latest")
        _full_store_error(r, root, "busybox")


def test_bad_references_and_an_unreachable_registry(cli):
    assert_clean_error(cli("image", "pull", "UPPER/case"), "invalid image reference")
    assert_clean_error(cli("image", "pull", "busybox@sha256:123"), "digest")
    r = cli("image", "pull", "busybox", timeout=120)
    assert_clean_error(r, "registry docker.io")
