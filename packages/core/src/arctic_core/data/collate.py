"""Collation: rows to the batch contract (docs/training.md, "The batch contract").

Rows are right-padded to the batch's longest row rounded up to a multiple of `div_length`
(unset: `AUTO_DIV_LENGTH`), or to `max_length` with `pad_to = "max_length"`: `input_ids` with
the pad token (the EOS token when the tokenizer has none), `labels` with -100, `position_ids`
counting on through the padding. Padding is masked, so the length changes only the work done,
never a loss or a gradient. Packed rows
(they carry `position_ids`) get no `attention_mask`, so the model sees the position resets
and keeps samples apart, but a `token_mask` (1 on real tokens) that only statistics over tokens
read (an MoE router's load-balancing loss, `arctic_core.engine.moe`); unpacked batches get a
0/1 `attention_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE = -100
AUTO_DIV_LENGTH = 8
"""The multiple batches are padded to when `data.div_length` is unset: small, so that a batch costs
little more than its longest sample (ArcticTraining's 256 padded 100-token chat samples to 256), and
a multiple of 8, which keeps matrix shapes aligned for vectorised CPU and tensor-core GPU kernels."""


def padded_length(longest: int, div_length: int | None, max_length: int, pad_to: str) -> int:
    """The batch length: `longest` rounded up to `div_length` (None: `AUTO_DIV_LENGTH`), capped at
    `max_length` unless longer."""
    if pad_to == "max_length":
        return max(longest, max_length)
    if div_length is None:
        div_length = AUTO_DIV_LENGTH
    rounded = -(-longest // div_length) * div_length
    return rounded if rounded <= max_length else max(longest, max_length)


def pad_id_of(tokenizer: Any) -> int:
    """The id used for padding input_ids: the pad token if set, else EOS (labels never look at it)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
    return int(tokenizer.eos_token_id)


def collate_rows(
    rows: Sequence[dict[str, Any]],
    *,
    pad_id: int,
    div_length: int | None,
    max_length: int,
    pad_to: str = "div_length",
) -> dict[str, torch.Tensor]:
    """Stack rows of `input_ids`/`labels` (and `position_ids` when packed) into one padded batch."""
    packed = "position_ids" in rows[0]
    longest = max(len(row["input_ids"]) for row in rows)
    length = padded_length(longest, div_length, max_length, pad_to)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.arange(length, dtype=torch.long).repeat(len(rows), 1)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[b, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
        attention_mask[b, :n] = 1
        if packed and n:
            positions = torch.as_tensor(row["position_ids"], dtype=torch.long)
            position_ids[b, :n] = positions
            position_ids[b, n:] = positions[-1] + 1 + torch.arange(length - n)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if not packed:
        batch["attention_mask"] = attention_mask
    else:  # never given to the model: which positions are real tokens, for an MoE router's statistics
        batch["token_mask"] = attention_mask
    batch["num_tokens"] = attention_mask.sum()
    batch["num_trainable_tokens"] = (labels != IGNORE).sum()
    return batch
