"""`arctic swiftkv ...` verbs beyond `train`: `eval` (student vs teacher on held-out data)."""

from __future__ import annotations

from pathlib import Path

import click

from arctic_core.cli import recipe_arguments


@click.group()
def commands() -> None:
    """SwiftKV's verbs."""


@commands.command("eval")
@recipe_arguments
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON file (default <run>/swiftkv_eval.json).",
)
@click.option("--prompts", type=int, default=32, show_default=True, help="Held-out prompts decoded by both.")
@click.option("--max-new-tokens", type=int, default=16, show_default=True)
def evaluate(
    recipe: str, overrides: tuple[str, ...], output: Path | None, prompts: int, max_new_tokens: int
) -> None:
    """Teacher vs SwiftKV student: KL, next-token agreement, perplexities, greedy-generation agreement.

    The model is the recipe's `model.name_or_path` (a trained SwiftKV folder, or a teacher that is
    converted and initialised as training would): e.g. `--set model.name_or_path=<run>/checkpoints/huggingface`.
    """
    from arctic_core.recipe import load_recipe
    from arctic_swiftkv.evaluate import run, table

    config = load_recipe(recipe, overrides, method="swiftkv").config
    target = output or Path(config.run_dir) / "swiftkv_eval.json"
    results = run(config, target, prompts=prompts, max_new_tokens=max_new_tokens)
    click.echo(table(results))
    click.echo(f"written to {target}")
