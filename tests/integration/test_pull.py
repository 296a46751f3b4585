"""`ctrun image pull` against a real registry: Debian's docker-registry on 127.0.0.1, images
pushed by skopeo from layouts umoci built; htpasswd auth; the bearer-token flow through a
token endpoint and an auth-checking proxy the test runs in front of the registry (which
also corrupts a blob, cuts a download short, or redirects blobs to another host on request)."""

import base64
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
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

    def __init__(self, upstream):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.port = self.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.bearer = False          # require Authorization: Bearer TOKEN on /v2/
        self.redirect = False        # blobs: 307 to localhost:PORT (another host name)
        self.corrupt = set()         # blob digests served with one byte flipped
        self.cut = {}                # blob digest -> how many more responses to cut short
        self.seen = []               # (path, headers) of every request
        self.tokens = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join()


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
        digest = path.rpartition("/")[2]
        if "/blobs/" in path and srv.redirect and not redirected:
            return self.reply(307, headers=[("Location",
                                             f"http://localhost:{srv.port}/redirected{path}")])
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
    assert_clean_error(cli("image", "pull", ref), "--creds")
    assert_clean_error(cli("image", "pull", ref, "--creds", "alice:wrong"), "401")
    assert cli("image", "pull", ref, "--creds", "alice:s3cret",
               check=True).stdout.strip() == "busybox-1"
    auth = tmp_path / "run/containers/auth.json"
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({"auths": {auth_registry.host: {
        "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    cli("image", "pull", ref, "--name", "viafile", "--authfile", str(auth), check=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    r = subprocess.run(["python3", "-m", "ctrun", "--root", str(cli.root), "image", "pull", ref,
                        "--name", "viaxdg"], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr
    assert cli("run", "--rm", "viaxdg", "--", "cat", "/etc/pulled").stdout == \
        "from the registry\n"


def test_bearer_token_flow_and_redirects_without_credentials(cli, proxy):
    proxy.bearer = proxy.redirect = True
    cli("image", "pull", f"{proxy.host}/test/busybox:latest", "--name", "tok",
        "--creds", "bob:pw", check=True)
    assert proxy.tokens >= 1
    token_req = next(h for p, h in proxy.seen if p.startswith("/token"))
    assert token_req["Authorization"] == "Basic " + base64.b64encode(b"bob:pw").decode()
    assert "scope=repository%3Ax%3Apull" in next(p for p, _ in proxy.seen
                                                 if p.startswith("/token"))
    redirected = [h for p, h in proxy.seen if p.startswith("/redirected/")]
    assert len(redirected) == 3       # config and two layers, fetched from "another host"
    assert not any("Authorization" in h for h in redirected)
    assert cli("run", "--rm", "tok", "--", "cat", "/etc/pulled").stdout == "from the registry\n"


def test_manifest_list_picks_this_hosts_platform(cli, proxy):
    if os.uname().machine != "x86_64":
        pytest.skip("the index holds linux/amd64 and linux/arm64 with one root file system")
    cli("image", "pull", f"{proxy.host}/test/multi", check=True)
    assert cli("run", "--rm", "multi", "--", "cat", "/etc/pulled").returncode == 0
    r = cli("image", "pull", f"{proxy.host}/test/multi", "--name", "s390",
            "--platform", "linux/s390x")
    assert_clean_error(r, "linux/amd64, linux/arm64")


def _layer_digests(proxy):
    c = http.client.HTTPConnection(proxy.upstream)
    c.request("GET", "/v2/test/busybox/manifests/latest",
              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    manifest = json.loads(c.getresponse().read())
    c.close()
    return [ly["digest"] for ly in manifest["layers"]]


def test_corrupt_blob_leaves_nothing(cli, store, proxy):
    proxy.corrupt.add(_layer_digests(proxy)[0])
    r = cli("image", "pull", f"{proxy.host}/test/busybox:latest")
    assert_clean_error(r, "does not match its digest")
    assert not (store / "images/busybox").exists()
    assert not [n for n in os.listdir(store / "images") if n.startswith(".")]
    left = sorted(str(p.relative_to(store)) for p in (store / "layers").rglob("*"))
    assert left in ([], ["layers/sha256"])          # no layer, no temp directory
    assert os.listdir(store / "tmp/blobs") == []


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


def test_bad_references_and_an_unreachable_registry(cli):
    assert_clean_error(cli("image", "pull", "UPPER/case"), "invalid image reference")
    assert_clean_error(cli("image", "pull", "busybox@sha256:123"), "digest")
    r = cli("image", "pull", "busybox", timeout=120)
    assert_clean_error(r, "registry docker.io")
