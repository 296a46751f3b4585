"""The image store: <root>/images/NAME/image.json, each image an ordered list of shared,
content-addressed layers (ctrun.images.layers) plus the defaults of its containers.

Containers never write here: each gets an overlay with the image's layers as its lower
directories and its own upper directory.  Built-in recipes (images/NAME/recipe.json) are
built on first use, since they need no network.
"""

import os
import shutil
from pathlib import Path


from .. import config
from ..errors import CtrunError, InvalidInput, NotFound
from ..state import private_dir, read_json, write_json


def get(store, name, build_missing=True):
    """(layers.View of its layers, image config) of an image, building a built-in recipe if
    absent.  The view's .dirs are the layer directories, top first (see lowerdirs)."""
    from .layers import View
    d = store.image_dir(name)
    cfg = read_json(d / "image.json")
    if cfg is None:
        if not build_missing or not _offline_recipe(name):
            raise NotFound(f"image '{name}' not found; build it with: ctrun image build {name}"
                           f", or import one: ctrun image import FILE {name}")
        build(store, name)
        cfg = read_json(d / "image.json")
    return View(_dirs(store, name, cfg)), cfg


def _dirs(store, name, cfg):
    """Layer directories of an image, top first; a layer listed twice counts once, at its
    topmost place (what it adds and hides there covers its lower copy), since overlayfs
    refuses the same directory twice."""
    from . import layers
    ids = cfg.get("layers")
    if not isinstance(ids, list):
        raise CtrunError(f"image '{name}' is damaged: its image.json lists no layers; remove "
                         f"it (ctrun image rm {name}) and build or import it again")
    out = []
    for diff_id in reversed(ids):
        d = layers.diff_dir(store, diff_id)
        if d not in out:
            out.append(d)
    return out


def _offline_recipe(name):
    """Only recipes that need no network are built on first use (busybox); a debootstrap
    download of minutes is never started behind a user's back."""
    from . import recipe as recipes
    try:
        return recipes.load_recipe(name).get("builder") == "busybox"
    except (NotFound, InvalidInput):
        return False


def gc(store):
    """Temp directories of image builds and removals that a killed command left, and the
    layers no image lists any more."""
    from . import layers
    from ..errors import Conflict
    done = []
    for parent in (store.images, layers.root(store)):
        try:
            entries = os.listdir(parent)
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.startswith((".tmp-", ".old-", ".rm-", ".work-")):
                continue
            name = entry.split("-", 1)[1].rsplit("-", 1)[0]
            try:
                with store.lock("image." + name, timeout=0):  # not while a build runs
                    shutil.rmtree(parent / entry, ignore_errors=True)
                    done.append(f"removed leftover image directory {entry}")
            except Conflict:
                pass
    try:
        for entry in os.listdir(store.root / "tmp"):
            if entry.startswith(".mnt-"):    # mount points of killed copies (empty)
                try:
                    os.rmdir(store.root / "tmp" / entry)
                except OSError:
                    pass
    except FileNotFoundError:
        pass
    if layers.root(store).exists():
        with store.lock(layers.LOCK):
            done += [f"removed unused layer {d}" for d in layers.prune(store)]
    return done


def build(store, name, force=False, **options):
    """Build image NAME from its recipe; options (suite, variant, include) go to the builder."""
    from . import recipe as recipes
    try:
        rec = recipes.load_recipe(name)
    except NotFound:
        raise NotFound(f"image '{name}' not found and no built-in recipe has that name; "
                       f"known recipes: {', '.join(recipes.list_recipes())}") from None
    options = {k: v for k, v in options.items() if v is not None}
    if rec.get("builder") == "busybox":
        if options:
            raise InvalidInput(f"image recipe '{name}' takes no "
                               f"{', '.join('--' + k for k in options)}; drop it")
        from . import busybox
        fill = lambda rootfs: busybox.build(rec, rootfs)  # noqa: E731
    elif rec.get("builder") == "debootstrap":
        from . import debootstrap
        fill = lambda rootfs: debootstrap.build(rec, rootfs, **options)  # noqa: E731
    else:
        raise InvalidInput(f"image recipe '{name}' uses builder {rec.get('builder')!r}, "
                           "which this version of ctrun cannot run yet")
    if options and not force and (store.image_dir(name) / "image.json").exists():
        from ..errors import AlreadyExists
        raise AlreadyExists(f"image '{name}' exists; add --force to rebuild it with "
                            f"{', '.join('--' + k for k in options)}")
    return install(store, name, fill, replace=force)


def install(store, name, fill, replace=False):
    """Make image NAME of one layer: fill(empty dir) -> image config."""
    from . import layers

    def stack(stage):
        temp = stage.temp()
        cfg = fill(temp / "diff")
        stage.add(layers.tree_digest(temp / "diff"), temp)
        return cfg
    return install_layers(store, name, stack, replace)


def install_layers(store, name, fill, replace=False):
    """Make image NAME: fill(layers.Stage) stacks its layers and returns the image config.
    Under the image's lock; the new layers and image.json are renamed into place under the
    "layers" lock, so a failure or a crash never leaves a half image (at worst unused
    layers or temp directories, which gc removes)."""
    from ..config import check_name
    from . import layers
    check_name(name, "image")
    store.ensure()
    with store.lock("image." + name):
        final = store.image_dir(name)
        if (final / "image.json").exists() and not replace:
            return read_json(final / "image.json")
        stage = layers.Stage(store, name)
        tmp = store.images / f".tmp-{name}-{os.urandom(4).hex()}"
        try:
            cfg = fill(stage)
            cfg["name"] = name
            cfg["layers"] = stage.diff_ids
            private_dir(tmp)
            write_json(tmp / "image.json", cfg)
            with store.lock(layers.LOCK):
                stage.commit()
                if final.exists():
                    old = store.images / f".old-{name}-{os.urandom(4).hex()}"
                    os.rename(final, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.rename(tmp, final)
                if replace:
                    layers.prune(store)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            stage.cleanup()
        return cfg


def list_images(store):
    out = []
    try:
        names = sorted(n for n in os.listdir(store.images) if not n.startswith("."))
    except FileNotFoundError:
        return out
    for n in names:
        cfg = read_json(store.image_dir(n) / "image.json")
        if cfg is not None:
            out.append({"name": n, **cfg, "size": _size(store, n, cfg),
                        "users": len(users(store, n))})
    return out


def inspect(store, name):
    cfg = read_json(store.image_dir(name) / "image.json")
    if cfg is None:
        raise NotFound(f"image '{name}' not found; see: ctrun image list")
    return {**cfg, "name": name, "dir": str(store.image_dir(name)),
            "size": _size(store, name, cfg), "containers": users(store, name),
            "layer_dirs": [str(d) for d in _dirs(store, name, cfg)]}


def _size(store, name, cfg):
    """Bytes of the image's layers (shared layers counted in every image that lists them)."""
    from . import layers
    total = 0
    for d in _dirs(store, name, cfg):
        meta = read_json(d.parent / "layer.json")
        total += meta["size"] if meta and "size" in meta else layers.du(d)
    return total


def users(store, name):
    return [c for c in store.container_names()
            if getattr(config.load(store.container_dir(c)), "image", None) == name]


def remove(store, name, force=False):
    d = store.image_dir(name)
    if not d.exists():
        raise NotFound(f"image '{name}' not found; see: ctrun image list")
    used = users(store, name)
    if used and not force:
        from ..errors import Conflict
        raise Conflict(f"image '{name}' is used by containers {', '.join(used)}; "
                       "destroy them first or use --force")
    from . import layers
    with store.lock(layers.LOCK):   # no layer of it is shared by an image being committed
        old = store.images / f".rm-{name}-{os.urandom(4).hex()}"
        os.rename(d, old)
        layers.prune(store)
    shutil.rmtree(old, ignore_errors=True)


def lowerdirs(store, name):
    """The image's read-only layers, top first, as overlayfs lowerdir takes them (for more
    than a few layers name them by descriptor: runtime.rootfs.lowerdir)."""
    view, _ = get(store, name, build_missing=False)
    return [Path(d) for d in view.dirs]


def copy_image(src, dst, name):
    """Put image NAME of store src into store dst (the lab's private store takes the user's
    images this way).  Layers are read-only and content-addressed, so their files are hard
    linked where both stores share a file system (`cp -al`), else copied (`cp -a`)."""
    import subprocess
    from . import layers
    cfg = read_json(src.image_dir(name) / "image.json")
    if cfg is None:
        raise NotFound(f"image '{name}' not found in {src.root}; see: ctrun image list")
    srcdirs = _dirs(src, name, cfg)[::-1]                   # bottom first, as image.json

    def fill(stage):
        for diff_id, d in zip(cfg["layers"], srcdirs):
            if layers.exists(dst, diff_id):
                stage.add(diff_id)
                continue
            t = stage.temp()
            os.rmdir(t / "diff")
            for flags in ("-al", "-a"):
                r = subprocess.run(["cp", flags, "--", str(d), str(t / "diff")],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    break
                shutil.rmtree(t / "diff", ignore_errors=True)
            else:
                raise CtrunError(f"cannot copy a layer of image '{name}': {r.stderr.strip()}")
            stage.add(diff_id, t)
        return {k: v for k, v in cfg.items() if k not in ("name", "layers")}
    return install_layers(dst, name, fill)
