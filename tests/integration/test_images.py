"""The image store end to end: export, import of every archive kind, templates, safety."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from test_cli_errors import assert_clean_error


def add_bytes(tf, name, data, mode=0o644, **kw):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), mode
    for k, v in kw.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data))


def layer_tar(rootfs=None, files=(), whiteouts=()):
    """A layer as tar bytes: a whole rootfs and/or extra files and whiteouts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        if rootfs:
            for entry in sorted(os.listdir(rootfs)):
                tf.add(os.path.join(rootfs, entry), arcname=entry)
        for name, data in files:
            add_bytes(tf, name, data)
        for name in whiteouts:
            d, base = os.path.split(name)
            add_bytes(tf, os.path.join(d, ".wh." + base), b"")
    return buf.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = {"architecture": "amd64", "os": "linux",
          "config": {"Env": ["PATH=/bin:/sbin", "GREETING=from-config"],
                     "Cmd": ["sh", "-c", "echo $GREETING; cat /etc/layer2; pwd; "
                             "ls /etc/gone 2>&1 || true"],
                     "WorkingDir": "/tmp"}}


def layers(busybox_rootfs):
    one = layer_tar(busybox_rootfs, files=[("etc/gone", b"x\n"), ("etc/opq/old", b"x\n")])
    # layer 2 removes etc/gone (a whiteout) and hides etc/opq's old contents (opaque dir)
    two = layer_tar(files=[("etc/layer2", b"second layer\n"), ("etc/opq/new", b"y\n")],
                    whiteouts=["etc/gone", "etc/opq/.wh..opq"])
    return one, two


def docker_save(path, busybox_rootfs):
    one, two = layers(busybox_rootfs)
    cfg = dict(CONFIG, rootfs={"type": "layers", "diff_ids": [sha(one), sha(two)]})
    cfg_bytes = json.dumps(cfg).encode()
    cfg_name = hashlib.sha256(cfg_bytes).hexdigest() + ".json"
    with tarfile.open(path, "w") as tf:
        add_bytes(tf, cfg_name, cfg_bytes)
        add_bytes(tf, "l1/layer.tar", one)
        add_bytes(tf, "l2/layer.tar", two)
        add_bytes(tf, "manifest.json", json.dumps(
            [{"Config": cfg_name, "RepoTags": ["test:1"],
              "Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode())


def oci_layout(d, busybox_rootfs, tars=None):
    """An OCI layout of the two test layers (or of `tars`), gzipped."""
    one, two = layers(busybox_rootfs)
    tars = tars or [one, two]
    blobs = d / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data):
        (blobs / sha(data)[7:]).write_bytes(data)
        return sha(data)
    gz = [gzip.compress(x, mtime=0) for x in tars]
    cfg = dict(CONFIG, rootfs={"type": "layers", "diff_ids": [sha(t) for t in tars]})
    cfg_bytes = json.dumps(cfg).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(cfg_bytes), "size": len(cfg_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(g), "size": len(g)} for g in gz]}).encode()
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (d / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


@pytest.fixture
def bb(ct, store):
    """The built-in image, built in this store; its root file system (its one layer)."""
    from ctrun.images import store as images
    images.get(ct.store, "busybox")
    (rootfs,) = images.lowerdirs(ct.store, "busybox")
    return str(rootfs)


def test_export_then_import_round_trip(cli, store, bb, tmp_path):
    for suffix in (".tar", ".tar.gz", ".tar.xz"):
        out = tmp_path / f"bb{suffix}"
        cli("image", "export", "busybox", str(out), check=True)
        name = "bb" + suffix.replace(".", "-")
        cli("image", "import", str(out), name, check=True)
        r = cli("run", "--rm", name, "--", "head", "-1", "/etc/passwd")
        assert r.returncode == 0 and r.stdout.startswith("root:x:0:0"), r.stderr
    listing = cli("image", "list", check=True).stdout
    assert "bb-tar-gz" in listing and "import" in listing


def test_docker_save_and_oci_layout_apply_layers_and_config(cli, store, bb, tmp_path):
    docker_save(tmp_path / "saved.tar", bb)
    oci_layout(tmp_path / "layout", bb)
    with tarfile.open(tmp_path / "layout.tar", "w") as tf:
        for entry in os.listdir(tmp_path / "layout"):
            tf.add(tmp_path / "layout" / entry, arcname=entry)
    for src, name in ((tmp_path / "saved.tar", "fromdocker"), (tmp_path / "layout", "fromoci"),
                      (tmp_path / "layout.tar", "fromociarchive")):
        cli("image", "import", str(src), name, check=True)
        r = cli("run", "--rm", name)  # no command: the image's Cmd, Env and WorkingDir
        lines = r.stdout.splitlines()
        assert lines[:3] == ["from-config", "second layer", "/tmp"], (name, r.stdout, r.stderr)
        assert "No such file" in lines[3]  # the whiteout of layer 2 removed layer 1's file
        info = cli.json("image", "inspect", name)
        assert len(info["layers"]) == 2 and len(info["layer_dirs"]) == 2
    # the same layers are stored once; --userns sees them through idmapped mounts, with
    # the whiteout and the opaque directory (overlayfs xattrs) still applied
    assert len(os.listdir(store / "layers/sha256")) == 1 + 2
    for userns in ([], ["--userns"]):
        r = cli("run", "--rm", *userns, "fromoci", "--", "sh", "-c",
                "cat /etc/layer2; stat -c %u /etc/layer2; ls /etc/opq; ls /etc/gone")
        assert r.stdout.split() == ["second", "layer", "0", "new"], (userns, r.stdout, r.stderr)
        assert "No such file" in r.stderr, r.stderr


def test_many_layers_outgrow_a_page_of_full_paths(cli, store, bb, tmp_path):
    """80 layers: their store paths alone would be ~8 kB of overlay options."""
    one, _ = layers(bb)
    tars = [one] + [layer_tar(files=[(f"etc/l{i}", f"{i}\n".encode())]) for i in range(79)]
    oci_layout(tmp_path / "many", bb, tars)
    cli("image", "import", str(tmp_path / "many"), "many", check=True)
    assert len(cli.json("image", "inspect", "many")["layer_dirs"]) == 80
    r = cli("run", "--rm", "many", "--", "sh", "-c", "cat /etc/l0 /etc/l78; ls /etc | wc -l")
    assert r.returncode == 0 and r.stdout.split()[:2] == ["0", "78"], r.stderr
    cli("image", "export", "many", str(tmp_path / "many.tar"), check=True)
    with tarfile.open(tmp_path / "many.tar") as tf:
        assert {"etc/l0", "etc/l78", "bin/busybox"} <= set(tf.getnames())


def test_tampered_and_hostile_archives_leave_nothing(cli, store, bb, tmp_path):
    oci_layout(tmp_path / "bad", bb)
    blob = max((tmp_path / "bad/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert_clean_error(cli("image", "import", str(tmp_path / "bad"), "tampered"), "sha256")
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        ti = tarfile.TarInfo("escape")
        ti.type, ti.linkname = tarfile.SYMTYPE, str(sentinel)
        tf.addfile(ti)
        add_bytes(tf, "escape/pwned", b"gotcha")
    assert_clean_error(cli("image", "import", str(evil), "evil"))
    assert list(sentinel.iterdir()) == []
    for name in ("tampered", "evil"):
        assert not (store / "images" / name).exists()
    assert not [p for p in (store / "images").iterdir() if p.name.startswith(".")]
    assert not [p for p in (store / "layers").iterdir() if p.name != "sha256"]
    kept = ["sha256:" + p.name for p in (store / "layers/sha256").iterdir()]
    assert kept == cli.json("image", "inspect", "busybox")["layers"]   # no layer of theirs
    assert_clean_error(cli("image", "import", str(tmp_path / "nope.tar"), "x"), "does not exist")


def test_template_from_a_container_and_rm_refused_while_used(cli, store, bb):
    cli("create", "tsrc", "--", "sh", "-c", "echo templated > /etc/extra; rm /etc/shells",
        check=True)
    assert cli("start", "tsrc").returncode == 0
    cli.wait_state("tsrc", "stopped")
    before = set(os.listdir(store / "layers/sha256"))
    cli("template", "tpl", "tsrc", check=True)
    r = cli("run", "--rm", "tpl", "--", "sh", "-c", "cat /etc/extra; ls /etc/shells || true")
    assert "templated" in r.stdout and "No such file" in r.stderr
    # the base image's layers are shared; the container's changes are one small new layer
    base, tpl = cli.json("image", "inspect", "busybox"), cli.json("image", "inspect", "tpl")
    assert tpl["layers"][:-1] == base["layers"] and len(tpl["layers"]) == len(base["layers"]) + 1
    (new,) = set(os.listdir(store / "layers/sha256")) - before
    added = json.loads((store / "layers/sha256" / new / "layer.json").read_text())["size"]
    assert added < base["size"] / 10, (added, base["size"])
    # and it stacks again: a template of a container of the template
    cli("create", "tsrc2", "--image", "tpl", "--", "sh", "-c", "echo again > /etc/extra2",
        check=True)
    assert cli("start", "tsrc2").returncode == 0
    cli.wait_state("tsrc2", "stopped")
    cli("template", "tpl2", "tsrc2", check=True)
    r = cli("run", "--rm", "tpl2", "--", "sh", "-c", "cat /etc/extra /etc/extra2; ls /etc/shells")
    assert r.stdout.split() == ["templated", "again"] and "No such file" in r.stderr
    assert_clean_error(cli("image", "rm", "busybox"), "tsrc")
