"""Moving images in and out of the store: import (rootfs tarballs, OCI layouts and
archives, `docker save` archives), export, and templates made from containers.

Every archive is hostile: layers are applied by ctrun.images.extract, member by member,
through directory descriptors, into a fresh directory that only becomes the image when
everything verified (ctrun.images.store.install renames it into place)."""

import os
import subprocess
import tarfile

from ..errors import Conflict, InvalidInput, NotFound
from ..state import read_json
from . import store as images

DEFAULTS = {"cmd": ["/bin/sh"], "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                         "/usr/bin:/sbin:/bin"],
            "workdir": "/", "user": "0:0", "stop_signal": "SIGTERM"}


def kind_of(path):
    """"oci" (layout directory or archive), "docker" (docker save) or "rootfs" (a tarball)."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "oci-layout")):
            return "oci"
        raise InvalidInput(f"{path} is a directory but not an OCI image layout (no oci-layout "
                           "file); give a tarball, an OCI layout or a docker save archive")
    if not os.path.isfile(path):
        raise NotFound(f"{path} does not exist; give the path of an image archive")
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
        raise InvalidInput(f"{path} is not a readable tar archive ({e}); give a rootfs "
                           "tarball (tar, .gz, .xz, .zst), an OCI archive or a docker save "
                           "archive") from None
    if "oci-layout" in names:
        return "oci"
    if "manifest.json" in names:
        return "docker"
    return "rootfs"


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

    def fill(rootfs):
        if kind == "rootfs":
            stats = extract.extract_layer(path, str(rootfs), trusted=trusted)
            cfg = dict(DEFAULTS, source={"kind": "rootfs", "path": os.path.abspath(path)},
                       layers=1, skipped=stats.get("skipped", []))
        else:
            from . import oci
            import shutil
            work = store.images / f".work-{os.getpid()}"  # compressed archives unpack here
            work.mkdir(exist_ok=True)
            try:
                with oci.open_source(path, work_dir=str(work)) as src:
                    img = src.select(ref)
                    skipped = []
                    for layer in img.layers:
                        with layer.open() as f:
                            skipped += extract.extract_layer(f, str(rootfs), trusted=trusted
                                                             ).get("skipped", [])
            finally:
                shutil.rmtree(work, ignore_errors=True)
            cfg = dict(DEFAULTS)
            cfg.update({k: v for k, v in oci.image_defaults(img.config).items() if v})
            cfg.update(source={"kind": kind, "path": os.path.abspath(path), "ref": img.ref},
                       layers=len(img.layers), skipped=skipped,
                       layer_digests=[layer.digest for layer in img.layers])
        extract.verify_tree(str(rootfs))
        cfg["built_by"] = "import"
        return cfg
    return images.install(store, name, fill, replace=replace)


def export_image(store, name, out):
    """Write image NAME's root file system as a tarball (compression from the suffix)."""
    d = store.image_dir(name)
    if read_json(d / "image.json") is None:
        raise NotFound(f"image '{name}' not found; see: ctrun image list")
    mode = {".gz": "w:gz", ".tgz": "w:gz", ".xz": "w:xz"}.get(os.path.splitext(out)[1], "w")
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tf:
            for entry in sorted(os.listdir(d / "rootfs")):
                tf.add(d / "rootfs" / entry, arcname=entry)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def template(store, container, name, cdir):
    """A new image from a container: its image with its upper layer on top (vzctl-style
    templates).  The two are stacked read-only by overlayfs in a private mount namespace,
    so the container's deletions (whiteouts) apply, and copied out."""
    conf = read_json(cdir / "config.json") or {}
    base = store.image_dir(conf.get("image", ""))
    base_cfg = read_json(base / "image.json")
    if base_cfg is None:
        raise NotFound(f"the image of container '{container}' is gone; cannot make a template")

    def fill(rootfs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 1
            try:
                from .. import libc
                libc.unshare(libc.CLONE_NEWNS)
                libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
                merged = str(rootfs) + ".merged"
                os.mkdir(merged)
                libc.mount("overlay", merged, "overlay", libc.MS_RDONLY,
                           f"lowerdir={cdir / 'upper'}:{base / 'rootfs'}")
                subprocess.run(["cp", "-a", "--", merged + "/.", str(rootfs)], check=True,
                               stderr=w)
                code = 0
            except BaseException as e:  # noqa: BLE001
                os.write(w, str(e).encode())
            os._exit(code)
        os.close(w)
        err = os.read(r, 4096).decode(errors="replace").strip()
        os.close(r)
        _, st = os.waitpid(pid, 0)
        try:
            os.rmdir(str(rootfs) + ".merged")
        except OSError:
            pass
        if st != 0:
            raise InvalidInput(f"cannot make a template of '{container}': {err}")
        cfg = {k: v for k, v in base_cfg.items() if k not in ("name",)}
        if conf.get("cmd"):
            cfg["cmd"] = conf["cmd"]
        if conf.get("env"):
            cfg["env"] = conf["env"]
        cfg.update(built_by="template", source={"kind": "container", "container": container,
                                                "image": conf.get("image")})
        return cfg
    return images.install(store, name, fill)
