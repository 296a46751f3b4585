"""Policy of `image pull` that needs no registry: references, credentials, challenges."""

import base64
import json

import pytest

from ctrun.errors import InvalidInput, NotFound
from ctrun.images import registry
from ctrun.images.registry import Reference, parse_reference


@pytest.mark.parametrize("text, want", [
    ("busybox", ("docker.io", "library/busybox", "latest", None)),
    ("docker.io/busybox:1.36", ("docker.io", "library/busybox", "1.36", None)),
    ("index.docker.io/team/app", ("docker.io", "team/app", "latest", None)),
    ("127.0.0.1:5000/busybox:latest", ("127.0.0.1:5000", "busybox", "latest", None)),
    ("localhost/a/b/c:v1", ("localhost", "a/b/c", "v1", None)),
    ("host.example/repo@sha256:" + "a" * 64, ("host.example", "repo", None, "sha256:" + "a" * 64)),
    ("host.example/repo:t@sha256:" + "b" * 64, ("host.example", "repo", "t", "sha256:" + "b" * 64)),
])
def test_references(text, want):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == want


def test_docker_hub_api_host():
    assert parse_reference("busybox").host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/x").host == "127.0.0.1:5000"


@pytest.mark.parametrize("text", ["", "Busybox", "a//b", "host:5000/", "repo:bad tag",
                                  "repo@sha256:abc", "repo@md5:" + "a" * 32, "-lead",
                                  "host/repo:" + "t" * 200])
def test_bad_references(text):
    with pytest.raises(InvalidInput, match="invalid image reference") as e:
        parse_reference(text)
    assert "\n" not in str(e.value)


def test_default_names():
    assert registry.default_name(parse_reference("127.0.0.1:5000/library/busybox")) == "busybox"
    assert registry.default_name(parse_reference("x.io/team/app:1.2")) == "app-1.2"
    assert registry.default_name(parse_reference("x.io/app@sha256:" + "c" * 64)) == "app"


def _authfile(path, entries):
    path.write_text(json.dumps({"auths": {k: {"auth": base64.b64encode(v.encode()).decode()}
                                          for k, v in entries.items()}}))
    return str(path)


def test_credentials_from_flag_and_files(tmp_path, monkeypatch):
    ref = parse_reference("reg.example:5000/team/app")
    assert registry.credentials(ref, creds="u:p:with:colons") == ("u", "p:with:colons")
    with pytest.raises(InvalidInput, match="USER:PASSWORD"):
        registry.credentials(ref, creds="nocolon")
    f = _authfile(tmp_path / "a.json", {"reg.example:5000": "alice:one",
                                        "reg.example:5000/team": "bob:two",
                                        "other.example": "carol:three"})
    assert registry.credentials(ref, authfile=f) == ("bob", "two")      # the closest key
    assert registry.credentials(parse_reference("reg.example:5000/solo"), authfile=f) == \
        ("alice", "one")
    assert registry.credentials(parse_reference("nowhere.example/x"), authfile=f) is None
    with pytest.raises(NotFound, match="--authfile"):
        registry.credentials(ref, authfile=str(tmp_path / "missing.json"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run/containers").mkdir(parents=True)
    _authfile(tmp_path / "run/containers/auth.json", {"reg.example:5000": "dave:four"})
    assert registry.credentials(parse_reference("reg.example:5000/x")) == ("dave", "four")
    hub = _authfile(tmp_path / "hub.json", {"https://index.docker.io/v1/": "eve:five"})
    assert registry.credentials(parse_reference("busybox"), authfile=hub) == ("eve", "five")
    (tmp_path / "bad.json").write_text('{"auths": {"reg.example:5000": {"auth": "!!"}}}')
    with pytest.raises(InvalidInput, match="USER:PASSWORD"):
        registry.credentials(ref, authfile=str(tmp_path / "bad.json"))


def test_challenges():
    assert registry._challenge('Bearer realm="https://auth.example/token",'
                               'service="registry.example",scope="repository:a/b:pull"') == (
        "bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                   "scope": "repository:a/b:pull"})
    assert registry._challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    assert registry._challenge(None) == ("", {})
    kind, params = registry._challenge('Bearer realm=https://a/t,error="invalid_token"')
    assert kind == "bearer" and params["realm"] == "https://a/t"
    assert params["error"] == "invalid_token"


def test_plain_http_only_for_loopback_or_when_asked():
    def schemes(host, verify=True):
        return registry.Client(Reference(host, "r", "t", None), None, verify).schemes
    assert schemes("127.0.0.1:5000") == ["https", "http"]
    assert schemes("localhost:5000") == ["https", "http"]
    assert schemes("reg.example") == ["https"]
    assert schemes("reg.example", verify=False) == ["https", "http"]


def test_creds_from_stdin_or_a_file(tmp_path):
    import io
    assert registry.read_creds("u:p") == "u:p"
    assert registry.read_creds() is None
    assert registry.read_creds("-", stdin=io.StringIO("u:p:q\r\nmore\n")) == "u:p:q"
    with pytest.raises(InvalidInput, match="stdin") as e:
        registry.read_creds("-", stdin=io.StringIO(""))
    assert "\n" not in str(e.value)
    (tmp_path / "c").write_text("alice:s3cret\n")
    assert registry.read_creds(creds_file=str(tmp_path / "c")) == "alice:s3cret"
    with pytest.raises(NotFound, match="--creds-file"):
        registry.read_creds(creds_file=str(tmp_path / "missing"))


def test_credentials_travel_over_plain_http_only_when_tls_verify_is_off():
    ref = Reference("127.0.0.1:5000", "r", "t", None)
    strict, lax = registry.Client(ref, ("u", "p")), registry.Client(ref, ("u", "p"), False)
    assert strict._may_carry("https://127.0.0.1:5000/v2/") and \
        not strict._may_carry("http://127.0.0.1:5000/v2/")
    assert lax._may_carry("http://127.0.0.1:5000/v2/")
