"""DPO's losses from sequence log-probs (the log-probs themselves: `arctic_core.losses.sequence_log_probs`).

With h = (logπ_c − logπ_r) − (logref_c − logref_r), the policy's margin over the reference's:
sigmoid (DPO; cDPO with label smoothing ε) is −(1−ε)·logσ(β·h) − ε·logσ(−β·h), and IPO is
(h − 1/(2β))², fed per-token mean log-probs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


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
