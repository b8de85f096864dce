"""`arctic plan` for speculator: the speculator trains, the base model is a frozen companion."""

from __future__ import annotations

from pathlib import Path

from arctic_core.plan.estimate import estimate
from arctic_core.plan.hardware import parse_hardware
from arctic_core.plan.planner import hf_config
from arctic_core.plan.report import make_planner
from arctic_core.plan.shape import ModelShape

RECIPE = Path(__file__).parents[1] / "recipes" / "quickstart.toml"


def test_speculator_trains_its_heads_on_a_frozen_base() -> None:
    from arctic_speculator.modeling import build_speculator

    planner = make_planner(str(RECIPE), (), parse_hardware("1xH100"))
    setup = planner.setup()
    base = hf_config(planner.config.model)
    built = build_speculator(base.hidden_size, base.vocab_size, planner.config.model.speculator_settings())
    assert setup.trainable == setup.parameters == sum(p.numel() for p in built.parameters())
    assert setup.frozen_parameters == ModelShape.from_hf_config(base).parameters()
    names = {t.name for t in estimate(setup).terms}
    assert "activations (stored)" not in names  # no decoder layer of the base keeps activations
    assert {"base model forward (no grad)", "speculator activations"} <= names
