"""Frozen companion models (`Trainer.build_frozen_model`): a teacher beside the trained model, one rank.

The teacher is `[model]` built again. Whatever the ZeRO stage, it must stay frozen (its logits on
the probe never change while the student trains), sit in eval mode without gradients, own no
optimizer state, be partitioned under ZeRO-3, and stay out of the checkpoint.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_support import PROBE, RecorderTrainer, read_metrics
from test_engine_training import run

from arctic_core.trainer import LossOutput

pytest_plugins = ["arctic_core.testing.fixtures"]


class TeacherTrainer(RecorderTrainer):
    name = "frozen_test"
    record_grads = False

    def transform_model(self, model: torch.nn.Module) -> torch.nn.Module:
        self.teacher = self.build_frozen_model()
        return super().transform_model(model)

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        student = super().loss(batch)
        probe = self.teacher(input_ids=PROBE.to(self.device), use_cache=False).logits
        return LossOutput(student, metrics={"teacher_probe": float(probe.double().sum())})


@pytest.mark.parametrize("stage", [0, 3])
def test_frozen_teacher_stays_frozen_partitioned_and_out_of_checkpoints(tiny_model_dir, tmp_path, stage):
    trainer = run(
        tiny_model_dir,
        tmp_path / "run",
        TeacherTrainer,
        deepspeed={"zero_optimization": {"stage": stage}},
        checkpoint=[{"type": "deepspeed", "save_end_of_training": True}],
    )
    records = read_metrics(trainer.config.metrics_path)
    assert len({r["teacher_probe"] for r in records}) == 1  # identical at every step: it never trained
    assert records[-1]["loss"] < records[0]["loss"]  # while the student did
    teacher = trainer.teacher.module
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    if stage == 3:
        assert all(hasattr(p, "ds_id") and p.ds_numel > 0 for p in teacher.parameters())  # ZeRO-3 managed
        engine = trainer.teacher.engine  # ZeRO-3's parameter manager only: no optimizer, no state
        assert engine.client_optimizer is None and not isinstance(engine.optimizer, torch.optim.Optimizer)
    else:
        assert trainer.teacher.engine is None and next(teacher.parameters()).numel() > 0
    saved = list((tmp_path / "run" / "checkpoints" / "deepspeed").rglob("*model_states.pt"))
    assert len(saved) == 1  # the trained engine's; the teacher has no state to save
    if stage == 0:
        module = torch.load(saved[0], map_location="cpu", weights_only=False)["module"]
        student = trainer.engine.module.state_dict()
        assert sum(t.numel() for t in module.values()) == sum(t.numel() for t in student.values())
