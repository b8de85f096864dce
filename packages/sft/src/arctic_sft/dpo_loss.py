"""DPO's pieces that need no trainer: sequence log-probs of a pair batch, and the losses.

Sequence log-prob of a row: the sum over its answer tokens (labels != -100 after the shift)
of log p(token | prefix). The output layer runs only on those positions, in chunks (as the
SFT loss does), so the full `[rows, length, vocab]` logits never exist.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from arctic_sft.loss import (
    IGNORE_INDEX,
    _logit_transform,
    backbone_and_head,
    final_hidden_states,
    output_logits,
)

LOSS_TYPES = ("sigmoid", "ipo")


def _chunk_log_probs(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float | None, cap: float | None
) -> torch.Tensor:
    return -F.cross_entropy(output_logits(head, hidden, scale, cap), targets, reduction="none")


def token_log_probs(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, *, chunk_size: int, config: Any
) -> torch.Tensor:
    """log p(target) for each row of `hidden` `[N, H]`, `chunk_size` rows at a time (checkpointed with grad)."""
    scale, cap = _logit_transform(config)
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        if torch.is_grad_enabled():
            parts.append(
                checkpoint(
                    _chunk_log_probs, head, hidden[part], targets[part], scale, cap, use_reentrant=False
                )
            )
        else:
            parts.append(_chunk_log_probs(head, hidden[part], targets[part], scale, cap))
    return torch.cat(parts) if parts else hidden.new_zeros((0,), dtype=torch.float32)


def sequence_log_probs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, chunk_size: int = 4096, call: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the batch: (sum of the answer tokens' log-probs `[R]` fp32, answer token count `[R]`).

    `call` runs the root forward (a DeepSpeed engine, which ZeRO-3 needs; see `arctic_sft.loss`).
    """
    backbone, head = backbone_and_head(model)
    hidden = final_hidden_states(model, backbone, batch, call)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[keep]
    logps = token_log_probs(
        head,
        hidden[:, :-1][keep],
        targets[keep],
        chunk_size=chunk_size,
        config=getattr(model, "config", None),
    )
    sums = torch.zeros(targets.shape[0], dtype=torch.float32, device=hidden.device).index_add(0, rows, logps)
    sums = sums + hidden.sum() * 0.0  # keeps every parameter in the graph, even without answer tokens
    return sums, keep.sum(dim=1)


def preference_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses `[B]` and implicit rewards (chosen, rejected), from sequence log-probs `[B]`.

    h = (logπ_c − logπ_r) − (logref_c − logref_r)
    sigmoid: z = β·h, loss = −(1−ε)·logσ(z) − ε·logσ(−z)   (DPO; cDPO when ε > 0)
    ipo:     loss = (h − 1/(2β))²                          (feed per-token mean log-probs)
    rewards: β·(logπ − logref) per side, without gradient.
    """
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        z = beta * h
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards
