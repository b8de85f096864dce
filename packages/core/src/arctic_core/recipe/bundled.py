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
