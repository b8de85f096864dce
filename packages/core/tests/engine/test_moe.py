"""Mixture-of-experts models (`arctic_core.engine.moe`): leaf modules, the router loss, expert load.

The router loss recorded by hooks must equal the model's own `aux_loss` (transformers' forward with
`output_router_logits=True`), padding excluded. Two launched CPU ranks at ZeRO-3 (micro-batch 1)
must give the per-step loss (LM + c·aux), `aux_loss` and expert load of one rank accumulating the
same micro-batches, on a batch where one rank routes no token to an expert the other rank uses.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_support import RecorderTrainer, read_metrics
from test_engine_training import run

from arctic_core.engine import moe
from arctic_core.testing import models

pytest_plugins = ["arctic_core.testing.fixtures"]

SUPPORT = Path(__file__).with_name("engine_support.py")
STEPS = 3
ARCHS = ("qwen3_moe", "mixtral", "olmoe")

RECIPE = """
type = "engine_test"
code = "{code}"
micro_batch_size = 1
gradient_accumulation_steps = 1
train_iters = {steps}

[model]
name_or_path = "{model}"
dtype = "fp32"
router_aux_loss_coef = 0.5

[data]
dl_num_workers = 0

[optimizer]
lr = 2e-3
weight_decay = 0.1

[scheduler]
name = "linear"
num_warmup_steps = 2

[logger]
output_dir = "{out}"
progress_bar = false

[deepspeed]
zero_optimization = {{ stage = 3 }}
"""


class Options:
    moe_leaf_modules: list[str] = []
    router_aux_loss_coef = None


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {arch: models.save_tiny_model(root / arch, arch=arch, seed=0) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_router_loss_is_the_models_own_and_blocks_are_leaves(arch):
    model = models.tiny_model(arch, seed=0)
    recorder = moe.prepare_moe(model, Options, logging.getLogger("test"))
    assert recorder is not None and recorder.layers == 2 and recorder.num_experts == 8
    leaves = [m for m in model.modules() if getattr(m, "_z3_leaf", False)]
    assert len(leaves) == 2 and type(leaves[0]).__name__ == moe.FAMILIES[arch].block
    ids = torch.randint(10, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding must not count

    recorder.start()
    model(input_ids=ids, attention_mask=mask, use_cache=False)
    aux = recorder.take()
    model(input_ids=ids, attention_mask=mask, use_cache=False)  # not recording: ignored
    assert recorder.take() is None
    expected = model(input_ids=ids, attention_mask=mask, use_cache=False, output_router_logits=True).aux_loss
    assert aux is not None and float(aux.detach()) == pytest.approx(float(expected), abs=1e-6)
    assert recorder.step_counts.sum(dim=1).tolist() == [19 * 2, 19 * 2]  # 19 real tokens, top 2
    assert recorder.coef == model.config.router_aux_loss_coef
    recorder.remove()


def test_expert_load_metrics():
    counts = torch.tensor([[4.0, 0.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    assert moe.expert_load(counts) == {"expert_load_max": [2.0, 1.0], "experts_unused": [0.25, 0.0]}


def test_unknown_leaf_module_is_refused():
    from arctic_core.errors import RecipeError

    class Wrong(Options):
        moe_leaf_modules = ["NoSuchBlock"]

    with pytest.raises(RecipeError, match="NoSuchBlock"):
        moe.prepare_moe(models.tiny_model("qwen3_moe"), Wrong, logging.getLogger("test"))


class RoutingRecorder(RecorderTrainer):
    """Also records each micro-batch's tokens per expert `[layers, experts]`."""

    name = "moe_engine_test"
    record_grads = False

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = super().loss(batch)
        recorder = self.router
        ((mask, logits),) = recorder.forwards
        self.routed = [*getattr(self, "routed", []), moe.expert_counts(logits, recorder.top_k, 8, mask)]
        return out


@pytest.fixture(scope="module", params=ARCHS)
def launched(request, moe_dirs, tmp_path_factory) -> tuple[str, Path]:
    arch = request.param
    out = tmp_path_factory.mktemp(f"two-ranks-{arch}")
    recipe = out / "recipe.toml"
    recipe.write_text(RECIPE.format(code=SUPPORT, steps=STEPS, model=moe_dirs[arch], out=out / "run"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", "train", str(recipe), "--num_gpus", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=out,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return arch, out / "run"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_at_zero3_match_one_rank_accumulating(launched, moe_dirs, tmp_path):
    arch, folder = launched
    records = read_metrics(folder / "metrics.jsonl")
    assert len(records) == STEPS
    single = run(
        moe_dirs[arch],
        tmp_path / "one",
        trainer_class=RoutingRecorder,
        micro_batch_size=1,
        gradient_accumulation_steps=2,
        train_iters=STEPS,
        model={"router_aux_loss_coef": 0.5},
    )
    alone = read_metrics(single.config.metrics_path)
    for key in ("loss", "aux_loss"):
        assert [r[key] for r in records] == pytest.approx([r[key] for r in alone], abs=1e-5), key
    for key in ("expert_load_max", "experts_unused"):
        assert [r[key] for r in records] == [r[key] for r in alone], key
    assert all(r["aux_loss"] > 0.5 for r in records)  # top-2 of 8: A >= 1 when balanced, 0 if it were off
    rank0, rank1 = single.routed[0], single.routed[1]  # step 1: rank 0's and rank 1's micro-batches
    assert bool(((rank0 == 0) & (rank1 > 0)).any() | ((rank1 == 0) & (rank0 > 0)).any()), (
        "the batch must have a rank that routes no token to an expert the other rank uses"
    )
