"""End to end through `arctic sft train`: sequence parallelism is step-for-step data parallelism.

Two CPU ranks as one sequence-parallel group (MLPs tiled, checkpointed layer inputs offloaded) with
4 packed rows per micro-batch (sp=2) see, at every optimizer step, the samples that two data-parallel replicas with 2 rows each would see, and
that one rank with 4 rows sees. The reference here is that one-rank run, in this process (core's
own tests hold one rank with 4 rows equal to two replicas with 2, and a second two-rank launch
costs two minutes on the CI machine). Per-step losses, gradient norms, token counts and the
trained weights must agree, and plain transformers loads the sequence-parallel run's checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from arctic_core.recipe import bundled_recipes, load_recipe
from arctic_core.testing.runs import arctic, read_metrics

QUICKSTART = bundled_recipes("arctic_sft") / "quickstart"

RECIPE = """
type = "sft"
train_iters = 3
seed = 0
[model]
name_or_path = "{quickstart}/tiny-model"
from_config = true
dtype = "fp32"
[data]
sources = ["{data}"]
max_length = 96
pack_samples = true
dl_num_workers = 0
[optimizer]
lr = 1e-3
[logger]
progress_bar = false
[[checkpoint]]
type = "huggingface"
save_end_of_training = true
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_sp2_trains_like_dp2_with_matching_batch_counts(tmp_path):
    recipe = tmp_path / "recipe.toml"
    data = tmp_path / "train.jsonl"  # 64 conversations: about 20 packed rows, enough for 3 steps of 4
    data.write_text("".join((QUICKSTART / "train.jsonl").read_text().splitlines(keepends=True)[:64]))
    recipe.write_text(RECIPE.format(quickstart=QUICKSTART, data=data))
    runs = ("one", "sp")
    sets = ["micro_batch_size=4", "sequence_parallel_size=2", f"logger.output_dir={tmp_path / 'sp'}"]
    sets += ["tiled_mlp_compute=true", "activation_checkpoint_cpu_offload=true"]  # exact: same numbers
    arctic(
        "sft", "train", str(recipe), "--num_gpus", "2", *[a for o in sets for a in ("--set", o)], cwd=tmp_path
    )
    loaded = load_recipe(recipe, ["micro_batch_size=4", f"logger.output_dir={tmp_path / 'one'}"])
    loaded.trainer_class()(loaded.config).train()
    dp, sp = (read_metrics(tmp_path / name / "metrics.jsonl") for name in runs)
    assert len(dp) == len(sp) == 3
    for a, b in zip(dp, sp):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), a["step"]
        assert (a["tokens"], a["trainable_tokens"]) == (b["tokens"], b["trainable_tokens"])
    assert dp[-1]["loss"] < dp[0]["loss"]  # it trained
    weights = [load_file(tmp_path / n / "checkpoints" / "huggingface" / "model.safetensors") for n in runs]
    assert weights[0].keys() == weights[1].keys()  # the tiled MLPs saved under the MLPs' own names
    _, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "sp" / "checkpoints" / "huggingface", output_loading_info=True
    )
    assert not any(info.values()), (
        info
    )  # plain transformers loads it: nothing missing, unexpected or mismatched
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=2e-5, msg=key)
