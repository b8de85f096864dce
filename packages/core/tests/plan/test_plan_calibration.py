"""The planner against the measured peak tensor memory of real training steps (CPU, fp32).

Each case trains one steady-state step (forward, core's fused loss, backward, fused AdamW) of a
Llama-style model built in-process and measures the peak of live tensor bytes exactly
(`arctic_core.plan.measure`); the estimate (without the GPU's fixed costs, which a CPU has not) must
be within 20%. docs/plan.md shows the table this prints.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from arctic_core.plan.estimate import PlanSetup, estimate
from arctic_core.plan.measure import TensorMemory, measure_training_step
from arctic_core.plan.shape import ModelShape

MODELS = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=8192,
    ),
}
GRID = [
    ("tiny", 256, 1), ("tiny", 1024, 2), ("tiny", 4096, 1),
    ("small", 256, 1), ("small", 1024, 2),
]  # fmt: skip


def config(name: str) -> LlamaConfig:
    return LlamaConfig(**MODELS[name], attn_implementation="sdpa", tie_word_embeddings=False)


def planned(name: str, sequence: int, micro_batch: int, checkpointing: bool) -> int:
    shape = ModelShape.from_hf_config(config(name))
    setup = PlanSetup(
        shape=shape,
        dtype="fp32",
        attention="sdpa",
        micro_batch=micro_batch,
        sequence=sequence,
        checkpointing=checkpointing,
        parameters=shape.parameters(),
        trainable=shape.parameters(),
        device_overheads=False,
    )
    return estimate(setup).peak


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize(("name", "sequence", "micro_batch"), GRID)
def test_estimate_within_20_percent_of_measured(
    name: str, sequence: int, micro_batch: int, checkpointing: bool
) -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(config(name)).float()
    measured = measure_training_step(
        model, micro_batch=micro_batch, sequence=sequence, checkpointing=checkpointing
    )
    estimated = planned(name, sequence, micro_batch, checkpointing)
    error = (estimated - measured) / measured
    print(f"{name} seq {sequence} mbs {micro_batch} ckpt {checkpointing}: "
          f"measured {measured / 2**20:.2f} MiB, estimated {estimated / 2**20:.2f} MiB, {error:+.1%}")  # fmt: skip
    assert abs(error) <= 0.20


def test_tensor_memory_counts_storages_once_and_frees_them() -> None:
    with TensorMemory() as memory:
        a = torch.ones(1000)  # 4,000 bytes
        view = a[:10]  # same storage
        b = a * 2
        assert memory.current == 8000
        del b
        assert memory.current == 4000
        del a, view
    assert memory.current == 0
    assert memory.peak == 8000


def test_measured_peak_grows_with_the_sequence() -> None:  # the measurement sees activations at all
    torch.manual_seed(0)
    short = measure_training_step(
        LlamaForCausalLM(config("tiny")), micro_batch=1, sequence=128, checkpointing=False
    )
    long = measure_training_step(
        LlamaForCausalLM(config("tiny")), micro_batch=1, sequence=1024, checkpointing=False
    )
    assert long > 3 * short
