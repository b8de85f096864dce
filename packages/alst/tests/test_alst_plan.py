"""`arctic plan` with the alst feature: its adjustments, and ALST's published Llama-3.1-8B figures on H100.

Published (arXiv 2506.13996; ArcticTraining's projects/sequence-parallelism, H100 80GB): 32K tokens on
one GPU without ALST, 500K on one GPU with every ALST feature, 3.7M on 8 GPUs with sp 8. The planner
must reproduce each within 30% from the repo's recipes and a config.json written from Llama-3.1-8B's
known hyperparameters (tests/fixtures/llama-3.1-8b). docs/plan.md discusses the gaps.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from arctic_core.plan.hardware import parse_hardware
from arctic_core.plan.planner import Planner
from arctic_core.plan.report import make_planner

HERE = Path(__file__).parent
RECIPES = HERE.parent / "recipes"
LLAMA_8B = HERE / "fixtures" / "llama-3.1-8b"


def planner(recipe: str, hardware: str, *overrides: str) -> Planner:
    sets = (f"model.name_or_path={LLAMA_8B}", *overrides)
    return make_planner(str(RECIPES / f"llama-3.1-8b-{recipe}.yaml"), sets, parse_hardware(hardware))


def within(value: int, published: int, tolerance: float = 0.30) -> bool:
    print(f"planned {value:,} tokens, published {published:,}: {(value - published) / published:+.0%}")
    return abs(value - published) <= tolerance * published


def test_one_gpu_with_every_alst_feature_reaches_about_500k() -> None:
    plan = planner("sp1", "1xH100")
    assert plan.fits()  # the recipe's own 500,000 tokens
    assert within(plan.max_sequence(), 500_000)


def test_eight_gpus_with_sp8_reach_about_3_7m() -> None:
    plan = planner("sp8", "8xH100")
    assert plan.fits()  # the recipe's own 3,800,000 tokens
    assert within(plan.max_sequence(), 3_700_000)


def test_one_gpu_baseline_reaches_about_32k_with_a_full_logits_loss() -> None:
    """The published baseline ran transformers' own loss ([tokens, vocab] logits in fp32), with checkpointing.

    Arctic's baseline recipe uses core's fused chunked loss instead, so the planner gives it far more.
    """
    plan = planner("sp8-baseline", "1xH100", "model.disable_activation_checkpoint=false")
    full_logits = attrs.evolve(plan, adjust=lambda setup: attrs.evolve(setup, loss="full_logits"))
    assert within(full_logits.max_sequence(), 32_000)
    assert plan.max_sequence() > 3 * full_logits.max_sequence()


def test_alst_keys_change_the_estimate() -> None:
    plain = planner("sp8-baseline", "8xH100").setup(sequence=65536)
    sp = planner("sp8", "8xH100").setup(sequence=65536)
    assert (plain.sequence_parallel, plain.local_tokens) == (1, 65536)
    assert (sp.sequence_parallel, sp.local_tokens) == (8, 8192)
    assert sp.checkpoint_offload and sp.checkpointing and sp.mlp_tile_tokens == 4096
    assert {t.name for t in sp.extra} == {"Ulysses all-to-all buffers", "Ulysses exchanged output"}
    assert all(t.source == "alst" for t in sp.extra)
    assert not plain.checkpoint_offload and plain.mlp_tile_tokens is None and not plain.extra


def test_alst_offers_its_levers() -> None:
    labels = [lever.label for lever in planner("sp8-baseline", "8xH100").setup().levers]
    assert "sequence_parallel_size 8" in labels
    assert "tiled_mlp_compute" in labels and "activation_checkpoint_cpu_offload" in labels


@pytest.mark.parametrize("recipe", ["sp1", "sp8", "sp8-baseline"])
def test_fixture_is_llama_3_1_8b(recipe: str) -> None:
    assert planner(recipe, "8xH100").shape.parameters() == 8_030_261_248
