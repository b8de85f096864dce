"""The speculator's per-head step, fused: y = GELU(norm(p + alpha * e) * w + b), forward and backward.

p = proj_i(state) and e = emb_i(token) come in already computed (the matrix products stay in
cuBLAS); the kernel fuses the scaled embedding add, the norm (fms-extras' x * rsqrt(mean(x^2) +
eps), affine) and the exact GELU, in one pass over each row forward and one backward, instead of
about ten elementwise kernels and their saved intermediates. `fused_head_step` is an autograd
function over the (forward, backward) pair that the kernel switch picks (kernel
`speculator.head_step` in `arctic_core.kernels`): the Triton kernels of `triton_step`, or the PyTorch
formulas of `reference` (the same function, so CPU training and the Triton path agree). The
backward saves only p and e. `triton` is imported only when the Triton version is picked.
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_core.kernels import select
from arctic_speculator.kernels import reference  # noqa: F401  (a submodule tests reach from here)

__all__ = ["HEAD_STEP", "FusedHeadStep", "fused_head_step"]

HEAD_STEP = "speculator.head_step"
"""The kernel's registry name (declared in `arctic_speculator.plugin`)."""


class FusedHeadStep(torch.autograd.Function):
    """GELU(norm(p + alpha*e) * w + b) with a hand-written backward that recomputes from p and e."""

    @staticmethod
    def forward(
        ctx: Any,
        p: torch.Tensor,
        e: torch.Tensor,
        alpha: float,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        kernel: tuple[Any, Any],
    ) -> torch.Tensor:
        ctx.save_for_backward(p, e, weight, bias)
        ctx.alpha, ctx.eps, ctx.kernel = alpha, eps, kernel
        return kernel[0](p, e, alpha, weight, bias, eps)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        p, e, weight, bias = ctx.saved_tensors
        dp, de, dw, db = ctx.kernel[1](dy, p, e, ctx.alpha, weight, bias, ctx.eps)
        return dp.to(p.dtype), de.to(e.dtype), None, dw.to(weight.dtype), db.to(bias.dtype), None, None


def fused_head_step(
    p: torch.Tensor,
    e: torch.Tensor,
    alpha: float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
    *,
    kernels: str = "auto",
) -> torch.Tensor:
    """The fused step, by the implementation `kernels` (the recipe's switch: auto, torch, triton) picks."""
    kernel = select(HEAD_STEP, kernels, p.device)
    if not torch.is_grad_enabled():  # drafting: no graph, skip the autograd machinery
        out: torch.Tensor = kernel[0](p, e, alpha, weight, bias, eps)
    else:
        out = FusedHeadStep.apply(p, e, alpha, weight, bias, eps, kernel)
    return out
