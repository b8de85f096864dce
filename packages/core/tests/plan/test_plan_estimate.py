"""The estimate's arithmetic: hardware, ZeRO partitioning, precision, offload, checkpointing, phases."""

from __future__ import annotations

import attrs
import pytest

from arctic_core.errors import RecipeError
from arctic_core.plan.estimate import ALWAYS, PHASES, PlanSetup, estimate
from arctic_core.plan.hardware import GIB, PRESETS, parse_hardware, parse_memory
from arctic_core.plan.shape import ModelShape

SHAPE = ModelShape(model_type="llama", hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                   intermediate=14336, vocab=128256, tied=False)  # fmt: skip
P = SHAPE.parameters()


def setup(**changes: object) -> PlanSetup:
    base = PlanSetup(
        shape=SHAPE, dtype="bf16", world=8, micro_batch=1, sequence=4096, parameters=P, trainable=P
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def term(est: object, name: str) -> int:
    return next(t.bytes for t in est.terms if t.name == name)  # type: ignore[attr-defined]


def test_hardware_presets_counts_nodes_and_memory_override() -> None:
    hw = parse_hardware("8xH100", nodes=2)
    assert (hw.devices, hw.world_size, hw.memory) == (8, 16, PRESETS["H100"])
    assert parse_hardware("h200").devices == 1
    assert parse_hardware("1xL4", memory="24GiB").memory == 24 * GIB
    assert parse_memory("80GB") == 80 * 10**9


def test_unknown_hardware_names_the_presets() -> None:
    with pytest.raises(RecipeError) as caught:
        parse_hardware("8xV100")
    for name in PRESETS:
        assert name in str(caught.value)


def test_zero_stages_partition_what_they_should() -> None:
    stage0, stage3 = estimate(setup(zero_stage=0)), estimate(setup(zero_stage=3))
    assert term(stage0, "parameters") == 2 * P
    assert term(stage3, "parameters") == 2 * P // 8
    assert term(stage0, "optimizer state") == 12 * P  # Adam (8 B) + fp32 master (4 B) under bf16
    assert term(estimate(setup(zero_stage=1)), "optimizer state") == 12 * P // 8
    assert term(estimate(setup(zero_stage=2)), "gradients (partition)") == 2 * P // 8
    assert term(estimate(setup(zero_stage=0, dtype="fp32")), "optimizer state") == 8 * P


def test_offload_moves_state_off_the_device() -> None:
    est = estimate(setup(zero_stage=3, offload_optimizer=True, offload_param=True))
    assert term(est, "parameters") == term(est, "optimizer state") == term(est, "gradients (partition)") == 0


def test_lora_trains_only_the_adapters() -> None:
    est = estimate(setup(zero_stage=0, trainable=1000))
    assert term(est, "optimizer state") == 12 * 1000
    assert term(est, "parameters") == 2 * P


def test_checkpointing_and_its_offload_shrink_activations() -> None:
    state = {"zero_stage": 3, "offload_optimizer": True, "offload_param": True, "sequence": 32768}
    plain = estimate(setup(**state))
    checkpointed = estimate(setup(**state, checkpointing=True))
    offloaded = estimate(setup(**state, checkpointing=True, checkpoint_offload=True))
    assert plain.peak > checkpointed.peak > offloaded.peak
    assert term(checkpointed, "activation checkpoints") == 32 * 32768 * 4096 * 2
    assert term(offloaded, "activation checkpoints") == 0


def test_tiled_mlp_drops_the_mlp_activations() -> None:
    plain = estimate(setup(sequence=65536, checkpointing=True))
    tiled = estimate(setup(sequence=65536, checkpointing=True, mlp_tile_tokens=4096))
    assert term(tiled, "recomputed: norm + MLP") == 65536 * (4 + 2 * 2) * 4096  # the norm's alone
    assert (
        term(plain, "recomputed: norm + MLP") == term(tiled, "recomputed: norm + MLP") + 65536 * 4 * 2 * 14336
    )


def test_fused_loss_never_holds_full_logits() -> None:
    fused, full = estimate(setup(sequence=65536)), estimate(setup(sequence=65536, loss="full_logits"))
    assert term(full, "loss (full logits)") > 65536 * 128256 * 2
    assert term(fused, "loss (fused, chunked)") < term(full, "loss (full logits)") / 10


def test_peak_is_always_plus_the_largest_phase_plus_fixed_costs() -> None:
    est = estimate(setup(device_overheads=False))
    always = sum(t.bytes for t in est.terms if ALWAYS in t.phases)
    assert est.peak == always + max(est.phase_total(p) for p in PHASES)
    with_gpu = estimate(setup())
    assert with_gpu.peak > est.peak + GIB
