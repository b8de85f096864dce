"""Two real CPU ranks (gloo) with global batch B equal one rank with B: loss, gradient norm and weights.

ZeRO 1 and 2, with and without in-batch negatives, on pre-batched data whose queries have
known negatives and sometimes two positives. Each rank scores its queries against the gathered
documents of both ranks; the gradient of a document flows back to the rank that embedded it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from embed_support import arctic, read_metrics, write_prebatched
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

RECIPE = """
type = "embed"
micro_batch_size = 1
train_iters = 3
seed = 3
loss_temperature = 0.05
use_in_batch_negatives = {ibn}

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

TIMING = {"seconds", "tokens_per_s", "peak_memory_gb"}


def _run(root: Path, name: str, model: Path, data: Path, *, ranks: int, stage: int, ibn: bool) -> Path:
    folder = root / name
    folder.mkdir()
    text = RECIPE.format(model=model, data=data, out=folder / "run", stage=stage, ibn=str(ibn).lower())
    (folder / "recipe.toml").write_text(text)
    launch = ["--num_gpus", "2"] if ranks > 1 else []
    arctic("train", str(folder / "recipe.toml"), *launch, cwd=folder, timeout=400)
    return folder / "run"


@pytest.fixture(scope="module")
def runs(encoder_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    data = write_prebatched(root / "data", batches=3, queries=8, seed=4, negatives=2)
    plan = {
        "one_ibn": (1, 1, True),
        "z1_ibn": (2, 1, True),
        "z2_ibn": (2, 2, True),
        "one_known": (1, 2, False),
        "z2_known": (2, 2, False),
    }
    return {
        name: _run(root, name, encoder_dir, data, ranks=r, stage=s, ibn=i) for name, (r, s, i) in plan.items()
    }


def _compare(one: Path, two: Path) -> None:
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for key in ("loss", "loss_full", "accuracy", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (key, x["step"])
    wa = load_file(one / "checkpoints" / "sentence_transformers" / "model.safetensors")
    wb = load_file(two / "checkpoints" / "sentence_transformers" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("two", ["z1_ibn", "z2_ibn"])
def test_two_ranks_equal_one_rank_with_in_batch_negatives(runs, two):
    _compare(runs["one_ibn"], runs[two])
    log = (runs[two] / "logs" / "rank_0.log").read_text()
    assert "2 rank(s)" in log


def test_two_ranks_equal_one_rank_with_known_negatives_only(runs):
    _compare(runs["one_known"], runs["z2_known"])
    with_ibn, known = (
        read_metrics(runs["one_ibn"] / "metrics.jsonl"),
        read_metrics(runs["one_known"] / "metrics.jsonl"),
    )
    assert with_ibn[0]["loss"] > known[0]["loss"]  # more negatives, a harder first step
