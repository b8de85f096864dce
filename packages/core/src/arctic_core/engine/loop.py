"""Pieces of the training loop that need no trainer: what a loss returns, batch bookkeeping, weighting.

Loss weighting (see docs/training.md): `Trainer.loss(batch)` returns the micro-batch's mean
loss, as a tensor or a `LossOutput`. Each micro-batch has a weight w_i, known before its
forward (`Trainer.micro_batch_weight`: its trainable tokens by default, its pairs, samples or
queries for other methods). An optimizer step's loss must be the weighted mean over the whole
global batch, sum_i w_i L_i / W with W = sum of w_i over every micro-batch of the step on
every rank (one all-reduce before the first forward). DeepSpeed sums gradients over the ranks
and divides by the D data-parallel replicas, so the loop hands `engine.backward` the loss
times `w_i x D / W` and asks it not to divide by the accumulation steps (`scale_wrt_gas=False`).

Metrics a loss returns (`LossOutput.metrics`, per-micro-batch means) are reported as weighted
means over the step (or the evaluation), weighted by `LossOutput.weight` (default: w_i).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from arctic_core.errors import ArcticError

IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


@attrs.frozen
class LossOutput:
    """What `Trainer.loss(batch)` may return instead of a bare tensor.

    - `loss`: the micro-batch's mean loss (a scalar tensor with its graph).
    - `weight`: how much the micro-batch's metrics count in the step's (and the evaluation's)
      weighted means; None: its loss weight, `Trainer.micro_batch_weight(batch)`.
    - `metrics`: per-micro-batch means (floats or scalar tensors), reported per step and in eval.
    """

    loss: torch.Tensor
    weight: float | None = None
    metrics: Mapping[str, Any] = attrs.field(factory=dict)


def as_loss_output(value: Any) -> LossOutput:
    if isinstance(value, LossOutput):
        return value
    if isinstance(value, torch.Tensor):
        return LossOutput(value)
    raise TypeError(f"loss() must return a tensor or a LossOutput, not {type(value).__name__}")


class WeightedMeans:
    """Weighted sums of named values over micro-batches; means over every rank at the end (one all-reduce)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, values: Mapping[str, Any], weight: float) -> None:
        for name, value in values.items():
            number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = self.sums.get(name, 0.0) + number * weight
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self, reduce: Any) -> dict[str, float]:
        """`reduce` sums a list of floats over ranks; every rank must hold the same names in the same order."""
        names = sorted(self.sums)
        if not names:
            return {}
        totals = reduce([self.sums[n] for n in names] + [self.weights[n] for n in names])
        count = len(names)
        return {
            n: totals[i] / totals[count + i] if totals[count + i] else math.nan for i, n in enumerate(names)
        }


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over trainable tokens; labels are unshifted (logits[:, :-1] predict labels[:, 1:]).

    A micro-batch without a trainable token gives 0 with zero gradients (not NaN), so it cannot
    poison the step it belongs to.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:].to(shifted_logits.device)
    total = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (shifted_labels != IGNORE_INDEX).sum().clamp(min=1)


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch-contract keys a causal LM's forward takes (never `labels`: the loss is computed here)."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def trainable_count(batch: Mapping[str, Any]) -> float:
    """The micro-batch's trainable tokens, or 1 when the batch does not say (equal weights)."""
    count = batch.get("num_trainable_tokens")
    return float(count) if count is not None else 1.0


def token_count(batch: Mapping[str, Any]) -> int:
    """Tokens in the micro-batch, for throughput: the collate's `num_tokens` if it gives one, else the
    attention mask's ones when unpacked, every position of `input_ids` when packed, 0 without tokens."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "input_ids" in batch:
        return int(batch["input_ids"].numel())
    return 0


def labelled_count(batch: Mapping[str, Any]) -> int:
    """Trainable tokens: the collate's `num_trainable_tokens`, else labels != -100, else 0."""
    if "num_trainable_tokens" in batch:
        return int(batch["num_trainable_tokens"])
    if "labels" in batch:
        return int((batch["labels"] != IGNORE_INDEX).sum())
    return 0


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def check_weight(weight: float, where: str) -> float:
    if not math.isfinite(weight) or weight < 0:
        raise ArcticError(f"{where}: micro_batch_weight gave {weight}; a weight must be finite and >= 0")
    return weight
