"""`arctic plan` for swiftkv: SwiftKV's parameters (counted as the built model has them), which alone train."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch

from arctic_core.plan.hardware import parse_hardware
from arctic_core.plan.planner import hf_config
from arctic_core.plan.report import make_planner

RECIPE = Path(__file__).parents[1] / "recipes" / "quickstart.toml"


def test_swiftkv_counts_and_trains_only_its_projections() -> None:
    from transformers import AutoModelForCausalLM

    import arctic_swiftkv.models  # noqa: F401  (registers the SwiftKV classes)
    from arctic_swiftkv.configuration import to_swiftkv_config

    planner = make_planner(str(RECIPE), ("model.key_value_group_size=2",), parse_hardware("1xH100"))
    setup = planner.setup()
    cfg = planner.config.model
    converted = to_swiftkv_config(hf_config(cfg), cfg.num_key_value_layers, cfg.key_value_group_size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(converted)
    named = dict(model.named_parameters())
    swiftkv = sum(p.numel() for n, p in named.items() if fnmatch.fnmatchcase(n, "*_swiftkv.*"))
    assert setup.trainable == swiftkv
    assert setup.parameters == sum(p.numel() for p in named.values())
    layers = converted.num_hidden_layers - cfg.num_key_value_layers
    assert setup.grad_layers == layers and setup.loss == "none"
    teacher = next(t for t in setup.extra if t.name == "teacher hidden states")
    assert teacher.bytes == (converted.num_hidden_layers + 1) * setup.local_tokens * converted.hidden_size * 4
