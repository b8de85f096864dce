"""Functions from the recipe's `code:` file, named in `[clean] filters` or `[generate] rank_by`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arctic_core.config import TrainerConfig
from arctic_core.errors import RecipeError


def user_function(config: TrainerConfig, name: str, key: str, folder: Path | None) -> Any:
    """The function `name` of the recipe's `code:` file (looked up beside the recipe, then here)."""
    from arctic_core.usercode import load_user_code

    module = load_user_code(config.code, folder=folder)
    if module is None:
        raise RecipeError(f"names the function {name!r}, but the recipe has no code: file", path=key)
    function = getattr(module, name, None)
    if not callable(function):
        raise RecipeError(f"{module.__file__} defines no function {name!r}", path=key)
    return function
