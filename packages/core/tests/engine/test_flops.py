"""Issue 31: the per-step model FLOPs counter against hand counts (dense, packed, MoE) and against
torch's own FLOP counter on a real forward; the peak table behind MFU."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arctic_core.data.collate import collate_rows
from arctic_core.engine.flops import FlopsCounter, counter_for, peak_of_name, peak_tflops, sample_lengths
from arctic_core.testing.models import tiny_config, tiny_model

# The tiny Llama: H=64, 2 layers, 4 heads of 16, 2 KV heads, MLP width 128; V = the shipped vocabulary.
H, LAYERS, HEADS, KV, D, WIDTH = 64, 2, 4, 2, 16, 128
PAD = 0


def per_token_by_hand() -> int:
    q, k, v, o = 2 * H * HEADS * D, 2 * H * KV * D, 2 * H * KV * D, 2 * HEADS * D * H
    gate, up, down = 2 * H * WIDTH, 2 * H * WIDTH, 2 * WIDTH * H
    return LAYERS * (q + k + v + o + gate + up + down)


def attention_by_hand(length: int) -> int:
    """Causal: query i meets i + 1 keys; QK^T and AV, 2 FLOPs per multiply-add, every head and layer."""
    pairs = sum(i + 1 for i in range(length))
    return LAYERS * HEADS * (2 * D * pairs + 2 * D * pairs)


@pytest.fixture(scope="module")
def config():
    return tiny_config("llama")


def _row(length: int, trained: list[int], first_id: int = 5) -> dict[str, list[int]]:
    ids = [first_id + i for i in range(length)]
    return {"input_ids": ids, "labels": [ids[i] if i in trained else -100 for i in range(length)]}


def _packed(samples: list[tuple[int, list[int]]]) -> dict[str, list[int]]:
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for length, trained in samples:
        part = _row(length, trained)
        row["input_ids"] += part["input_ids"]
        row["labels"] += part["labels"]
        row["position_ids"] += list(range(length))
    return row


def test_dense_batch_equals_the_hand_count(config):
    vocab = config.vocab_size
    batch = collate_rows([_row(7, [4, 5, 6]), _row(3, [2])], pad_id=PAD, div_length=8, max_length=16)
    counter = FlopsCounter.from_config(config, pad_id=PAD)
    assert counter.linear_per_token() == per_token_by_hand()
    assert sample_lengths(batch, PAD) == [7, 3]  # padding (to 8) excluded
    head_rows = 3 + 1  # positions whose next label is trained
    forward = (
        10 * per_token_by_hand() + attention_by_hand(7) + attention_by_hand(3) + head_rows * 2 * H * vocab
    )
    assert counter.batch(batch) == 3 * forward
    everything = FlopsCounter.from_config(config, head="all", pad_id=PAD)
    assert everything.batch(batch) == 3 * (forward + (10 - head_rows) * 2 * H * vocab)


def test_packed_rows_count_attention_per_sample(config):
    vocab = config.vocab_size
    rows = [_packed([(5, [3, 4]), (4, [3])]), _packed([(6, [5]), (2, [1])])]
    batch = collate_rows(rows, pad_id=PAD, div_length=16, max_length=16)  # both rows padded to 16
    assert "attention_mask" not in batch
    assert sample_lengths(batch, PAD) == [5, 4, 6, 2]
    counter = FlopsCounter.from_config(config, pad_id=PAD)
    attention = sum(attention_by_hand(n) for n in (5, 4, 6, 2))
    forward = 17 * per_token_by_hand() + attention + 5 * 2 * H * vocab
    assert counter.batch(batch) == 3 * forward
    one_row = collate_rows(rows[:1], pad_id=PAD, div_length=16, max_length=16)  # num_tokens gives its end
    assert sample_lengths(one_row, None) == [5, 4]
    whole = attention_by_hand(9)  # what the count would be if the row were one sample
    assert counter.attention([5, 4]) < whole


def test_moe_counts_active_experts_shared_experts_and_dense_layers():
    base = dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=100
    )
    config = tiny_config(
        "qwen2",
        **base,
        intermediate_size=256,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        mlp_only_layers=[0],
        decoder_sparse_step=1,
    )
    counter = FlopsCounter.from_config(config)
    attention = 2 * 64 * 64 + 2 * 2 * 64 * 32 + 2 * 64 * 64
    sparse = 6 * 64 * (2 * 32 + 48) + 2 * 64 * 8  # two experts, the shared expert, the router
    dense = 6 * 64 * 256
    assert counter.linear_per_token() == 4 * attention + 1 * dense + 3 * sparse
    deepseek_style = tiny_config(
        "qwen2",
        **base,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=2,
    )
    deepseek_style.first_k_dense_replace = 2
    counter = FlopsCounter.from_config(deepseek_style)
    shared = 2 * 32
    assert counter.linear_per_token() == 4 * attention + 2 * 6 * 64 * 128 + 2 * (
        6 * 64 * (2 * 32 + shared) + 2 * 64 * 8
    )


def _measured_forward(model: torch.nn.Module, length: int) -> int:
    ids = torch.arange(3, 3 + length).unsqueeze(0)
    with FlopCounterMode(display=False) as mode, torch.no_grad():
        model(input_ids=ids)
    return int(mode.get_total_flops())


def test_linear_count_matches_torch_flop_counter_on_a_real_forward():
    """torch counts every matmul the model runs: the linear layers, the output layer over every
    position (a plain forward), and eager attention's full L x L scores (not causal). (Not for MoE:
    transformers runs the experts through an op torch's counter does not see.)"""
    length = 12
    model = tiny_model("llama", attn_implementation="eager")
    counter = counter_for(model, pad_id=None)
    assert counter is not None and counter.head == "trained"
    s = counter.shape
    full_attention = s.layers * 4 * s.heads * s.head_dim * length * length
    expected = length * counter.linear_per_token() + length * 2 * s.hidden * s.vocab + full_attention
    assert _measured_forward(model, length) == expected


def test_peak_table_and_no_mfu_on_cpu():
    assert peak_of_name("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_of_name("NVIDIA H100 PCIe") == 756.0
    assert peak_of_name("NVIDIA H200") == 989.0
    assert peak_of_name("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_of_name("NVIDIA L4") == 121.0
    assert peak_of_name("NVIDIA B200") == 2250.0
    assert peak_of_name("NVIDIA GeForce RTX 4090") is None
    assert peak_of_name("NVIDIA L40S") is None  # not an L4
    assert peak_tflops(torch.device("cpu"), "bf16") is None
