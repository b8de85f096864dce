"""A run's automatic activation checkpointing says what `arctic plan` says, for the same recipe and memory.

Issue 23, item 1: Llama-3.1-8B, 8xH100, ZeRO-3, micro batch 1 x 8,192 tokens. A second, rougher model
once left checkpointing off there ("activations 44.50 GiB + training state 14.96 GiB, fits") while the
planner gave 81.01 GiB of 79.65: an OOM. Now the run asks the planner: the reason it logs is the plan's
note, and it never picks a setting the planner says does not fit when the other one fits. Methods
(dpo's reference model) and features (alst) count as they count in the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from arctic_core.engine import model as engine_model
from arctic_core.engine.deepspeed_config import build_deepspeed_config
from arctic_core.engine.model import apply_activation_checkpointing
from arctic_core.plan.hardware import Hardware, parse_hardware
from arctic_core.plan.planner import Planner, hf_config
from arctic_core.plan.shape import ModelShape
from arctic_core.recipe import load_recipe
from arctic_core.recipe.bundled import find_recipe
from arctic_core.recipe.loader import read_recipe, resolve_relative_paths
from arctic_core.testing import tiny_model

ROOT = Path(__file__).parents[1]
LLAMA_8B = ROOT / "packages" / "alst" / "tests" / "fixtures" / "llama-3.1-8b"
ALST = ROOT / "packages" / "alst" / "recipes"


def planner(path: str, hardware: Hardware, *overrides: str, auto: bool = False) -> Planner:
    """`arctic plan`'s planner of a recipe file; `auto` drops the recipe's `model.disable_activation_checkpoint`."""
    raw = resolve_relative_paths(read_recipe(path), Path(path).parent)
    if auto:
        raw["model"].pop("disable_activation_checkpoint", None)
    config = load_recipe(None, overrides, data=raw).config
    shape_config = hf_config(config.model)
    shape = ModelShape.from_hf_config(shape_config)
    return Planner(config=config, shape=shape, shape_config=shape_config, hardware=hardware)


def run_choice(monkeypatch: pytest.MonkeyPatch, config: Any, hardware: Hardware) -> tuple[bool, str]:
    """What rank 0 of a GPU run of `config` on `hardware` decides (the device's memory patched in)."""
    monkeypatch.setattr(engine_model, "available_bytes", lambda device, world=1: hardware.memory)
    world = hardware.world_size
    deepspeed = build_deepspeed_config(config, world)
    return apply_activation_checkpointing(
        tiny_model("llama", seed=0), config, device=torch.device("cuda", 0), world=world, deepspeed=deepspeed
    )


def forced(plan: Planner, on: bool) -> int:
    """The planner's peak with checkpointing set by the recipe (`model.disable_activation_checkpoint`)."""
    model = attrs.evolve(plan.config.model, disable_activation_checkpoint=not on)
    return attrs.evolve(plan, config=attrs.evolve(plan.config, model=model)).estimate().peak


def check_agreement(monkeypatch: pytest.MonkeyPatch, plan: Planner) -> tuple[bool, str]:
    """The run's reason is the plan's note, and its choice fits whenever either setting fits."""
    on, why = run_choice(monkeypatch, plan.config, plan.hardware)
    setup = plan.setup()
    assert setup.notes[0] == f"activation checkpointing {'on' if on else 'off'}: {why}"
    assert setup.checkpointing is on
    fits = {c: forced(plan, c) <= plan.hardware.memory for c in (False, True)}
    assert fits[on] or not fits[not on], why
    return on, why


def test_llama_8b_zero3_at_8k_tokens_on_8_h100s_turns_it_on(monkeypatch):
    recipe = find_recipe("llama-3.1-8b-ultrachat-zero3", "sft")
    sets = (f"model.name_or_path={LLAMA_8B}", "micro_batch_size=1", "data.max_length=8192")
    plan = planner(recipe, parse_hardware("8xH100"), *sets)
    assert plan.config.model.disable_activation_checkpoint is None  # auto, as the recipe ships
    on, why = check_agreement(monkeypatch, plan)
    assert on, why
    assert "planned peak 81.01 GiB without, 29.53 GiB with, of 79.65 GiB per device: fits only with it" in why
    assert plan.fits()  # what was an OOM now fits as planned


def test_dpo_reference_model_counts_in_the_choice(monkeypatch):
    plan = planner(find_recipe("dpo-tiny", "dpo"), parse_hardware("1xH100"), auto=True)
    without, with_ = forced(plan, False), forced(plan, True)
    middle = attrs.evolve(plan, hardware=attrs.evolve(plan.hardware, memory=(without + with_) // 2))
    on, why = check_agreement(monkeypatch, middle)
    assert on and "fits only with it" in why
    assert "reference forward (no grad)" in {t.name for t in middle.estimate().terms}
    assert check_agreement(monkeypatch, plan) == (False, plan.setup().checkpointing_why)  # an H100 holds it


@pytest.mark.parametrize(("hardware", "sets"), [("1xH100", ()), ("8xH100", ("sequence_parallel_size=8",))])
def test_alst_sequence_parallelism_counts_in_the_choice(monkeypatch, hardware, sets):
    overrides = (f"model.name_or_path={LLAMA_8B}", "data.max_length=16384", *sets)
    plan = planner(str(ALST / "llama-3.1-8b-sp8-baseline.yaml"), parse_hardware(hardware), *overrides)
    on, why = check_agreement(monkeypatch, plan)
    assert plan.setup().sequence_parallel == (8 if sets else 1)
    assert on is not bool(sets), why  # 16K tokens on one H100 need checkpoints; 2K per rank do not
