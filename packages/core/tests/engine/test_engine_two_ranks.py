"""Two real CPU ranks through `arctic train RECIPE --num_gpus 2` (DeepSpeed's launcher, gloo), ZeRO-3.

One launched run is checked against one-rank runs of the same data: per-step losses (against the
plain PyTorch loop), gradients, evaluation loss (each of 5 eval samples counted once; rank 1 runs
one discarded forward), and the huggingface checkpoint gathered from ZeRO-3, which must reload
with the trained model's logits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_support import read_metrics
from test_engine_training import STEPS, _assert_same_grads, losses, reference_losses, run
from transformers import AutoModelForCausalLM

from arctic_core.engine.checkpoint import RECIPE_FILE
from arctic_core.testing import IM_END_TOKEN

pytest_plugins = ["arctic_core.testing.fixtures"]

SUPPORT = Path(__file__).with_name("engine_support.py")

RECIPE = """
type = "engine_test"
code = "{code}"
micro_batch_size = 2
gradient_accumulation_steps = 1
train_iters = {steps}
eval_interval = {steps}

[model]
name_or_path = "{model}"
dtype = "fp32"

[data]
dl_num_workers = 0
train_eval_split = [0.9, 0.1]

[optimizer]
lr = 2e-3
weight_decay = 0.1

[scheduler]
name = "linear"
num_warmup_steps = 2

[logger]
output_dir = "{out}"
progress_bar = false

[[checkpoint]]
type = "huggingface"
save_end_of_training = true

[deepspeed]
zero_optimization = {{ stage = 3 }}
"""


@pytest.fixture(scope="module")
def launched(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    recipe = out / "recipe.toml"
    recipe.write_text(RECIPE.format(code=SUPPORT, steps=STEPS, model=tiny_model_dir, out=out / "run"))
    env = {**os.environ, "ARCTIC_TEST_DUMP": "1", "ARCTIC_TEST_EVAL_ROWS": "5", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", "train", str(recipe), "--num_gpus", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=out,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out / "run"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_match_one_rank_with_twice_the_micro_batch(launched, tiny_model_dir, tmp_path, monkeypatch):
    records = read_metrics(launched / "metrics.jsonl")
    assert len(records) == STEPS
    expected, _ = reference_losses(tiny_model_dir, global_batch=4, steps=STEPS)
    assert [r["loss"] for r in records] == pytest.approx(expected, abs=1e-5)

    monkeypatch.setenv("ARCTIC_TEST_EVAL_ROWS", "5")
    single = run(
        tiny_model_dir,
        tmp_path / "one",
        micro_batch_size=4,
        gradient_accumulation_steps=1,
        eval_interval=STEPS,
        data={"train_eval_split": [0.9, 0.1]},
    )
    assert losses(single) == pytest.approx([r["loss"] for r in records], abs=1e-5)
    dumped = torch.load(launched / "record" / "record.pt")
    _assert_same_grads(dumped["grads"], single.grads, atol=1e-5)
    counts = [int(c) for c in (launched / "record" / "micro_counts.json").read_text().strip("[]").split(",")]
    assert max(counts) >= 5 * min(counts), "rank 0's micro-batches must differ in trainable tokens"
    assert records[-1]["eval_loss"] == pytest.approx(
        read_metrics(single.config.metrics_path)[-1]["eval_loss"], abs=1e-4
    )
    assert (launched / "logs" / "rank_0.log").is_file() and (launched / "logs" / "rank_1.log").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_checkpoint_from_two_ranks_reloads_with_the_trained_logits(launched):
    folder = launched / "checkpoints" / "huggingface"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    dumped = torch.load(launched / "record" / "record.pt")
    probe = torch.tensor([[11, 57, 300, 42, 999, 123, 7, 64]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=probe).logits, dumped["logits"], atol=1e-5, rtol=0)
    assert (folder / RECIPE_FILE).is_file() and (folder / "tokenizer.json").is_file()
    assert IM_END_TOKEN in (folder / "tokenizer.json").read_text()
