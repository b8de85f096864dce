"""Where a method package's bundled recipes are, installed from a wheel or from a checkout.

A method package keeps its ready-to-run recipes in `packages/<name>/recipes/` and its wheel
ships them as `arctic_<name>/recipes/` (hatch `force-include`). Recipes name their files
relative to themselves, so `arctic train $(bundled recipes)/quickstart.toml` runs from any
folder.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from types import ModuleType

from arctic_core.errors import ArcticError


def bundled_recipes(package: str | ModuleType) -> Path:
    """The recipes folder of an installed method package (`"arctic_sft"` or the module)."""
    name = package if isinstance(package, str) else package.__name__
    root = Path(str(importlib.resources.files(name)))
    for folder in (root / "recipes", root.parents[1] / "recipes"):  # wheel, then src/ layout
        if folder.is_dir():
            return folder
    raise ArcticError(f"{name} ships no recipes (looked in {root / 'recipes'})")


RECIPE_SUFFIXES = (".toml", ".yaml", ".yml")


def _package_of(method: str) -> str | None:
    from arctic_core import plugins

    found = plugins.get(method)
    if found is None or found.method is None:
        return None
    return found.method.trainer.partition(":")[0].split(".")[0]


def _recipe_type(path: Path) -> str | None:
    """The recipe's `type`, read without building anything (None when unreadable or unset)."""
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # a broken bundled recipe is listed; loading it reports the problem
        return None
    value = data.get("type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def method_recipes(method: str) -> dict[str, Path]:
    """The bundled recipes of `method` by name (file stem): its package's recipes of that type
    (or of a method it is `same_as`, as `arctic rl` lists arctic-rl's `grpo` recipes)."""
    from arctic_core import plugins

    package = _package_of(method)
    if package is None:
        return {}
    try:
        folder = bundled_recipes(package)
    except (ArcticError, ModuleNotFoundError):
        return {}
    found = {}
    for path in sorted(folder.iterdir()):
        kind = _recipe_type(path)
        if path.suffix in RECIPE_SUFFIXES and (kind is None or plugins.same_method(method, kind)):
            found[path.stem] = path
    return found


def describe(path: Path) -> str:
    """A recipe's first comment line (its one-line description), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def find_recipe(value: str, method: str | None = None) -> str:
    """`value` when it is a file, else the bundled recipe of that name (of `method`, or of any method).

    A folder that happens to share a bundled recipe's name (a `quickstart/` run folder in the
    working directory, say) does not hide the bundled recipe.
    """
    from arctic_core import plugins
    from arctic_core.errors import RecipeError

    path = Path(value)
    if path.is_file() or (not path.is_dir() and ("/" in value or path.suffix in RECIPE_SUFFIXES)):
        return value
    methods = [method] if method else plugins.method_names()
    found = [(m, recipes[value]) for m in methods if value in (recipes := method_recipes(m))]
    by_path: dict[Path, str] = {}  # one file listed under two names of one method (`embed`, `biencoder`)
    for name, path_found in found:
        if path_found not in by_path or name == _recipe_type(path_found):
            by_path[path_found] = name
    matches = [(name, path_found) for path_found, name in by_path.items()]
    if len(matches) == 1:
        return str(matches[0][1])
    if len(matches) > 1:
        options = ", ".join(f"`arctic {m} train {value}`" for m, _ in matches)
        raise RecipeError(f"several methods bundle a recipe named {value!r}: use {options}", source=value)
    if path.is_dir():
        raise RecipeError("is a folder, not a recipe file (give the recipe file inside it)", source=value)
    names = sorted({name for m in methods for name in method_recipes(m)})
    listed = f"; bundled recipes: {', '.join(names)}" if names else ""
    where = f"`arctic {method} recipes`" if method else "`arctic <method> recipes`"
    raise RecipeError(f"no recipe file or bundled recipe of that name{listed} (see {where})", source=value)
