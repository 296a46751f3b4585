"""The image store: read-only root file systems under <root>/images/NAME/rootfs.

Containers never write here: each gets an overlay with its own upper directory.
Built-in recipes (images/NAME/recipe.json) are built on first use, since they need no network.
"""

import os
import shutil


from ..errors import InvalidInput, NotFound
from ..state import read_json, write_json


def get(store, name, build_missing=True):
    """(rootfs path, image config) of an image, building a built-in recipe if absent."""
    d = store.image_dir(name)
    cfg = read_json(d / "image.json")
    if cfg is None:
        if not build_missing or not _offline_recipe(name):
            raise NotFound(f"image '{name}' not found; build it with: ctrun image build {name}"
                           ", or import one: ctrun image import FILE {name}")
        build(store, name)
        cfg = read_json(d / "image.json")
    return d / "rootfs", cfg


def _offline_recipe(name):
    """Only recipes that need no network are built on first use (busybox); a debootstrap
    download of minutes is never started behind a user's back."""
    from . import recipe as recipes
    try:
        return recipes.load_recipe(name).get("builder") == "busybox"
    except (NotFound, InvalidInput):
        return False


def gc(store):
    """Temp directories of image builds and removals that a killed command left."""
    done = []
    if not store.images.exists():
        return done
    from ..errors import Conflict
    for entry in os.listdir(store.images):
        if not entry.startswith((".tmp-", ".old-", ".rm-", ".work-")):
            continue
        name = entry.split("-", 1)[1].rsplit("-", 1)[0]
        try:
            with store.lock("image." + name, timeout=0):  # not while a build runs
                shutil.rmtree(store.images / entry, ignore_errors=True)
                done.append(f"removed leftover image directory {entry}")
        except Conflict:
            pass
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
    """Make image NAME: fill(rootfs_dir) -> image config, in a temp directory renamed into
    place under the image's lock, so a failure or a crash never leaves a half image."""
    from ..config import check_name
    check_name(name, "image")
    store.ensure()
    with store.lock("image." + name):
        final = store.image_dir(name)
        if (final / "image.json").exists() and not replace:
            return read_json(final / "image.json")
        tmp = store.images / f".tmp-{name}-{os.urandom(4).hex()}"
        try:
            (tmp / "rootfs").mkdir(parents=True)
            cfg = fill(tmp / "rootfs")
            cfg["name"] = name
            write_json(tmp / "image.json", cfg)
            if final.exists():
                old = store.images / f".old-{name}-{os.urandom(4).hex()}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
            out.append({"name": n, **cfg, "size": _du(store.image_dir(n) / "rootfs"),
                        "users": len(users(store, n))})
    return out


def inspect(store, name):
    cfg = read_json(store.image_dir(name) / "image.json")
    if cfg is None:
        raise NotFound(f"image '{name}' not found; see: ctrun image list")
    return {**cfg, "name": name, "dir": str(store.image_dir(name)),
            "size": _du(store.image_dir(name) / "rootfs"), "containers": users(store, name)}


def _du(path):
    """Bytes used by a tree (allocated blocks; hard links counted once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def users(store, name):
    return [c for c in store.container_names()
            if (read_json(store.container_dir(c) / "config.json") or {}).get("image") == name]


def remove(store, name, force=False):
    d = store.image_dir(name)
    if not d.exists():
        raise NotFound(f"image '{name}' not found; see: ctrun image list")
    used = users(store, name)
    if used and not force:
        from ..errors import Conflict
        raise Conflict(f"image '{name}' is used by containers {', '.join(used)}; "
                       "destroy them first or use --force")
    old = store.images / f".rm-{name}-{os.urandom(4).hex()}"
    os.rename(d, old)
    shutil.rmtree(old, ignore_errors=True)


def lowerdirs(store, name):
    """The image's read-only layers, top first, as overlayfs lowerdir takes them."""
    rootfs, _ = get(store, name, build_missing=False)
    return [rootfs]
