"""Moving images in and out of the store: import (rootfs tarballs, OCI layouts and
archives, `docker save` archives), export, and templates made from containers.

Every archive is hostile: layers are applied by ctrun.images.extract, member by member,
through directory descriptors, each into a fresh directory that only becomes a stored layer
when everything verified (ctrun.images.store.install_layers renames them into place).
Layers the store already holds are not unpacked again.  A store whose file system fills up
ends the import (or pull) with one line naming it, and nothing of the image stays behind."""

import contextlib
import errno
import os
import subprocess
import tarfile

from ..errors import Conflict, CtrunError, InvalidInput, NotFound, quote
from .. import config
from . import layers
from . import store as images

DEFAULTS = {"cmd": ["/bin/sh"], "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                         "/usr/bin:/sbin:/bin"],
            "workdir": "/", "user": "0:0", "stop_signal": "SIGTERM"}


def kind_of(path):
    """"oci" (layout directory or archive), "docker" (docker save) or "rootfs" (a tarball)."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "oci-layout")):
            return "oci"
        raise InvalidInput(f"{quote(path)} is a directory but not an OCI image layout (no "
                           "oci-layout file); give a tarball, an OCI layout or a docker save "
                           "archive")
    if not os.path.isfile(path):
        raise NotFound(f"{quote(path)} does not exist; give the path of an image "
                       "archive")
    rootfs_dirs = {"bin", "etc", "usr", "lib", "sbin", "var", "root", "home"}
    try:
        names = set()
        with _open_tar(path) as tf:
            for m in tf:
                top = m.name.lstrip("./").split("/", 1)[0]
                names.add(m.name.lstrip("./").rstrip("/"))
                if top in rootfs_dirs or "oci-layout" in names or "manifest.json" in names:
                    break  # docker save puts manifest.json last: read on until it is known
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInput(f"{quote(path)} is not a readable tar archive ({e}); give a rootfs "
                           "tarball (tar, .gz, .xz, .zst), an OCI archive or a docker save "
                           "archive") from None
    if "oci-layout" in names:
        return "oci"
    if "manifest.json" in names:
        return "docker"
    return "rootfs"


@contextlib.contextmanager
def store_space(store):
    """A full file system (ENOSPC, EDQUOT) anywhere in an import or pull becomes one line
    naming the store and the fix; install_layers has removed the half image by then."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CtrunError(f"no space left on the store's file system ({store.root}); free "
                         "space there or use another --root") from None


def _open_tar(path):
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"\x28\xb5\x2f\xfd":  # zstd: stream it through the zstd tool
        p = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE)
        return tarfile.open(fileobj=p.stdout, mode="r|")
    return tarfile.open(path, mode="r|*")


def import_image(store, path, name, ref=None, trusted=False, replace=False):
    """Import an archive as image NAME; returns its image config."""
    from ..config import check_name
    from . import extract
    check_name(name, "image")
    if (store.image_dir(name) / "image.json").exists() and not replace:
        raise Conflict(f"image '{name}' already exists; remove it first (ctrun image rm "
                       f"{name}) or choose another name")
    kind = kind_of(path)
    source = {"kind": kind, "path": os.path.abspath(path)}

    def fill(stage):
        if kind == "rootfs":
            temp = stage.temp()
            stats = extract.extract_layer(path, str(temp / "diff"), trusted=trusted,
                                          overlay=True)
            extract.verify_tree(str(temp / "diff"))
            stage.add(stats["diff_id"], temp)
            cfg = dict(DEFAULTS, source=source, skipped=stats.get("skipped", []))
        else:
            from . import oci
            import shutil
            work = store.images / f".work-{os.getpid()}"  # compressed archives unpack here
            work.mkdir(exist_ok=True)
            try:
                with oci.open_source(path, work_dir=str(work)) as src:
                    img = src.select(ref)
                    cfg = stack_image(store, stage, img, trusted)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            cfg["source"] = dict(source, ref=img.ref)
        cfg["built_by"] = "import"
        return cfg
    with store_space(store):
        return images.install_layers(store, name, fill, replace=replace)


def stack_image(store, stage, img, trusted=False, fetch=None):
    """Stack the layers of an oci.Image (bottom first) on stage: a layer the store holds
    (by diff_id) is reused unread; the others are extracted, each into its own directory,
    their diff_id verified.  fetch(layer) -> binary file object of the blob (default:
    layer.open()).  Returns the image config (DEFAULTS overridden by what the image's
    config asks for)."""
    from . import extract, oci
    from .layers import MAX_LAYERS, exists
    fetch = fetch or (lambda ly: ly.open())
    if len({layer.diff_id for layer in img.layers}) > MAX_LAYERS:
        raise InvalidInput(f"image {img.ref} has {len(img.layers)} layers, more than the "
                           f"{MAX_LAYERS} a container's overlay can stack; flatten it first "
                           "(e.g. export a container of it and import the tarball)")
    skipped = []
    for i, layer in enumerate(img.layers, 1):
        if exists(store, layer.diff_id):
            stage.add(layer.diff_id)
            continue
        temp = stage.temp()
        with fetch(layer) as f:
            stats = extract.extract_layer(f, str(temp / "diff"), trusted=trusted,
                                          compression=layer.compression, overlay=True,
                                          diff_id=layer.diff_id,
                                          name=f"{i} of {img.ref} ({layer.digest})")
        extract.verify_tree(str(temp / "diff"))
        skipped += stats.get("skipped", [])
        stage.add(layer.diff_id, temp)
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in oci.image_defaults(img.config).items() if v})
    cfg.update(skipped=skipped, layer_digests=[layer.digest for layer in img.layers])
    if img.digest:
        cfg["digest"] = img.digest
    return cfg


def export_image(store, name, out):
    """Write image NAME's root file system (its layers merged) as a tarball (compression
    from the suffix)."""
    view, _ = _image(store, name)
    mode = {".gz": "w:gz", ".tgz": "w:gz", ".xz": "w:xz"}.get(os.path.splitext(out)[1], "w")
    tmp = f"{out}.{os.getpid()}.tmp"

    def write(rootfs):
        with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tf:
            for entry in sorted(os.listdir(rootfs)):
                tf.add(os.path.join(rootfs, entry), arcname=entry)
    try:
        layers.merged(view.dirs, write, store.root / "tmp")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _image(store, name):
    try:
        return images.get(store, name, build_missing=False)
    except NotFound:
        raise NotFound(f"image '{name}' not found; see: ctrun image list") from None


def template(store, container, name, cdir):
    """A new image from a container (vzctl-style templates): the container's image layers,
    shared as they are, with the container's changes on top as one new layer.  The upper
    directory already is an overlayfs layer (whiteouts, opaque dirs); only overlayfs's own
    bookkeeping xattrs are dropped from the copy.  A --userns container's files are owned
    by its shifted ids, so its merged view is copied as one layer instead."""
    conf = config.load(cdir) or config.Config(container, image="")
    try:
        view, base_cfg = images.get(store, conf.image, build_missing=False)
    except NotFound:
        raise NotFound(f"the image of container '{container}' is gone; cannot make a "
                       "template") from None
    cfg = {k: v for k, v in base_cfg.items() if k not in ("name", "layers", "digest")}
    if conf.cmd:
        cfg["cmd"] = conf.cmd
    if conf.env:
        cfg["env"] = conf.env
    cfg.update(built_by="template", source={"kind": "container", "container": container,
                                            "image": conf.image})

    def cp(src, dst):
        r = subprocess.run(["cp", "-a", "--", src + "/.", str(dst)],
                           stderr=subprocess.PIPE, text=True)
        if r.returncode:
            raise InvalidInput(f"cannot make a template of '{container}': "
                               f"{r.stderr.strip() or f'cp exited with {r.returncode}'}")

    if conf.userns:
        def fill(rootfs):
            try:
                layers.merged([cdir / "upper"] + view.dirs, lambda m: cp(m, rootfs),
                              store.root / "tmp")
            except CtrunError as e:
                raise InvalidInput(f"cannot make a template of '{container}': {e}") from None
            return cfg
        return images.install(store, name, fill)

    def stack(stage):
        for diff_id in base_cfg["layers"]:
            stage.add(diff_id)
        t = stage.temp()
        cp(str(cdir / "upper"), t / "diff")
        layers.drop_overlay_bookkeeping(t / "diff")
        stage.add(layers.tree_digest(t / "diff"), t)
        return cfg
    return images.install_layers(store, name, stack)
