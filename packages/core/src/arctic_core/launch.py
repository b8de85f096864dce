"""`arctic train`: run in this process, or re-launch through DeepSpeed's launcher."""

from __future__ import annotations

from arctic_core.errors import ArcticError
from arctic_core.recipe import load_recipe


def train(
    recipe: str, overrides: list[str], launcher_args: list[str], *, method: str | None, local_rank: int | None
) -> None:
    loaded = load_recipe(recipe, overrides, method=method)
    raise ArcticError(
        f"training is not available yet in this arctic-core build (recipe {loaded.path} is valid)"
    )
