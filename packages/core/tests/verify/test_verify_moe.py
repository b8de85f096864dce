"""`arctic verify` on a mixture-of-experts recipe: what its checks compare, and `--shrink`'s expert sizes.

A whole verify run of a tiny Qwen3-MoE recipe takes minutes on 2 CPUs (docs/moe.md gives its table);
here: the checks that regroup samples into other micro-batches compare with the router loss off
(a per-micro-batch statistic), the others keep it, and `--shrink` makes 8 experts of 64, 2 per token.
"""

from __future__ import annotations

from pathlib import Path

from arctic_core.recipe import load_recipe
from arctic_core.testing import models
from arctic_core.verify.base import VerifyContext
from arctic_core.verify.checks import NO_ROUTER_LOSS, REFERENCE, core_checks
from arctic_core.verify.shrink import shrink_kwargs

pytest_plugins = ["arctic_core.testing.fixtures"]


def context(model_dir: Path, tmp_path: Path) -> VerifyContext:
    data = {"type": "sft", "model": {"name_or_path": str(model_dir)}, "data": {"sources": ["x.jsonl"]}}
    recipe = load_recipe(None, data=data)
    return VerifyContext(config=recipe.config, trainer_class=recipe.trainer_class(), samples=16, steps=5)


def test_regrouping_checks_turn_the_router_loss_off_only_for_moe(tmp_path, tiny_model_dir):
    moe = context(models.save_tiny_model(tmp_path / "moe", arch="qwen3_moe"), tmp_path)
    dense = context(tiny_model_dir, tmp_path)
    for check in core_checks():
        if check.name not in ("packing", "accumulation", "ranks"):
            continue
        names = {v.name for v in check.variants(moe)}
        regroups = check.name != "packing"
        assert (NO_ROUTER_LOSS.name in names) == regroups and (REFERENCE.name in names) != regroups
        assert NO_ROUTER_LOSS.name not in {v.name for v in check.variants(dense)}
    assert "model.router_aux_loss_coef=0" in NO_ROUTER_LOSS.set


def test_shrink_makes_few_small_experts():
    from transformers import Qwen3MoeConfig

    kwargs = shrink_kwargs(Qwen3MoeConfig(num_experts=128, num_experts_per_tok=8, mlp_only_layers=[3]))
    assert kwargs["num_experts"] == 8 and kwargs["num_experts_per_tok"] == 2
    assert kwargs["moe_intermediate_size"] == 64 and kwargs["mlp_only_layers"] == []
