"""LoRA under ZeRO-3 on two real CPU ranks (`arctic train RECIPE --num_gpus 2`, gloo).

The launched run must match a one-rank ZeRO-0 run of the same global batch step for step, and its
export (adapter gathered from both ranks' partitions, and the merged model) must reload with the
logits the trained model gave.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft_support import PROBE, PeftTestTrainer, read_metrics
from transformers import AutoModelForCausalLM

from arctic_core.engine.peft import MERGED_DIR
from arctic_core.recipe import load_recipe

pytest_plugins = ["arctic_core.testing.fixtures"]

SUPPORT = Path(__file__).with_name("peft_support.py")
STEPS = 4

RECIPE = """
type = "peft_test"
code = "{code}"
micro_batch_size = 2
gradient_accumulation_steps = {gas}
train_iters = {steps}

[model]
name_or_path = "{model}"
dtype = "fp32"
peft_config = {{ peft_type = "LORA", r = 4, lora_alpha = 8, lora_dropout = 0.0, target_modules = ["q_proj", "v_proj"] }}

[data]
dl_num_workers = 0

[optimizer]
lr = 2e-2

[scheduler]
name = "constant"
num_warmup_steps = 0

[logger]
output_dir = "{out}"
progress_bar = false

[[checkpoint]]
type = "huggingface"
save_end_of_training = true
merge_adapters = true

[deepspeed]
zero_optimization = {{ stage = {stage} }}
"""


def recipe_text(model_dir: Path, out: Path, *, gas: int, stage: int) -> str:
    return RECIPE.format(code=SUPPORT, gas=gas, steps=STEPS, model=model_dir, out=out, stage=stage)


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_lora_on_two_ranks_matches_one_rank_and_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(tiny_model_dir, tmp_path / "run", gas=1, stage=3))
    env = {**os.environ, "ARCTIC_TEST_DUMP": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", "train", str(recipe), "--num_gpus", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    launched = tmp_path / "run"

    single_data = tomllib.loads(recipe_text(tiny_model_dir, tmp_path / "single", gas=2, stage=0))
    del single_data["code"]  # this process has imported peft_support already
    single = PeftTestTrainer(load_recipe(None, data=single_data).config)
    single.train()
    two = [r["loss"] for r in read_metrics(launched / "metrics.jsonl")]
    one = [r["loss"] for r in read_metrics(single.config.metrics_path)]
    assert two == pytest.approx(one, abs=1e-5)
    assert two[-1] < two[0]

    dumped = torch.load(launched / "record" / "record.pt")
    assert all("lora_" in name for name in dumped["trainable"])
    folder = launched / "checkpoints" / "huggingface"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, folder).eval()
    merged = AutoModelForCausalLM.from_pretrained(folder / MERGED_DIR, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=PROBE).logits, dumped["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(merged(input_ids=PROBE).logits, dumped["logits"], atol=1e-5, rtol=0)
