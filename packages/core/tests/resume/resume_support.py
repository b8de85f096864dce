"""Shared pieces of the resume tests: the recipe, the `resume_test` trainer, and running real processes.

This file is also the recipe's `code:` file. `resume_test` is the core Trainer on the real data
pipeline (generated chat data), with two test-only knobs read from the environment:
`ARCTIC_TEST_NAN_AT_STEP=N` makes step N's loss NaN, `ARCTIC_TEST_STEP_SLEEP=S` slows every
step by S seconds (so a signal surely arrives mid-run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from arctic_core.trainer import Trainer

TIMING_KEYS = {"seconds", "tokens_per_s", "peak_memory_gb", "tflops", "mfu"}


class ResumeTestTrainer(Trainer):
    name = "resume_test"

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        loss = super().loss(batch)
        if self.engine.training and os.environ.get("ARCTIC_TEST_NAN_AT_STEP") == str(self.global_step + 1):
            loss = loss * float("nan")
        return loss

    def before_optimizer_step(self) -> None:
        time.sleep(float(os.environ.get("ARCTIC_TEST_STEP_SLEEP", "0")))


RECIPE = """
type = "resume_test"
code = "{code}"
micro_batch_size = {mbs}
gradient_accumulation_steps = 2
epochs = 2
seed = 7

[model]
name_or_path = "{model}"
dtype = "fp32"

[data]
sources = ["{data}"]
max_length = 128
div_length = 16
pack_samples = {pack}
num_proc = 1
dl_num_workers = {workers}

[optimizer]
lr = 3e-3

[scheduler]
name = "linear"
num_warmup_steps = 1

[logger]
output_dir = "{out}"
progress_bar = false

[[checkpoint]]
type = "deepspeed"
auto_resume = true
save_every_n_steps = {every}
save_end_of_training = true
keep_last_n = 2

[deepspeed]
zero_optimization = {{ stage = {stage} }}
"""


def write_recipe(folder: Path, *, model: Path, data: Path, **values: Any) -> Path:
    settings = {"mbs": 2, "pack": "false", "workers": 0, "every": 4, "stage": 0, **values}
    recipe = folder / "recipe.toml"
    recipe.write_text(
        RECIPE.format(code=Path(__file__), model=model, data=data, out=folder / "run", **settings)
    )
    return recipe


def arctic_train(
    recipe: Path, *, ranks: int = 1, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m arctic_core train RECIPE [--num_gpus 2]` as a real process, in the recipe's folder."""
    command = [sys.executable, "-m", "arctic_core", "train", str(recipe)]
    if ranks > 1:
        command += ["--num_gpus", str(ranks)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARCTIC_TEST_")}
    full_env = {**clean, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        command, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=recipe.parent
    )


def start_train(recipe: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARCTIC_TEST_")}
    return subprocess.Popen(
        [sys.executable, "-m", "arctic_core", "train", str(recipe)],
        env={**clean, "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=recipe.parent,
    )


def metrics(run: Path) -> list[dict[str, Any]]:
    """The metrics lines without the timing fields (which differ between runs)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
