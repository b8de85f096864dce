"""GRPO's objective, as tensors: group-relative advantages, the clipped per-token loss, its aggregation.

For a prompt q with G completions o_1..o_G and rewards r_1..r_G (one group):

    A_i        = r_i − mean(r)                      scale_rewards = none (Dr. GRPO)
               = (r_i − mean(r)) / (std(r) + 1e-4)  group: std over the group; batch: over the step
    ρ_i,t      = exp(logπ(o_i,t) − logπ_old(o_i,t))  (π_old = π detached when num_iterations = 1)
    ℓ_i,t      = −min(ρ_i,t·A_i, clip(ρ_i,t, 1−ε, 1+ε_high)·A_i) + β·KL_i,t
    KL_i,t     = exp(logπ_ref − logπ) − (logπ_ref − logπ) − 1        (k3, ≥ 0; only when β > 0)

std is the sample (n−1) standard deviation. With mask m_i,t (completion tokens up to and including
the stop token; a truncated completion all 0 when masked) the three aggregations are

    grpo:    L = 1/N · Σ_i (Σ_t m·ℓ) / (Σ_t m)           (per-sequence mean, then mean; Shao et al. 2024)
    dr_grpo: L = Σ_i Σ_t m·ℓ / (N · max_completion_length)  (Liu et al. 2025)
    dapo:    L = Σ_i Σ_t m·ℓ / Σ_i Σ_t m                (token mean over the step; Yu et al. 2025)

with N sequences. A micro-batch returns its own mean with the weight that makes the loop's weighted
mean the step's formula: its sequences (grpo, dr_grpo) or its completion tokens (dapo).
"""

from __future__ import annotations

import torch

ADVANTAGE_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, scale: str, batch_std: float | None = None) -> torch.Tensor:
    """A_i for rewards `[groups, G]`: minus the group mean, divided by the group's std, `batch_std` or 1."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "group":
        return centred / (rewards.std(dim=1, keepdim=True) + ADVANTAGE_EPS)
    if scale == "batch":
        if batch_std is None:
            raise ValueError("scale_rewards = batch needs the step's reward std")
        return centred / (batch_std + ADVANTAGE_EPS)
    return centred


def token_losses(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    epsilon: float,
    epsilon_high: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ℓ_i,t `[N, C]` (with grad through `log_probs`), KL_i,t and the clipped indicator (both detached).

    PyTorch reference of the `rl.grpo_token_loss` kernel. Clipped: the ratio is past the bound the
    advantage's sign makes active (ρ < 1−ε with A < 0, or ρ > 1+ε_high with A > 0).
    """
    adv = advantages.to(log_probs.dtype).unsqueeze(1)
    ratio = torch.exp(log_probs - old_log_probs)
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    kl = torch.zeros_like(log_probs)
    if beta and ref_log_probs is not None:
        delta = ref_log_probs - log_probs
        kl = torch.exp(delta) - delta - 1.0
        loss = loss + beta * kl
    clipped = ((ratio < 1.0 - epsilon) & (adv < 0)) | ((ratio > 1.0 + epsilon_high) & (adv > 0))
    return loss, kl.detach(), clipped.detach()


def aggregate(
    losses: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int
) -> torch.Tensor:
    """The micro-batch's loss from per-token losses `[N, C]` and mask `[N, C]` (see the module docstring)."""
    mask = mask.to(losses.dtype)
    summed = (losses * mask).sum(dim=1)
    if loss_type == "grpo":
        return (summed / mask.sum(dim=1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return summed.sum() / (losses.shape[0] * max_completion_length)
    if loss_type == "dapo":
        return summed.sum() / mask.sum().clamp(min=1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is set (0 when nothing is)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def completion_log_probs(
    logits: torch.Tensor, input_ids: torch.Tensor, prompt_width: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π of each completion token `[N, C]` and the entropy of each of those positions (detached).

    `logits[:, t]` predicts `input_ids[:, t + 1]`; completions start at `prompt_width`. The logits are
    divided by the sampling temperature, as the rollouts were sampled from that distribution.
    """
    scores = logits[:, prompt_width - 1 : -1, :].float() / temperature
    log_softmax = torch.log_softmax(scores, dim=-1)
    targets = input_ids[:, prompt_width:].unsqueeze(-1)
    chosen = log_softmax.gather(-1, targets).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1)
    return chosen, entropy
