"""`arctic plan` for dpo: two sequences per pair, the frozen reference, the chunked log-prob loss.

Compared with core's own setup of the same recipe (`base_setup`, before the method's plan function).
"""

from __future__ import annotations

from pathlib import Path

from arctic_core.plan.estimate import estimate
from arctic_core.plan.hardware import parse_hardware
from arctic_core.plan.planner import Planner, base_setup
from arctic_core.plan.report import make_planner

RECIPES = Path(__file__).parents[1] / "recipes"


def planner(*overrides: str) -> Planner:
    return make_planner(str(RECIPES / "dpo-tiny.toml"), overrides, parse_hardware("1xH100"))


def test_dpo_doubles_sequences_and_adds_the_reference() -> None:
    plan = planner()
    dpo = plan.setup()
    sft = base_setup(
        plan.config, plan.shape, plan.hardware, micro_batch=dpo.micro_batch, sequence=dpo.sequence
    )
    assert (dpo.sequences_per_sample, sft.sequences_per_sample) == (2, 1)
    assert dpo.local_tokens == 2 * sft.local_tokens
    assert dpo.frozen_parameters == dpo.parameters and sft.frozen_parameters == 0
    assert dpo.loss == "log_probs" and sft.loss == "fused"
    terms = {t.name: t for t in estimate(dpo).terms}
    assert terms["frozen models"].bytes == dpo.parameters * 4  # fp32 recipe, a full copy at ZeRO-0
    assert terms["reference forward (no grad)"].source == "dpo"


def test_precomputed_reference_log_probs_free_the_reference() -> None:
    dpo = planner("precompute_ref_log_probs=true").setup()
    assert dpo.frozen_parameters == 0
    assert "reference forward (no grad)" not in {t.name for t in dpo.extra}
