"""Ulysses sequence parallelism: sp=2 on two CPU ranks against sp=1, and the sharding arithmetic.

The two-rank comparison runs every case in one launch (`alst_sp_worker.py`, see its docstring):
sdpa and eager, packed and unpacked, split and replicated KV heads, the SFT loss and SwiftKV's
distillation loss, tiled MLP + offload under SP, and DPO through real trainers (sigmoid and IPO,
live reference; with its metrics; the feature's own hooks select Ulysses on the policy and the
reference and tile the MLPs). Loss and gradients must agree to 1e-5 (fp32). After all of them, in
the same processes, nothing process-wide is left changed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arctic_alst.sharding import shard_batch
from arctic_alst.ulysses import check_heads, segments
from arctic_core.errors import RecipeError

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_sp2_on_two_ranks_gives_the_losses_and_gradients_of_sp1(tmp_path):
    out = tmp_path / "results.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), str(HERE / "alst_sp_worker.py"), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    results = json.loads(out.read_text())
    control = results.pop("control")
    # every case above ran in the two processes: nothing process-wide is left changed (transformers'
    # registries but Arctic's own name, its modules' and classes' attributes, a plain model)
    assert results.pop("left_changed") == []
    assert len(results) == 9
    for case, found in results.items():
        assert found["loss_diff"] < 1e-5 and found["grad_diff"] < 1e-5, (case, found)
        assert found["weight_sum"] == 0 and found["tokens_sum"] == 0, (case, found)
        assert found["grads"] > 0 and found["loss"] > 0
        if case.startswith("dpo"):  # rewards, accuracy, margin and log-probs: the weighted means of sp=1
            assert found["metrics"] == 6 and found["metric_diff"] < 1e-5, (case, found)
    assert control["grad_diff"] > 1e-3  # packed samples that see each other are caught


def batch(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    ids = torch.arange(1, width + 1)[None]
    positions = torch.cat(
        [torch.arange(n) for n in lengths] + [torch.arange(lengths[-1], lengths[-1] + width - sum(lengths))]
    )[None]
    labels = ids.clone()
    starts = torch.tensor([sum(lengths[:i]) for i in range(len(lengths))])
    labels[0, starts] = -100
    labels[0, sum(lengths) :] = -100
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        "num_tokens": torch.tensor(sum(lengths)),
        "num_trainable_tokens": (labels != -100).sum(),
    }


@pytest.mark.parametrize("size", [2, 3, 4])
def test_sharding_keeps_every_next_token_pair_once_and_the_counts_exact(size):
    full = batch([4, 5, 2], 13)
    parts = [shard_batch(full, size, rank, pad_id=0) for rank in range(size)]
    k = -(-13 // size)
    pairs = []
    for part in parts:
        assert part["input_ids"].shape == (1, k + 1) and part["labels"].shape == (1, k + 1)
        ids, labels = part["input_ids"][0], part["labels"][0]
        assert ids[-1] == 0 and part["position_ids"][0, -1] == part["position_ids"][0, -2] + 1  # placeholder
        pairs += [(int(ids[t]), int(labels[t + 1])) for t in range(k) if labels[t + 1] != -100]
    expected = [
        (int(full["input_ids"][0, t]), int(full["labels"][0, t + 1]))
        for t in range(12)
        if full["labels"][0, t + 1] != -100
    ]
    assert pairs == expected
    assert sum(int(p["num_trainable_tokens"]) for p in parts) == int(full["num_trainable_tokens"])
    assert sum(int(p["num_tokens"]) for p in parts) == int(full["num_tokens"])
    global_positions = torch.cat([p["position_ids"][:, :-1] for p in parts], dim=1)[:, :13]
    assert torch.equal(global_positions, full["position_ids"])


def test_segments_follow_the_position_resets():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert segments(positions) == [[(0, 3), (3, 5), (5, 9)], [(0, 9)]]


def test_unpacked_rows_lose_their_mask_and_keep_their_padding_out_of_the_counts():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.where(mask.bool(), ids, -100)
    full = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(5).expand(2, 5), "attention_mask": mask,
            "num_tokens": mask.sum(), "num_trainable_tokens": (labels[:, 1:] != -100).sum()}  # fmt: skip
    parts = [shard_batch(full, 2, rank) for rank in range(2)]
    assert all("attention_mask" not in p for p in parts)
    assert [int(p["num_tokens"]) for p in parts] == [6, 2]
    assert sum(int(p["num_trainable_tokens"]) for p in parts) == 6


def test_heads_are_checked_against_the_sequence_parallel_size():
    from arctic_core.testing import tiny_config

    check_heads(tiny_config(num_attention_heads=4, num_key_value_heads=1), 4)  # replicated KV heads
    with pytest.raises(RecipeError, match="does not divide the model's 4 attention heads") as info:
        check_heads(tiny_config(num_attention_heads=4, num_key_value_heads=4), 3)
    assert info.value.path == "sequence_parallel_size"
    with pytest.raises(RecipeError, match="6 key/value heads"):
        check_heads(tiny_config(num_attention_heads=12, num_key_value_heads=6, hidden_size=96), 4)
