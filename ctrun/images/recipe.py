"""Image recipes: JSON data under images/<name>/recipe.json saying how to build a root fs.

Recipes are looked up in the source tree's images/ folder (running from a checkout) and
then in <sys.prefix>/share/ctrun/images (where a pip install puts them).
"""

import json
import re
import sys
from pathlib import Path

from ..errors import InvalidInput, NotFound

RECIPE_FILE = "recipe.json"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# builder name -> module with build(recipe, rootfs) -> config; imported only when used
BUILDERS = {"busybox": "ctrun.images.busybox", "debootstrap": "ctrun.images.debootstrap"}


def search_dirs(images_dir: Path | None = None) -> list[Path]:
    if images_dir is not None:
        return [Path(images_dir)]
    # ctrun/images/recipe.py -> the checkout root holding ctrun/ and images/
    return [Path(__file__).resolve().parents[2] / "images",
            Path(sys.prefix) / "share" / "ctrun" / "images"]


def list_recipes(images_dir: Path | None = None) -> list[str]:
    names = set()
    for d in search_dirs(images_dir):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        names.update(e.name for e in entries
                     if _NAME_RE.fullmatch(e.name) and (e / RECIPE_FILE).is_file())
    return sorted(names)


def load_recipe(name: str, images_dir: Path | None = None) -> dict:
    path = None
    if _NAME_RE.fullmatch(name):
        path = next((p for p in (d / name / RECIPE_FILE for d in search_dirs(images_dir))
                     if p.is_file()), None)
    if path is None:
        known = ", ".join(list_recipes(images_dir)) or "none"
        raise NotFound(f"no image recipe '{name}'; known recipes: {known}")
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"image recipe '{name}' is unreadable ({e}); fix {path}") from None
    if not isinstance(recipe, dict):
        raise InvalidInput(f"image recipe '{name}' is not a json object; fix {path}")
    if recipe.get("name") != name:
        raise InvalidInput(f"image recipe '{name}' names itself {recipe.get('name')!r}; "
                           f"fix \"name\" in {path}")
    if recipe.get("builder") not in BUILDERS:
        raise InvalidInput(f"image recipe '{name}' has unknown builder "
                           f"{recipe.get('builder')!r} (known: {', '.join(BUILDERS)}); "
                           f"fix {path}")
    if not isinstance(recipe.get("config"), dict):
        raise InvalidInput(f"image recipe '{name}' lacks a \"config\" object; fix {path}")
    return recipe


def build(recipe: dict, rootfs: Path) -> dict:
    """Run the recipe's builder into the empty directory rootfs; returns the image config."""
    import importlib
    return importlib.import_module(BUILDERS[recipe["builder"]]).build(recipe, Path(rootfs))
