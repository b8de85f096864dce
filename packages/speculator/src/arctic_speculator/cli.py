"""`arctic speculator ...` verbs beyond `train`: `generate`, `eval`, `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from arctic_core.cli import recipe_arguments

ALIASES = ("speculator", "arctic-lstm-speculator", "spec-decode")


def _config(recipe: str, overrides: tuple[str, ...]) -> Any:
    """The recipe's config; its `type` may be one of ArcticTraining's aliases of the method."""
    from arctic_core.recipe import load_recipe
    from arctic_core.recipe.loader import read_recipe

    raw_type = read_recipe(recipe).get("type")
    return load_recipe(recipe, overrides, method=None if raw_type in ALIASES else "speculator").config


@click.group()
def commands() -> None:
    """Speculator verbs."""


@commands.command("generate")
@recipe_arguments
def generate(recipe: str, overrides: tuple[str, ...]) -> None:
    """The base model answers `[generate] sources`' prompts into `[generate] output_dir` (resumable).

    Ranks: run one process per rank with RANK and WORLD_SIZE set (any launcher); each takes its shards.
    """
    import os

    from arctic_speculator.generate import run_generation

    config = _config(recipe, overrides)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    folder = run_generation(config, rank, world, log=click.echo)
    click.echo(f"generated data in {folder}")


@commands.command("eval")
@recipe_arguments
@click.option(
    "--speculator",
    type=click.Path(path_type=Path),
    default=None,
    help="Speculator folder (default [evaluate] speculator_path).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON file (default <run>/speculator_eval.json).",
)
def evaluate(recipe: str, overrides: tuple[str, ...], speculator: Path | None, output: Path | None) -> None:
    """Per-head acceptance, tau, and greedy speculative decoding vs plain greedy (speed-up, identity)."""
    from arctic_speculator.evaluate import run_evaluation, table, write_report

    config = _config(recipe, overrides)
    report = run_evaluation(config, speculator)
    click.echo(table(report))
    click.echo(f"written to {write_report(report, config, output)}")


@commands.command("export")
@recipe_arguments
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="A speculator folder: Arctic's, or ArcticTraining's (pytorch_model.bin + config.json).",
)
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Folder to write.")
def export(recipe: str, overrides: tuple[str, ...], source: Path, output: Path) -> None:
    """Write the vLLM / ArcticInference layout, with the recipe's base model recorded (and checked)."""
    from arctic_speculator.export import export_speculator, load_speculator
    from arctic_speculator.generate import load_base_model

    config = _config(recipe, overrides)
    base = load_base_model(config)
    speculator = load_speculator(source, base=base)
    click.echo(f"exported to {export_speculator(output, speculator, base, config.model.name_or_path)}")
