"""Triton kernel of GRPO's per-token loss: one pass over the N x C completion tokens, elementwise.

For each token, with ρ = exp(logπ − logπ_old), A its sequence's advantage and δ = logπ_ref − logπ:

    ℓ   = −min(ρA, clip(ρ, 1−ε, 1+ε_high)·A) + β(e^δ − δ − 1)
    ∂ℓ/∂logπ = −ρA where the unclipped term is the minimum (else 0) + β(1 − e^δ)

The forward writes ℓ, the KL, the clipped indicator and ∂ℓ/∂logπ; the backward scales that
derivative by the incoming gradient (nothing else is kept). Imported only when the kernel switch
picks Triton (CUDA, or TRITON_INTERPRET=1 on a CPU). Same contract as `arctic_rl.loss.token_losses`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _grpo_token_kernel(
    logp_ptr,
    old_ptr,
    ref_ptr,
    adv_ptr,
    loss_ptr,
    kl_ptr,
    clipped_ptr,
    grad_ptr,
    total,
    width,
    low,
    high,
    beta,
    HAS_REF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < total
    logp = tl.load(logp_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + offsets // width, mask=inside, other=0.0).to(tl.float32)
    ratio = tl.exp(logp - old)
    bounded = tl.minimum(tl.maximum(ratio, 1.0 - low), 1.0 + high)
    unclipped_term = ratio * adv
    clipped_term = bounded * adv
    unclipped = unclipped_term <= clipped_term
    loss = -tl.where(unclipped, unclipped_term, clipped_term)
    grad = tl.where(unclipped, -unclipped_term, 0.0)
    kl = tl.zeros_like(loss)
    if HAS_REF:
        ref = tl.load(ref_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        delta = ref - logp
        e = tl.exp(delta)
        kl = e - delta - 1.0
        loss += beta * kl
        grad += beta * (1.0 - e)
    clipped = ((ratio < 1.0 - low) & (adv < 0.0)) | ((ratio > 1.0 + high) & (adv > 0.0))
    tl.store(loss_ptr + offsets, loss, mask=inside)
    tl.store(kl_ptr + offsets, kl, mask=inside)
    tl.store(clipped_ptr + offsets, clipped.to(tl.int8), mask=inside)
    tl.store(grad_ptr + offsets, grad, mask=inside)


class _GRPOTokenLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        log_probs: torch.Tensor,
        old: torch.Tensor,
        ref: Any,
        adv: torch.Tensor,
        low: float,
        high: float,
        beta: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logp = log_probs.detach().float().contiguous()
        loss, kl, grad = torch.empty_like(logp), torch.empty_like(logp), torch.empty_like(logp)
        clipped = torch.empty(logp.shape, dtype=torch.int8, device=logp.device)
        has_ref = bool(beta) and ref is not None
        total = logp.numel()
        _grpo_token_kernel[(triton.cdiv(total, BLOCK),)](
            logp,
            old.detach().float().contiguous(),
            (ref if has_ref else logp).detach().float().contiguous(),
            adv.detach().float().contiguous(),
            loss,
            kl,
            clipped,
            grad,
            total,
            logp.shape[1],
            float(low),
            float(high),
            float(beta),
            HAS_REF=has_ref,
            BLOCK=BLOCK,
        )
        ctx.save_for_backward(grad)
        ctx.dtype = log_probs.dtype
        ctx.mark_non_differentiable(kl, clipped)
        return loss, kl, clipped.bool()

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return (grad_loss * grad).to(ctx.dtype), None, None, None, None, None, None


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
    """ℓ `[N, C]` (with grad through `log_probs`), KL and the clipped indicator: see the module docstring."""
    loss, kl, clipped = _GRPOTokenLoss.apply(
        log_probs, old_log_probs, ref_log_probs, advantages, epsilon, epsilon_high, beta
    )
    return loss, kl, clipped
