"""LoRA on a mixture-of-experts model's experts (tiny Qwen3-MoE, one CPU rank, ZeRO-3), and a frozen router.

transformers 5 stores a layer's experts as 3-D parameters (`mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`); peft adapts them through `target_parameters`. Checked: only adapters
train (expert adapters among them), the router's loss is part of the loss, the merged export is a
plain transformers model whose experts changed and whose logits equal base + adapter. Full
fine-tuning with `model.frozen_parameters` on the router leaves the router bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft_support import PROBE, PeftTestTrainer, read_metrics
from test_peft_training import export_dir, run
from transformers import AutoModelForCausalLM

from arctic_core.engine.peft import MERGED_DIR
from arctic_core.testing import models

pytest_plugins = ["arctic_core.testing.fixtures"]

EXPERT_LORA = {
    "peft_type": "lora",
    "r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj"],
    "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
}


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.save_tiny_model(tmp_path_factory.mktemp("qwen3-moe"), arch="qwen3_moe", seed=0)


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE, use_cache=False).logits.float()


@pytest.mark.slow
def test_lora_on_experts_at_zero3_trains_adapters_and_merges(moe_dir, tmp_path):
    trainer: PeftTestTrainer = run(
        moe_dir,
        tmp_path / "run",
        train_iters=4,
        model={"peft_config": EXPERT_LORA},
        deepspeed={"zero_optimization": {"stage": 3}},
    )
    assert trainer.built_partitioned
    names = trainer.trainable_names
    assert names and all(".lora_" in n for n in names)
    assert any("mlp.experts" in n for n in names), "the expert parameters must carry adapters"
    records = read_metrics(trainer.config.metrics_path)
    assert all(r["aux_loss"] > 0 for r in records) and records[-1]["loss"] < records[0]["loss"]

    folder = export_dir(trainer)
    base = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    merged = AutoModelForCausalLM.from_pretrained(folder / MERGED_DIR, dtype=torch.float32).eval()
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, before[n])}
    assert "model.layers.0.mlp.experts.gate_up_proj" in changed
    assert "model.layers.0.mlp.gate.weight" not in changed
    adapted = PeftModel.from_pretrained(base, folder).eval()
    torch.testing.assert_close(logits_of(merged), logits_of(adapted), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_frozen_router_stays_bit_identical(moe_dir, tmp_path):
    trainer = run(
        moe_dir,
        tmp_path / "run",
        train_iters=2,
        model={"peft_config": None, "frozen_parameters": ["*.mlp.gate.weight"]},
        checkpoint=[{"type": "huggingface", "save_end_of_training": True}],
    )
    assert not any(n.endswith("mlp.gate.weight") for n in trainer.trainable_names)
    saved = AutoModelForCausalLM.from_pretrained(export_dir(trainer), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32)
    for (name, param), original in zip(saved.named_parameters(), base.parameters(), strict=True):
        if name.endswith("mlp.gate.weight"):
            assert torch.equal(param, original), name
        elif name.endswith("experts.gate_up_proj"):
            assert not torch.equal(param, original), name


def test_expert_names_of_transformers_4_are_refused_with_the_parameter_names():
    from arctic_core.config import ModelConfig
    from arctic_core.engine.peft import apply_adapters
    from arctic_core.errors import RecipeError

    config = ModelConfig(
        name_or_path="x", peft_config={"peft_type": "lora", "target_modules": ["experts.0.w1"]}
    )
    with pytest.raises(RecipeError, match=r"mlp\.experts\.gate_up_proj.*target_parameters") as caught:
        apply_adapters(models.tiny_model("mixtral"), config, seed=0, activation_checkpointing=False)
    assert caught.value.path == "model.peft_config"
