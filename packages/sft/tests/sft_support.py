"""Shared pieces of the arctic-sft tests: fixtures on disk, running `arctic`, reading metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arctic_core.testing.runs import arctic, read_metrics  # noqa: F401  (re-exported to the tests)

REPO = Path(__file__).resolve().parents[3]


def train_in_process(recipe: Path, overrides: list[str]) -> Any:
    """Load and train a recipe in this process; returns the trainer."""
    from arctic_core.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    trainer = loaded.trainer_class()(loaded.config)
    trainer.train()
    return trainer
