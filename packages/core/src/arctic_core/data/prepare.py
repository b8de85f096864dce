"""`arctic data prepare RECIPE`: build the tokenized-data cache without training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from arctic_core.data.factory import DataFactory
from arctic_core.data.tokenizer import load_tokenizer
from arctic_core.errors import ArcticError


def factory_for(recipe: str, overrides: Sequence[str] = ()) -> DataFactory:
    """The data factory a run of `recipe` would use (its trainer's `data_factory_class`, if it names one)."""
    from arctic_core.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    try:
        trainer_class = loaded.trainer_class()
    except Exception as exc:
        raise ArcticError(f"cannot load the trainer for type {loaded.config.type!r}: {exc}") from None
    factory_class = getattr(trainer_class, "data_factory_class", None) or DataFactory
    config = loaded.config
    return factory_class(config, load_tokenizer(config), run_dir=Path(config.run_dir))


def prepare(recipe: str, overrides: Sequence[str] = ()) -> str:
    """Prepare the data of `recipe` (with its trainer's `data_factory_class`, if it names one).

    Returns a short report: where the cache entry is and how many samples and rows it holds.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    factory = factory_for(recipe, overrides)
    config = factory.config
    from arctic_core.stops import signals_raise

    with signals_raise():  # a stop while tokenizing is reported with its phase
        factory.prepare()
    info = factory.summary()
    train = info["train"]
    state = "built" if factory.built_here else "already cached"
    lines = [
        f"data {state}: {info['cache_dir']}",
        f"train: {train['samples']} samples in {train['rows']} rows",
    ]
    if "eval" in info:
        lines.append(f"eval: {info['eval']['samples']} samples in {info['eval']['rows']} rows")
    lines.append(f"summary: {Path(config.run_dir) / 'data_summary.json'}")
    return "\n".join(lines)
