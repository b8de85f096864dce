"""Activation checkpointing `auto`: `arctic plan`'s estimate and rule decide it, and the recipe's override.

For the calibrated CPU cases (docs/plan.md: the estimate within 20% of measured steps) the run's choice
is checked against the planner's peaks of each setting, computed directly from the model's shape as the
calibration test computes them: the run never picks a setting the planner says does not fit when the
other one fits, and its reason states those peaks.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import LlamaConfig

from arctic_core.engine import model as engine_model
from arctic_core.engine.model import apply_activation_checkpointing
from arctic_core.plan.estimate import PlanSetup, estimate
from arctic_core.plan.hardware import human
from arctic_core.plan.planner import checkpointing_asked, choose_checkpointing
from arctic_core.plan.shape import ModelShape
from arctic_core.recipe import load_recipe
from arctic_core.testing import tiny_model
from arctic_core.trainer import Trainer

GIB = 2**30
CALIBRATED = {  # test_plan_calibration.py's models and grid
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=8192),
}  # fmt: skip
GRID = [("tiny", 256, 1), ("tiny", 1024, 2), ("tiny", 4096, 1), ("small", 256, 1), ("small", 1024, 2)]


class CheckpointingTrainer(Trainer):
    """Only for its recipe type: these tests build no trainer."""

    name = "checkpointing_test"


def recipe(model_dir: Path, micro_batch: int, max_length: int, disabled: bool | None = None) -> Any:
    model: dict[str, Any] = {"name_or_path": str(model_dir), "dtype": "fp32", "attn_implementation": "sdpa"}
    if disabled is not None:
        model["disable_activation_checkpoint"] = disabled
    data = {
        "type": "checkpointing_test",
        "micro_batch_size": micro_batch,
        "model": model,
        "data": {"max_length": max_length},
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }
    return load_recipe(None, data=data).config


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder with only the config.json of each calibrated model (the planner reads no weights)."""
    root = tmp_path_factory.mktemp("calibrated")
    for name, shape in CALIBRATED.items():
        LlamaConfig(**shape, tie_word_embeddings=False).save_pretrained(root / name)
    return {name: root / name for name in CALIBRATED}


def planned(name: str, sequence: int, micro_batch: int, checkpointing: bool) -> int:
    """The planner's peak of a calibrated case, built from the shape as test_plan_calibration.py builds it."""
    shape = ModelShape.from_hf_config(LlamaConfig(**CALIBRATED[name], tie_word_embeddings=False))
    setup = PlanSetup(shape=shape, dtype="fp32", attention="sdpa", micro_batch=micro_batch, sequence=sequence,
                      checkpointing=checkpointing, parameters=shape.parameters(), trainable=shape.parameters(),
                      device_overheads=False)  # fmt: skip
    return estimate(setup).peak


def run_choice(monkeypatch: pytest.MonkeyPatch, config: Any, memory: int, **kwargs: Any) -> tuple[bool, str]:
    """What a run decides with `memory` available, and whether the model it was given has it on."""
    monkeypatch.setattr(engine_model, "available_bytes", lambda device, world=1: memory)
    model = tiny_model("llama", seed=0)
    kwargs = {"device": torch.device("cpu"), "world": 1, **kwargs}
    on, why = apply_activation_checkpointing(model, config, **kwargs)
    assert bool(model.is_activation_checkpointing) is on, why
    return on, why


@pytest.mark.parametrize(
    "without,with_,on,verdict",
    [(7, 3, False, "fits without"), (9, 3, True, "fits only with it"), (9, 9, True, "fits neither way"),
     (8, 8, False, "fits without")],
)  # fmt: skip
def test_auto_leaves_it_off_only_when_the_planned_peak_without_fits(without, with_, on, verdict):
    chosen, why = choose_checkpointing(without * GIB, with_ * GIB, 8 * GIB)
    assert chosen is on
    assert why == (
        f"auto: planned peak {without}.00 GiB without, {with_}.00 GiB with, of 8.00 GiB per device: {verdict}"
        + (", expect out of memory (arctic plan suggests changes)" if verdict == "fits neither way" else "")
    )


def test_the_recipe_decides_when_it_asks():
    def config(disabled: bool | None, offload: bool = False) -> Any:
        model = SimpleNamespace(disable_activation_checkpoint=disabled)
        return SimpleNamespace(model=model, activation_checkpoint_cpu_offload=offload)

    assert checkpointing_asked(config(True)) == (False, "model.disable_activation_checkpoint = true")
    assert checkpointing_asked(config(False)) == (True, "model.disable_activation_checkpoint = false")
    assert (
        checkpointing_asked(config(True, offload=True))[0] is False
    )  # the key wins (the recipe check refuses it)
    assert checkpointing_asked(config(None, offload=True)) == (
        True,
        "activation_checkpoint_cpu_offload needs it",
    )
    assert checkpointing_asked(config(None)) == (None, "")


@pytest.mark.parametrize("disabled", [True, False])
def test_the_recipe_overrides_the_estimate_both_ways(monkeypatch, model_dirs, disabled):
    config = recipe(model_dirs["small"], 2, 1024, disabled=disabled)
    tight = planned("small", 1024, 2, checkpointing=True) // 2  # neither fits: auto would turn it on
    for memory in (tight, 100 * GIB):
        on, why = run_choice(monkeypatch, config, memory)
        assert (on, why) == (not disabled, f"model.disable_activation_checkpoint = {str(disabled).lower()}")


@pytest.mark.parametrize(("name", "sequence", "micro_batch"), GRID)
def test_auto_never_picks_a_setting_the_planner_says_does_not_fit(monkeypatch, model_dirs, name, sequence,
                                                                  micro_batch):  # fmt: skip
    config = recipe(model_dirs[name], micro_batch, sequence)
    without, with_ = (planned(name, sequence, micro_batch, c) for c in (False, True))
    assert without > with_  # checkpointing saves memory in every calibrated case
    for memory, expected in ((without, False), ((without + with_) // 2, True), (with_ - 1, True)):
        on, why = run_choice(monkeypatch, config, memory)
        assert on is expected, why
        numbers = f"planned peak {human(without)} without, {human(with_)} with, of {human(memory)} per device"
        assert why.startswith(f"auto: {numbers}: "), why
        fits = {False: without <= memory, True: with_ <= memory}
        assert fits[on] or not fits[not on]


def test_a_model_without_checkpointing_support_reports_it(monkeypatch, model_dirs):
    config = recipe(model_dirs["small"], 2, 1024)
    monkeypatch.setattr(engine_model, "available_bytes", lambda device, world=1: 1)
    on, why = apply_activation_checkpointing(
        torch.nn.Linear(2, 2), config, device=torch.device("cpu"), world=1
    )
    assert not on and why.endswith("; but Linear does not support it") and "fits neither way" in why
