"""`arctic rl ...` verbs beyond `train`: `eval` (held-out rewards: greedy and sampled pass@k)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from arctic_core.cli import recipe_arguments


@click.group()
def commands() -> None:
    """GRPO's verbs."""


@commands.command("eval")
@recipe_arguments
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Held-out prompt file (default: the recipe's data.eval_sources).",
)
@click.option(
    "--samples", type=int, default=0, show_default=True, help="k for sampled pass@k (0: greedy only)."
)
@click.option(
    "--threshold",
    type=float,
    default=1.0,
    show_default=True,
    help="Total reward that counts as a pass for pass@k.",
)
@click.option(
    "--output", type=click.Path(path_type=Path), default=None, help="JSON file (default <run>/rl_eval.json)."
)
def evaluate(
    recipe: str,
    overrides: tuple[str, ...],
    prompts_path: Path | None,
    samples: int,
    threshold: float,
    output: Path | None,
) -> None:
    """Score the recipe's model on held-out prompts with its reward functions (greedy; pass@k with --samples).

    A trained run: `--set model.name_or_path=<run>/checkpoints/huggingface` (or wherever its
    huggingface checkpoint was written).
    """
    from arctic_core.recipe import load_recipe
    from arctic_rl.evaluate import run

    config = load_recipe(recipe, overrides, method="grpo").config
    target = output or Path(config.run_dir) / "rl_eval.json"
    results = run(config, prompts_path, samples=samples, threshold=threshold)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        click.echo(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    click.echo(f"written to {target}")
