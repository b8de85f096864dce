"""Core kernels: the per-chunk softmax cross-entropy of the fused linear cross-entropy (`arctic_core.losses`).

`ce_value_and_grad_(logits, targets, ...)` returns each row's loss and overwrites the chunk's fp32 logits
with the loss's gradient wrt them: the Triton kernel (`triton_ce`) on CUDA, the PyTorch reference
(`reference`) elsewhere. Both take the architecture's logit scale and soft-cap and `ignore_index`.
`triton` is imported only on the CUDA path (it ships with torch on Linux).
"""

from __future__ import annotations

import torch

from arctic_core.kernels.reference import ce_value_and_grad_ as ce_value_and_grad_reference_

__all__ = ["ce_value_and_grad_", "ce_value_and_grad_reference_"]


def ce_value_and_grad_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    grad: bool = True,
) -> torch.Tensor:
    """Per-row CE `[C]`; `logits` `[C, V]` fp32 becomes d loss / d logits (Triton on CUDA, else PyTorch)."""
    if logits.is_cuda:
        from arctic_core.kernels.triton_ce import ce_value_and_grad_ as triton_ce

        return triton_ce(logits, targets, scale=scale, softcap=softcap, ignore_index=ignore_index, grad=grad)
    return ce_value_and_grad_reference_(
        logits, targets, scale=scale, softcap=softcap, ignore_index=ignore_index, grad=grad
    )
