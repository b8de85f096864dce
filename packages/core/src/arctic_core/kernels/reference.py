"""PyTorch reference of the per-chunk softmax cross-entropy: the loss of each row and, in place, its gradient.

The logits z `[C, V]` (fp32, the output layer's raw output) of one chunk go through the architecture's
transform, u = c·tanh(s·z/c) (scale s, Cohere; soft-cap c, Gemma 2; either may be absent), then

    loss_i = logsumexp(u_i) − u_i[y_i]                  (0 where y_i is ignore_index)
    d loss_i / d z_i = (softmax(u_i) − onehot(y_i)) · s · (1 − tanh²(s·z_i/c))   (0 where ignored)

`ce_value_and_grad_` overwrites `z` with that gradient (no second vocabulary-wide buffer without a
soft-cap, one with it) and returns the per-row loss `[C]`. With `grad=False` it only computes the loss
(and leaves `z` transformed). This is the path on CPU, and the reference the Triton kernel is checked
against (`arctic_core.kernels.triton_ce`).
"""

from __future__ import annotations

import torch


def ce_value_and_grad_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    grad: bool = True,
) -> torch.Tensor:
    """Per-row CE `[C]` of fp32 `logits` `[C, V]` against `targets` `[C]`; `logits` becomes d loss / d logits."""
    if logits.dtype != torch.float32 or logits.dim() != 2:
        raise ValueError(f"logits must be fp32 [C, V], got {logits.dtype} {tuple(logits.shape)}")
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0).unsqueeze(1)
    if scale is not None and scale != 1.0:
        logits.mul_(scale if softcap is None else scale / softcap)
    elif softcap is not None:
        logits.div_(softcap)
    derivative = None
    if softcap is not None:
        logits.tanh_()
        if grad:
            derivative = 1.0 - logits.square()  # d tanh, before the buffer is reused
        logits.mul_(softcap)
    picked = logits.gather(1, safe).squeeze(1)
    top = logits.amax(dim=1, keepdim=True)
    logits.sub_(top).exp_()
    total = logits.sum(dim=1, keepdim=True)
    loss = (top + total.log()).squeeze(1) - picked
    loss = torch.where(valid, loss, 0.0)
    if not grad:
        return loss
    logits.div_(total)  # softmax
    logits.scatter_add_(1, safe, -valid.to(logits.dtype).unsqueeze(1))
    logits.mul_(valid.unsqueeze(1))
    if derivative is not None:
        logits.mul_(derivative)
    if scale is not None and scale != 1.0:
        logits.mul_(scale)
    return loss
