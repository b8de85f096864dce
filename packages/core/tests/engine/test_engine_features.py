"""A real one-rank run with the test-only `demo_feature` on: the trainer calls the feature's hooks.

`demo_freeze_embeddings` (transform_model) must leave the input embeddings bit-identical while
the rest trains; `demo_mask_first_labels` (prepare_batch) must reach the loss with the first
labels of every row masked and the trainable tokens recounted.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_support import RecorderTrainer
from transformers import AutoModelForCausalLM

from arctic_core.recipe import load_recipe

pytest_plugins = ["arctic_core.testing.fixtures"]

MASKED = 3


class LabelRecorder(RecorderTrainer):
    """Records the labels and token counts that reach the loss."""

    record_grads = False

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.engine.training:
            self.labels_seen.append(batch["labels"].cpu().clone())
            self.counts_seen.append(int(batch["num_trainable_tokens"]))
        return super().loss(batch)

    def setup_data(self) -> None:
        super().setup_data()
        self.labels_seen: list[torch.Tensor] = []
        self.counts_seen: list[int] = []


@pytest.mark.slow
def test_a_run_calls_the_demo_feature_hooks(tiny_model_dir, tmp_path):
    recipe = load_recipe(
        None,
        data={
            "type": "engine_test",
            "demo_freeze_embeddings": True,
            "demo_mask_first_labels": MASKED,
            "micro_batch_size": 2,
            "train_iters": 3,
            "model": {"name_or_path": str(tiny_model_dir), "dtype": "fp32"},
            "data": {"dl_num_workers": 0},
            "optimizer": {"lr": 1e-2},
            "logger": {"output_dir": str(tmp_path / "run"), "progress_bar": False},
            "deepspeed": {"zero_optimization": {"stage": 0}},
        },
    )
    trainer = LabelRecorder(recipe.config)
    trainer.train()
    assert trainer.features.names == ["demo_feature"]

    assert len(trainer.labels_seen) == 3
    for labels, count in zip(trainer.labels_seen, trainer.counts_seen, strict=True):
        assert (labels[:, :MASKED] == -100).all()  # even rows train on positions 1 and 2 otherwise
        assert count == int((labels != -100).sum())

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    after = {k: v.detach().cpu() for k, v in trainer.engine.module.state_dict().items()}
    embeddings = "model.embed_tokens.weight"
    assert torch.equal(after[embeddings], before[embeddings])
    assert not trainer.engine.module.get_input_embeddings().weight.requires_grad
    changed = [k for k in before if k != embeddings and not torch.equal(after[k], before[k])]
    assert changed, "nothing trained"
