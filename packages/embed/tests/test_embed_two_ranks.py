"""Two real CPU ranks (gloo, ZeRO-1 and ZeRO-2) with global batch B equal one rank with B: losses, grad norms, weights.

One launched run per ZeRO stage (`arctic train --num_gpus 2`) on pre-batched data whose queries
have known negatives and sometimes two positives; its steps alternate in-batch negatives on and
off (`embed_ranks_support.py`), so both masks are checked in each run. Each rank scores its
queries against the gathered documents of both ranks; the gradient of a document flows back to
the rank that embedded it. The one-rank references run in this process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from embed_support import arctic, read_metrics, write_prebatched
from safetensors.torch import load_file

from arctic_core.recipe import load_recipe

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SUPPORT = Path(__file__).with_name("embed_ranks_support.py")
STEPS = 3

RECIPE = """
type = "{type}"
code = "{code}"
micro_batch_size = 1
train_iters = {steps}
seed = 3
loss_temperature = 0.05
use_in_batch_negatives = true

[model]
name_or_path = "{model}"
dtype = "fp32"
pooling = "mean"
disable_activation_checkpoint = true

[data]
root_directory = "{data}"

[optimizer]
lr = 1e-3

[deepspeed]
zero_optimization = {{ stage = {stage} }}

[logger]
output_dir = "{out}"
progress_bar = false

[[checkpoint]]
type = "sentence_transformers"
save_end_of_training = true
"""


def _recipe(
    folder: Path, model: Path, data: Path, *, kind: str = "embed_alternating_test", stage: int = 2
) -> Path:
    folder.mkdir(parents=True)
    text = RECIPE.format(
        type=kind, code=SUPPORT, steps=STEPS, model=model, data=data, out=folder / "run", stage=stage
    )
    (folder / "recipe.toml").write_text(text)
    return folder / "recipe.toml"


def _one_rank(recipe: Path) -> Path:
    """The same recipe trained in this process, on one rank."""
    loaded = load_recipe(recipe)
    loaded.trainer_class()(loaded.config).train()
    return recipe.parent / "run"


@pytest.fixture(scope="module")
def runs(encoder_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    data = write_prebatched(root / "data", batches=STEPS, queries=6, seed=4, negatives=2)
    for stage in (1, 2):
        recipe = _recipe(root / f"two_zero{stage}", encoder_dir, data, stage=stage)
        arctic("train", str(recipe), "--num_gpus", "2", cwd=root, timeout=400)
    return {
        "two_zero1": root / "two_zero1" / "run",
        "two_zero2": root / "two_zero2" / "run",
        "one": _one_rank(_recipe(root / "one", encoder_dir, data)),
        "one_always_ibn": _one_rank(_recipe(root / "ibn", encoder_dir, data, kind="embed")),
    }


@pytest.mark.parametrize("stage", [1, 2])
def test_two_ranks_equal_one_rank_with_and_without_in_batch_negatives(runs, stage):
    two = runs[f"two_zero{stage}"]
    a, b = read_metrics(runs["one"] / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b):
        for key in ("loss", "loss_full", "accuracy", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (key, x["step"])
    wa = load_file(runs["one"] / "checkpoints" / "sentence_transformers" / "model.safetensors")
    wb = load_file(two / "checkpoints" / "sentence_transformers" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=1e-5, msg=name)
    log = (two / "logs" / "rank_0.log").read_text()
    assert "2 rank(s)" in log and f"ZeRO stage {stage}" in log


def test_the_steps_really_alternate_the_negatives(runs):
    """Step 1 is the same in both one-rank runs; at step 2 (same weights) the known-only loss is lower."""
    alternating = read_metrics(runs["one"] / "metrics.jsonl")
    always = read_metrics(runs["one_always_ibn"] / "metrics.jsonl")
    assert alternating[0]["loss"] == pytest.approx(always[0]["loss"], rel=1e-6)
    assert alternating[1]["loss"] < always[1]["loss"] - 0.1
