"""The speculator's loss: cross-entropy of every head on its shifted target, summed over heads.

At position t (t < T = L - n_predict - 1), head i predicts token t+2+i; its target is
`labels[:, t + 2 + i]` (core's collate gives labels aligned with `input_ids`, -100 where the token
is not trained on). Writing N for the micro-batch's *trainable positions* (t whose head-0 target is
not -100, `trainable_positions`), the micro-batch loss is

    loss = (1 / N) * sum_i sum_{t: labels[t+2+i] != -100} CE(logits_i(t), labels[t+2+i])

i.e. the sum over heads of each head's cross-entropy, per trainable position. Because it is a sum
over (position, head) pairs divided by N, and core weighs each micro-batch by N
(`SpeculatorTrainer.micro_batch_weight`), the step's loss is exactly the same formula over the
whole global batch, however it is split into micro-batches and ranks. (A head's own mean, as
ArcticTraining logs it, is `head{i}_loss` in the metrics.) Each head's full-vocabulary logits are
made a chunk of rows at a time (`arctic_core.losses.chunked_cross_entropy_sum`), never all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from arctic_core.engine.loop import IGNORE_INDEX
from arctic_core.losses import chunk_starts, chunked_cross_entropy_sum


def num_positions(length: int, n_predict: int) -> int:
    """T: positions t whose every head has a target inside a row of `length` tokens."""
    return max(length - n_predict - 1, 0)


def head_targets(labels: torch.Tensor, n_predict: int, head: int) -> torch.Tensor:
    """Head `head`'s targets `[B, T]`: labels[:, t + 2 + head] for t < T."""
    steps = num_positions(labels.shape[1], n_predict)
    return labels[:, 2 + head : 2 + head + steps]


def trainable_positions(labels: torch.Tensor, n_predict: int) -> int:
    """N: positions whose head-0 target is trained on (the micro-batch's weight)."""
    return int((head_targets(labels, n_predict, 0) != IGNORE_INDEX).sum())


@torch.no_grad()
def _correct(head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> int:
    correct = 0  # chunk_starts: under ZeRO-3 every rank calls the (partitioned) head as often
    for start in chunk_starts(rows.shape[0], chunk_size, head, device=rows.device):
        part = slice(start, start + chunk_size)
        correct += int((head(rows[part]).argmax(-1) == targets[part]).sum())
    return correct


def speculator_loss(
    states: Sequence[torch.Tensor],
    heads: Sequence[torch.nn.Module],
    labels: torch.Tensor,
    *,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(loss, metrics) from each head's states `[B, T, D]` and output layer; see the module docstring.

    Metrics: `head{i}_accuracy` (top-1 agreement with the target) and `head{i}_loss` (mean CE), each
    over the head's own trained targets.
    """
    n_predict = len(states)
    labels = labels.to(states[0].device)
    positions = trainable_positions(labels, n_predict)
    total = states[0].new_zeros((), dtype=torch.float32)
    metrics: dict[str, Any] = {}
    for i, (state, head) in enumerate(zip(states, heads)):
        targets = head_targets(labels, n_predict, i)
        mask = targets != IGNORE_INDEX
        rows, wanted = state[mask], targets[mask]
        count = rows.shape[0]
        head_sum = chunked_cross_entropy_sum(head, rows, wanted, chunk_size=chunk_size)
        total = total + head_sum + state.sum() * 0.0  # connected to the graph even with nothing to score
        metrics[f"head{i}_loss"] = float(head_sum.detach()) / max(count, 1)
        metrics[f"head{i}_accuracy"] = _correct(head, rows, wanted, chunk_size) / max(count, 1)
    return total / max(positions, 1), metrics
