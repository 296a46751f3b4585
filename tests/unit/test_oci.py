"""ctrun.images.oci: finding, verifying and describing the layers of OCI layouts and
docker save archives.  Fixtures are written by hand (deterministic), and also made with
umoci and skopeo when Debian's packages are installed."""

import gc
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from ctrun.errors import InvalidInput, NotFound
from ctrun.images import oci

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
GZ_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
HOST = oci.host_platform()[1]
OTHER = "arm64" if HOST != "arm64" else "amd64"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files):
    """A deterministic tar of {name: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def untar_names(data):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getnames()


class Layout:
    """An OCI image layout written by hand, blob by blob."""

    def __init__(self, d):
        self.d = d
        (d / "blobs/sha256").mkdir(parents=True)
        (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.entries = []

    def put(self, data):
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        (self.d / "blobs/sha256" / sha(data)[7:]).write_bytes(data)
        return {"digest": sha(data), "size": len(data)}

    def path(self, digest):
        return self.d / "blobs/sha256" / digest[7:]

    def image(self, tars, config=None, layer_type=GZ_LAYER, config_type=OCI_CONFIG, arch=None):
        """A manifest descriptor for an image of the given layer tars."""
        blobs = [gzip.compress(t, mtime=0) for t in tars]
        cfg = {"architecture": arch or HOST, "os": "linux", "config": config or {},
               "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]}}
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": config_type, **self.put(cfg)},
                    "layers": [{"mediaType": layer_type, **self.put(b)} for b in blobs]}
        return {"mediaType": OCI_MANIFEST, **self.put(manifest)}

    def add(self, desc, ref=None, **extra):
        if ref:
            desc = dict(desc, annotations={"org.opencontainers.image.ref.name": ref})
        self.entries.append(dict(desc, **extra))
        (self.d / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                       "manifests": self.entries}))
        return desc


def manifest_of(lay, desc):
    return json.loads(lay.path(desc["digest"]).read_bytes())


def read_layer(layer):
    with layer.open() as f:
        data = f.read()
    return gzip.decompress(data) if layer.compression == "gzip" else data


TARS = [tar_of({"etc/one": b"1\n"}), tar_of({"etc/two": b"2\n", ".wh.gone": b""})]


@pytest.fixture
def layout(tmp_path):
    lay = Layout(tmp_path / "layout")
    lay.add(lay.image(TARS, {"Cmd": ["/bin/sh"]}), "latest")
    return lay


def tar_dir(src, out, mode="w"):
    with tarfile.open(out, mode) as tf:
        for name in sorted(os.listdir(src)):
            tf.add(src / name, arcname=name)
    return out


def test_layout_directory_gives_layers_in_order_verified(layout):
    with oci.open_source(layout.d) as src:
        assert src.kind == "oci" and src.choices() == ["latest"]
        img = src.select()
        assert img.ref == "latest" and img.config["config"] == {"Cmd": ["/bin/sh"]}
        assert img.digest == layout.entries[0]["digest"]
        assert [ly.diff_id for ly in img.layers] == [sha(t) for t in TARS]
        assert all(ly.media_type == GZ_LAYER and ly.compression == "gzip" for ly in img.layers)
        assert [read_layer(ly) for ly in img.layers] == TARS
        assert untar_names(read_layer(img.layers[1])) == ["etc/two", ".wh.gone"]


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz"])
def test_layout_archive_plain_and_compressed(layout, tmp_path, mode):
    archive = tar_dir(layout.d, tmp_path / "image.tar", mode)
    work = tmp_path / "work"
    work.mkdir()
    src = oci.open_source(archive, work_dir=work)
    img = src.select("latest")
    assert [read_layer(ly) for ly in img.layers] == TARS
    assert bool(os.listdir(work)) == (mode != "w")     # only a compressed archive is copied
    src.close()
    assert os.listdir(work) == []


def test_tampered_layer_detected_while_streaming(layout):
    img = oci.open_source(layout.d).select()
    blob = layout.path(img.layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(data)
    with pytest.raises(InvalidInput, match=rf"layer {img.layers[0].digest} .*does not match "
                                           "its digest"):
        read_layer(img.layers[0])
    # a consumer that stops early (a tar reader at the end-of-archive blocks) is still
    # checked when the with block ends
    with pytest.raises(InvalidInput, match="does not match its digest"):
        with img.layers[0].open() as f:
            f.read(4)
    # a consumer that fails on the damage first (gzip, tar) gets the digest error instead,
    # its own chained
    with pytest.raises(InvalidInput, match="does not match its digest") as e:
        with img.layers[0].open() as f:
            f.read(4)
            raise EOFError("compressed file ended before the end-of-stream marker")
    assert isinstance(e.value.__cause__, EOFError)
    # an error of the consumer's own on an intact blob is left as it was
    with pytest.raises(ZeroDivisionError):
        with img.layers[1].open() as f:
            f.read(3)
            1 / 0
    assert read_layer(img.layers[1]) == TARS[1]


def test_tampered_layer_in_plain_archive_detected(layout, tmp_path):
    archive = tar_dir(layout.d, tmp_path / "image.tar")
    img = oci.open_source(archive).select()
    digest = img.layers[1].digest
    with tarfile.open(archive) as tf:
        offset = tf.getmember(f"blobs/sha256/{digest[7:]}").offset_data
    with open(archive, "r+b") as f:
        f.seek(offset + 20)
        byte = f.read(1)
        f.seek(offset + 20)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(InvalidInput, match="does not match its digest"):
        read_layer(oci.open_source(archive).select().layers[1])


def test_tampered_manifest_and_config_detected_on_select(layout):
    desc = layout.entries[0]
    config = layout.path(manifest_of(layout, desc)["config"]["digest"])
    good = config.read_bytes()
    config.write_bytes(good.replace(b'"linux"', b'"Linux"'))
    with pytest.raises(InvalidInput, match="image config sha256:.* does not match its digest"):
        oci.open_source(layout.d).select()
    config.write_bytes(good)
    m = layout.path(desc["digest"])
    m.write_bytes(m.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion": 3'))
    with pytest.raises(InvalidInput, match="manifest sha256:.* does not match its digest"):
        oci.open_source(layout.d).select()


def test_missing_and_resized_blobs(layout):
    img = oci.open_source(layout.d).select()
    blob = layout.path(img.layers[1].digest)
    data = blob.read_bytes()
    blob.write_bytes(data[:-1])
    with pytest.raises(InvalidInput, match="has .* bytes but its descriptor says"):
        oci.open_source(layout.d).select()
    blob.unlink()
    with pytest.raises(InvalidInput, match=rf"layer {img.layers[1].digest} is missing"):
        oci.open_source(layout.d).select()
    layout.path(img.config_digest).unlink()
    with pytest.raises(InvalidInput, match="image config sha256:.* is missing"):
        oci.open_source(layout.d).select()


def test_unknown_media_types(tmp_path):
    lay = Layout(tmp_path / "a")
    lay.add(lay.image(TARS, layer_type="application/vnd.example.layer.v1+squashfs"), "x")
    with pytest.raises(InvalidInput, match="application/vnd.example.layer.v1\\+squashfs"):
        oci.open_source(lay.d).select()
    lay = Layout(tmp_path / "b")
    lay.add(lay.image(TARS, config_type="application/vnd.cncf.helm.config.v1+json"), "x")
    with pytest.raises(InvalidInput, match="helm.config.*not a container image config"):
        oci.open_source(lay.d).select()
    lay = Layout(tmp_path / "c")
    desc = lay.image(TARS)
    lay.add(dict(desc, mediaType="application/vnd.example.thing"), "x")
    with pytest.raises(InvalidInput, match="is 'application/vnd.oci.image.manifest.v1\\+json' "
                                           "but its descriptor says 'application/vnd.example"):
        oci.open_source(lay.d).select()


def test_index_with_several_images_selected_by_ref(tmp_path):
    lay = Layout(tmp_path / "layout")
    a = lay.add(lay.image(TARS[:1], {"Cmd": ["a"]}), "a")
    lay.add(lay.image(TARS, {"Cmd": ["b"]}), "b")
    src = oci.open_source(lay.d)
    assert src.choices() == ["a", "b"]
    with pytest.raises(InvalidInput, match="holds 2 images; choose one by name: a, b"):
        src.select()
    assert src.select("a").config["config"]["Cmd"] == ["a"]
    assert len(src.select("a").layers) == 1
    img = src.select("example.com/repo:b")              # repo:tag against a bare ref.name
    assert img.config["config"]["Cmd"] == ["b"] and len(img.layers) == 2
    assert src.select(a["digest"]).config["config"]["Cmd"] == ["a"]
    with pytest.raises(NotFound, match="has no image 'c'; it has: a, b"):
        src.select("c")


def test_nested_index_picks_the_platform(tmp_path):
    lay = Layout(tmp_path / "layout")
    host = lay.image(TARS[:1], {"Cmd": ["host"]})
    other = lay.image(TARS, {"Cmd": ["other"]}, arch=OTHER)
    attestation = lay.image([tar_of({"x": b"y"})], arch="unknown")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        dict(attestation, platform={"os": "unknown", "architecture": "unknown"}),
        dict(other, platform={"os": "linux", "architecture": OTHER}),
        dict(host, platform={"os": "linux", "architecture": HOST})]}
    lay.add({"mediaType": OCI_INDEX, **lay.put(index)}, "multi")
    src = oci.open_source(lay.d)
    img = src.select()
    assert img.config["config"]["Cmd"] == ["host"] and img.digest == host["digest"]
    assert img.ref == "multi"
    assert src.select("multi", platform=f"linux/{OTHER}").config["config"]["Cmd"] == ["other"]
    have = ", ".join(sorted(["linux/" + HOST, "linux/" + OTHER]))
    with pytest.raises(InvalidInput, match=f"no linux/s390x image; it has: {have}"):
        src.select(platform="linux/s390x")


def test_platform_entries_at_the_top_of_index_json(tmp_path):
    lay = Layout(tmp_path / "layout")
    lay.add(lay.image(TARS, {"Cmd": ["other"]}, arch=OTHER), "img",
            platform={"os": "linux", "architecture": OTHER})
    lay.add(lay.image(TARS[:1], {"Cmd": ["host"]}), "img",
            platform={"os": "linux", "architecture": HOST})
    src = oci.open_source(lay.d)
    assert src.choices() == ["img"]
    assert src.select().config["config"]["Cmd"] == ["host"]
    assert src.select("img").config["config"]["Cmd"] == ["host"]
    # two names are two images, even when both carry a platform
    lay.add(lay.image(TARS[:1], {"Cmd": ["other"]}), "img2",
            platform={"os": "linux", "architecture": HOST})
    with pytest.raises(InvalidInput, match="holds 2 images; choose one by name: img, img2"):
        oci.open_source(lay.d).select()


def test_blob_symlink_out_of_the_layout_refused(layout, tmp_path):
    img = oci.open_source(layout.d).select()
    blob = layout.path(img.layers[0].digest)
    outside = tmp_path / "outside"
    shutil.move(blob, outside)
    blob.symlink_to(outside)
    with pytest.raises(InvalidInput, match="symlink leading outside"):
        oci.open_source(layout.d).select()


def test_blob_that_is_not_a_regular_file_refused(layout):
    img = oci.open_source(layout.d).select()
    blob = layout.path(img.layers[1].digest)
    blob.unlink()
    os.mkfifo(blob)                         # opening it must neither hang nor read it
    with pytest.raises(InvalidInput, match="is not a regular file"):
        oci.open_source(layout.d).select()


def test_not_an_image(tmp_path):
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(tar_of({"etc/passwd": b"root:x:0:0::/:/bin/sh\n"}))
    with pytest.raises(InvalidInput, match="neither an OCI image layout .* nor a docker save"):
        oci.open_source(rootfs)
    with pytest.raises(NotFound, match="does not exist"):
        oci.open_source(tmp_path / "nope.tar")
    (tmp_path / "junk.tar.gz").write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        oci.open_source(tmp_path / "junk.tar.gz", work_dir=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["junk.tar.gz", "rootfs.tar"]
    os.mkfifo(tmp_path / "fifo.tar")
    with pytest.raises(InvalidInput, match="not a regular file or a directory"):
        oci.open_source(tmp_path / "fifo.tar")


# docker save archives

def docker_save(path, layers, tags=("test:1",), config=None, gz=False, mode="w"):
    """A docker save archive in the classic shape: <id>/layer.tar, <sha>.json, manifest.json;
    a layer seen twice is a symlink to the first copy, as docker writes it."""
    cfg = json.dumps({"architecture": HOST, "os": "linux", "config": config or {},
                      "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in layers]}}
                     ).encode()
    cfg_name = sha(cfg)[7:] + ".json"
    files, names, first = {cfg_name: cfg}, [], {}
    for i, t in enumerate(layers):
        name = f"{i:064x}/layer.tar"
        if t in first:
            files[name] = ("link", "../" + first[t])
        else:
            files[name] = gzip.compress(t, mtime=0) if gz else t
            first[t] = name
        names.append(name)
    files["manifest.json"] = json.dumps(
        [{"Config": cfg_name, "RepoTags": list(tags), "Layers": names}]).encode()
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_docker_save_layers_checked_against_diff_ids(tmp_path):
    layers = [TARS[0], TARS[1], TARS[0]]
    path = docker_save(tmp_path / "saved.tar", layers, config={"Cmd": ["/bin/true"]})
    src = oci.open_source(path)
    assert src.kind == "docker" and src.choices() == ["test:1"]
    img = src.select()
    assert img.ref == "test:1" and img.digest is None and img.config["config"]["Cmd"]
    assert [ly.digest for ly in img.layers] == [sha(t) for t in layers]
    assert [ly.diff_id for ly in img.layers] == [sha(t) for t in layers]
    assert all(ly.compression is None and ly.media_type.endswith("layer.v1.tar")
               for ly in img.layers)
    assert [read_layer(ly) for ly in img.layers] == layers   # the third is the symlink
    for ref in ("test:1", "docker.io/library/test:1", img.config_digest):
        assert src.select(ref).ref == ref
    with pytest.raises(NotFound, match="has no image 'test:2'; it has: test:1"):
        src.select("test:2")


def test_docker_save_tampering(tmp_path):
    path = docker_save(tmp_path / "saved.tar", TARS)
    with tarfile.open(path) as tf:
        layer = tf.getmember(f"{1:064x}/layer.tar").offset_data
        config = next(m for m in tf if m.name.endswith(".json")
                      and m.name != "manifest.json").offset_data
    with open(path, "r+b") as f:
        f.seek(layer + 600)                         # inside the second layer's file data
        f.write(b"X")
    img = oci.open_source(path).select()
    assert read_layer(img.layers[0]) == TARS[0]
    with pytest.raises(InvalidInput, match=f"layer {sha(TARS[1])} .*does not match its digest"):
        read_layer(img.layers[1])
    with open(path, "r+b") as f:
        f.seek(config + 2)
        f.write(b"X")
    with pytest.raises(InvalidInput, match="image config .*does not match its digest"):
        oci.open_source(path).select()


def test_docker_save_gzip_layers_and_gzip_archive(tmp_path):
    layers = [TARS[0], TARS[1], TARS[0]]
    path = docker_save(tmp_path / "saved.tar.gz", layers, gz=True, mode="w:gz")
    src = oci.open_source(path, work_dir=tmp_path)
    img = src.select("test:1")
    assert [ly.compression for ly in img.layers] == ["gzip"] * 3
    assert [ly.diff_id for ly in img.layers] == [sha(t) for t in layers]
    assert [read_layer(ly) for ly in img.layers] == layers
    src.close()
    assert sorted(os.listdir(tmp_path)) == ["saved.tar.gz"]
    # a Source nobody closes removes its copy when it is freed
    img = oci.open_source(path, work_dir=tmp_path).select()
    assert len(os.listdir(tmp_path)) == 2
    del img
    gc.collect()
    assert sorted(os.listdir(tmp_path)) == ["saved.tar.gz"]


def test_docker_save_symlink_out_of_the_archive_refused(tmp_path):
    path = docker_save(tmp_path / "saved.tar", TARS)
    with tarfile.open(path) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf}
    files.pop(f"{1:064x}/layer.tar")
    buf = io.BytesIO(tar_of(files))
    with tarfile.open(path, "w") as out, tarfile.open(fileobj=buf) as tf:
        for m in tf:
            out.addfile(m, tf.extractfile(m))
        link = tarfile.TarInfo(f"{1:064x}/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        out.addfile(link)
    with pytest.raises(InvalidInput, match="link to '../../../etc/passwd', outside the archive"):
        oci.open_source(path).select()


def test_docker_save_gzip_layer_checked_against_diff_id(tmp_path):
    forged = tar_of({"etc/one": b"forged"})
    path = tmp_path / "saved.tar"
    docker_save(path, [forged], gz=True)
    # rewrite the config so its diff_id claims the honest content
    with tarfile.open(path) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf}
    manifest = json.loads(files.pop("manifest.json"))
    cfg = json.loads(files.pop(manifest[0]["Config"]))
    cfg["rootfs"]["diff_ids"] = [sha(TARS[0])]
    cfg = json.dumps(cfg).encode()
    manifest[0]["Config"] = sha(cfg)[7:] + ".json"
    files.update({manifest[0]["Config"]: cfg, "manifest.json": json.dumps(manifest).encode()})
    path.write_bytes(tar_of(files))
    img = oci.open_source(path).select()
    with pytest.raises(InvalidInput, match=f"does not match its diff_id {sha(TARS[0])}"):
        read_layer(img.layers[0])


def test_docker_save_layer_count_mismatch_and_missing_layer(tmp_path):
    path = docker_save(tmp_path / "saved.tar", TARS)
    with tarfile.open(path) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf}
    manifest = json.loads(files["manifest.json"])
    manifest[0]["Layers"].append("nope/layer.tar")
    files["manifest.json"] = json.dumps(manifest).encode()
    path.write_bytes(tar_of(files))
    with pytest.raises(InvalidInput, match="lists 3 layers for test:1 but its config has 2"):
        oci.open_source(path).select()
    del files[f"{1:064x}/layer.tar"]
    manifest[0]["Layers"].pop()
    files["manifest.json"] = json.dumps(manifest).encode()
    path.write_bytes(tar_of(files))
    with pytest.raises(InvalidInput, match=rf"layer 2 \({1:064x}/layer.tar\) is missing"):
        oci.open_source(path).select()


def test_several_images_in_one_docker_save(tmp_path):
    one = docker_save(tmp_path / "1.tar", TARS[:1], tags=["a:1"])
    two = docker_save(tmp_path / "2.tar", TARS, tags=["b:1", "b:latest"])
    files = {}
    for p in (one, two):
        with tarfile.open(p) as tf:
            files.update({m.name: tf.extractfile(m).read() for m in tf if m.isreg()})
    files["manifest.json"] = json.dumps(
        json.loads(tar_member(one, "manifest.json")) + json.loads(tar_member(two, "manifest.json"))
    ).encode()
    (tmp_path / "both.tar").write_bytes(tar_of(files))
    src = oci.open_source(tmp_path / "both.tar")
    with pytest.raises(InvalidInput, match="holds 2 images; choose one by name: a:1, b:1"):
        src.select()
    assert len(src.select("a:1").layers) == 1 and len(src.select("b").layers) == 2


def tar_member(path, name):
    with tarfile.open(path) as tf:
        return tf.extractfile(name).read()


# archives made by real tools

needs_umoci = pytest.mark.skipif(not shutil.which("umoci"), reason="apt-get install umoci")


def umoci_layout(tmp_path):
    """A layout made by umoci: unpack, add a file, repack (Debian's umoci 0.4.7 `insert`
    writes layer tars without the end-of-archive blocks, umoci issue #436)."""
    lay, bundle = tmp_path / "umoci", tmp_path / "bundle"
    for args in (["init", "--layout", lay], ["new", "--image", f"{lay}:t"],
                 ["unpack", "--image", f"{lay}:t", bundle]):
        subprocess.run(["umoci", *map(str, args)], check=True, capture_output=True)
    (bundle / "rootfs/etc").mkdir()
    (bundle / "rootfs/etc/motd").write_text("made by umoci\n")
    for args in (["repack", "--image", f"{lay}:t", bundle],
                 ["config", "--image", f"{lay}:t", "--config.entrypoint", "/bin/echo",
                  "--config.cmd", "hi", "--config.env", "A=1", "--config.user", "1000:1000",
                  "--config.workingdir", "/srv", "--config.exposedports", "8080/tcp"]):
        subprocess.run(["umoci", *map(str, args)], check=True, capture_output=True)
    return lay


@needs_umoci
def test_umoci_layout_and_its_archive(tmp_path):
    lay = umoci_layout(tmp_path)
    for path in (lay, tar_dir(lay, tmp_path / "umoci.tar"),
                 tar_dir(lay, tmp_path / "umoci.tgz", "w:gz")):
        with oci.open_source(path, work_dir=tmp_path) as src:
            img = src.select("t")
            assert [ly.compression for ly in img.layers] == ["gzip"]
            with img.layers[0].open() as f, tarfile.open(fileobj=f, mode="r|gz") as tf:
                names = {m.name.lstrip("./") for m in tf}
            assert "etc/motd" in names
            assert read_layer(img.layers[0])
            assert oci.image_defaults(img.config) == {
                "cmd": ["/bin/echo", "hi"], "env": ["A=1"], "workdir": "/srv",
                "user": "1000:1000", "exposed_ports": ["8080/tcp"], "stop_signal": "SIGTERM",
                "notes": []}


@needs_umoci
@pytest.mark.skipif(not shutil.which("skopeo"), reason="apt-get install skopeo")
def test_skopeo_docker_archive(tmp_path):
    lay = umoci_layout(tmp_path)
    out = tmp_path / "docker.tar"
    subprocess.run(["skopeo", "copy", f"oci:{lay}:t", f"docker-archive:{out}:example/t:1"],
                   check=True, capture_output=True)
    src = oci.open_source(out)
    assert src.kind == "docker"
    img = src.select("example/t:1")
    oci_img = oci.open_source(lay).select("t")
    assert [ly.digest for ly in img.layers] == [ly.diff_id for ly in oci_img.layers]
    assert [read_layer(ly) for ly in img.layers] == [read_layer(ly) for ly in oci_img.layers]
    assert oci.image_defaults(img.config)["cmd"] == ["/bin/echo", "hi"]


# image config -> container defaults

def test_image_defaults_mapping():
    cfg = {"architecture": "amd64", "rootfs": {}, "config": {
        "Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"],
        "Env": ["PATH=/usr/bin:/bin", "NGINX_VERSION=1.25"], "WorkingDir": "/usr/share/nginx",
        "User": "nginx", "ExposedPorts": {"80/tcp": {}, "443/tcp": {}}, "StopSignal": "SIGQUIT",
        "Labels": {"maintainer": "x"}}}
    d = oci.image_defaults(cfg)
    assert d["cmd"] == ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    assert d["env"] == ["PATH=/usr/bin:/bin", "NGINX_VERSION=1.25"]
    assert d["workdir"] == "/usr/share/nginx" and d["stop_signal"] == "SIGQUIT"
    assert d["exposed_ports"] == ["443/tcp", "80/tcp"]
    assert d["user"] == "nginx" and "'nginx'" in d["notes"][0]
    assert oci.image_defaults(cfg["config"]) == d            # the section alone also works


def test_image_defaults_of_a_bare_config():
    assert oci.image_defaults({"rootfs": {}, "config": None}) == {
        "cmd": [], "env": [], "workdir": "/", "user": "0:0", "exposed_ports": [],
        "stop_signal": "SIGTERM", "notes": []}
    d = oci.image_defaults({"config": {"StopSignal": "3", "User": "1000", "WorkingDir": "srv"}})
    assert d["stop_signal"] == "SIGQUIT" and d["user"] == "1000" and d["workdir"] == "/"
    assert len(d["notes"]) == 2
    assert oci.image_defaults({"config": {"StopSignal": "RTMIN+3"}})["stop_signal"] == \
        "SIGRTMIN+3"
    with pytest.raises(InvalidInput, match="Cmd is 5"):
        oci.image_defaults({"config": {"Cmd": 5}})


def test_resolve_user():
    passwd = "root:x:0:0::/root:/bin/sh\nnginx:x:101:102::/:/bin/false\n"
    group = "root:x:0:\nnginx:x:102:\nwww:x:33:\n"
    assert oci.resolve_user("nginx", passwd, group) == "101:102"
    assert oci.resolve_user("nginx:www", passwd, group) == "101:33"
    assert oci.resolve_user("101", passwd, group) == "101:102"
    assert oci.resolve_user("5000", passwd, group) == "5000:0"
    assert oci.resolve_user("5000:7", passwd, group) == "5000:7"
    with pytest.raises(InvalidInput, match="user 'apache' is not in its /etc/passwd"):
        oci.resolve_user("apache", passwd, group)
