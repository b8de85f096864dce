"""The speculator's loss: cross-entropy of every head on its shifted target, summed over heads.

At position t, head i predicts token t+2+i; its target is `labels[:, t + 2 + i]` (core's collate gives
labels aligned with `input_ids`, -100 where the token is not trained on). The trained (position, head)
pairs are a property of each sample alone: (t, i) counts iff its target t+2+i lies in the row and
in t's sample (in a packed row, `position_ids` rises by 2+i from t to it) and is not -100. Every t whose
head-0 target lies in the row (t < T = L - 2) is run; a head's targets past the row's end are -100,
so a sample's last positions train their first heads whatever the micro-batch's padded length L
(set by the other rows in it, so by the split into micro-batches and ranks). Writing N for the
micro-batch's *trainable positions* (t whose head-0 target counts, `trainable_positions`), the
micro-batch loss is

    loss = (1 / N) * sum_i sum_{(t, i) counted} CE(logits_i(t), labels[t+2+i])

i.e. the sum over heads of each head's cross-entropy, per trainable position. Because it is a sum
over (position, head) pairs divided by N, and core weighs each micro-batch by N
(`SpeculatorTrainer.micro_batch_weight`), the step's loss is exactly the same formula over the
whole global batch, however it is split into micro-batches and ranks, packed or padded. (A head's
own mean, as ArcticTraining logs it, is `head{i}_loss` in the metrics.) Each head's full-vocabulary
logits are made a chunk of rows at a time (`arctic_core.losses.chunked_cross_entropy_sum`), never
all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from arctic_core.engine.loop import IGNORE_INDEX
from arctic_core.losses import chunk_starts, chunked_cross_entropy_sum


def num_positions(length: int) -> int:
    """T: positions t whose head-0 target (token t+2) lies inside a row of `length` tokens."""
    return max(length - 2, 0)


def head_tokens(input_ids: torch.Tensor, n_predict: int) -> torch.Tensor:
    """The heads' teacher-forced inputs `[B, T + n_predict - 1]`: x_{t+1} for t < T, then filler.

    Head i at t reads x_{t+1} ... x_{t+1+i}; past the row's end it reads token 0, and its target
    there is -100, so the filler is never scored.
    """
    steps = num_positions(input_ids.shape[1])
    tokens = input_ids[:, 1 : 1 + steps + n_predict - 1]
    return torch.nn.functional.pad(tokens, (0, steps + n_predict - 1 - tokens.shape[1]), value=0)


def head_targets(labels: torch.Tensor, head: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Head `head`'s targets `[B, T]`: labels[:, t + 2 + head], -100 past the row or in another sample."""
    steps = num_positions(labels.shape[1])
    inside = max(labels.shape[1] - 2 - head, 0)  # t whose target t + 2 + head is in the row
    targets = labels.new_full((labels.shape[0], steps), IGNORE_INDEX)
    targets[:, :inside] = labels[:, 2 + head : 2 + head + inside]
    if position_ids is not None:  # packed rows: position ids restart at each sample
        position_ids = position_ids.to(labels.device)
        gap = position_ids[:, 2 + head : 2 + head + inside] - position_ids[:, :inside]
        targets[:, :inside] = targets[:, :inside].masked_fill(gap != 2 + head, IGNORE_INDEX)
    return targets


def trainable_positions(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> int:
    """N: positions whose head-0 target is trained on (the micro-batch's weight)."""
    return int((head_targets(labels, 0, position_ids) != IGNORE_INDEX).sum())


@torch.no_grad()
def _correct(head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> int:
    correct = 0  # chunk_starts: under ZeRO-3 every rank calls the (partitioned) head as often
    for start in chunk_starts(rows.shape[0], chunk_size, head):
        part = slice(start, start + chunk_size)
        correct += int((head(rows[part]).argmax(-1) == targets[part]).sum())
    return correct


def speculator_loss(
    states: Sequence[torch.Tensor],
    heads: Sequence[torch.nn.Module],
    labels: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    chunk_size: int = 4096,
    kernels: str = "auto",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(loss, metrics) from each head's states `[B, T, D]` (T = L - 2) and output layer, the batch's
    `labels` `[B, L]` and, for packed rows, its `position_ids`; see the module docstring.

    Metrics: `head{i}_accuracy` (top-1 agreement with the target) and `head{i}_loss` (mean CE), each
    over the head's own trained targets. `kernels` is the recipe's kernel switch (auto, torch, triton).
    """
    labels = labels.to(states[0].device)
    positions = trainable_positions(labels, position_ids)
    total = states[0].new_zeros((), dtype=torch.float32)
    metrics: dict[str, Any] = {}
    for i, (state, head) in enumerate(zip(states, heads)):
        targets = head_targets(labels, i, position_ids)
        mask = targets != IGNORE_INDEX
        rows, wanted = state[mask], targets[mask]
        count = rows.shape[0]
        head_sum = chunked_cross_entropy_sum(head, rows, wanted, chunk_size=chunk_size, kernels=kernels)
        total = total + head_sum + state.sum() * 0.0  # connected to the graph even with nothing to score
        metrics[f"head{i}_loss"] = float(head_sum.detach()) / max(count, 1)
        metrics[f"head{i}_accuracy"] = _correct(head, rows, wanted, chunk_size) / max(count, 1)
    return total / max(positions, 1), metrics
