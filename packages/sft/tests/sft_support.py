"""Shared pieces of the arctic-sft tests: fixtures on disk, running `arctic`, reading metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def arctic(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run `arctic ARGS` in `cwd`; returns stdout+stderr, fails the test with it on a non-zero exit."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train_in_process(recipe: Path, overrides: list[str]) -> Any:
    """Load and train a recipe in this process; returns the trainer."""
    from arctic_core.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    trainer = loaded.trainer_class()(loaded.config)
    trainer.train()
    return trainer
