"""Causal-LM cross-entropy without materialising the full logits.

The standard loss builds fp32 logits of shape `[rows, length, vocab]`: at 8K tokens and a
128K vocabulary that is 4 GiB per row, usually the largest tensor of the step. Here:

1. the backbone gives hidden states `h` `[B, L, H]`;
2. only positions whose (shifted) label is trainable are kept: prompt tokens, padding and
   masked turns never reach the output layer;
3. the kept rows go through the output layer in chunks of `chunk_size` tokens, each chunk
   under activation checkpointing, so at most one chunk's logits exist at a time, in the
   forward pass and again in the backward pass;
4. the result is the mean over trainable tokens, exactly the loss transformers computes.

The model runs through its own (root) forward, which DeepSpeed ZeRO-3 needs in order to
fetch, release and reduce parameters correctly (calling the backbone alone loses gradients
there), with `logits_to_keep=1` so it projects a single position; a forward hook on the
backbone captures the final hidden states. The output layer is then called as a module
(not through its weight), so ZeRO-3 gathers its weight as usual, tied to the input
embeddings or not.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


def backbone_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and the output layer of a transformers causal LM."""
    base = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, base, None) if base else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if backbone is None or head is None:
        raise TypeError(f"{type(model).__name__} is not a transformers causal LM (no backbone/output layer)")
    return backbone, head


def _logit_transform(config: Any) -> tuple[float | None, float | None]:
    """Scaling and soft-capping that some architectures apply to logits (Cohere, Gemma 2)."""
    return getattr(config, "logit_scale", None), getattr(config, "final_logit_softcapping", None)


def output_logits(
    head: torch.nn.Module, hidden: torch.Tensor, scale: float | None, cap: float | None
) -> torch.Tensor:
    """fp32 logits of `hidden` rows, scaled and soft-capped as the architecture does."""
    logits = head(hidden).float()
    if scale is not None:
        logits = logits * scale
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _chunk_loss_sum(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float | None, cap: float | None
) -> torch.Tensor:
    return F.cross_entropy(output_logits(head, hidden, scale, cap), targets, reduction="sum")


def chunked_cross_entropy_sum(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = 4096,
    config: Any = None,
) -> torch.Tensor:
    """Sum of CE over `hidden` `[N, H]` rows against `targets` `[N]`, `chunk_size` rows at a time."""
    scale, cap = _logit_transform(config)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        total = total + checkpoint(
            _chunk_loss_sum, head, hidden[part], targets[part], scale, cap, use_reentrant=False
        )
    return total


def final_hidden_states(
    model: torch.nn.Module, backbone: torch.nn.Module, batch: dict[str, torch.Tensor], call: Any = None
) -> torch.Tensor:
    """The backbone's output `[B, L, H]` from one root forward that projects only the last position."""
    captured: list[torch.Tensor] = []

    def keep(_: torch.nn.Module, __: Any, output: Any) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = backbone.register_forward_hook(keep)
    try:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        (call or model)(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1]


def causal_lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, chunk_size: int = 4096, call: Any = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's trainable tokens (labels unshifted).

    `call` runs the root forward (the DeepSpeed engine in training); default: `model` itself.
    """
    backbone, head = backbone_and_head(model)
    hidden = final_hidden_states(model, backbone, batch, call)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0  # keeps the graph (and every rank's collectives) intact
    summed = chunked_cross_entropy_sum(
        head,
        hidden[:, :-1][keep],
        targets[keep],
        chunk_size=chunk_size,
        config=getattr(model, "config", None),
    )
    return summed / count
