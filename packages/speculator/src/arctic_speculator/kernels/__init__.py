"""The speculator's per-head step, fused: y = GELU(norm(p + alpha * e) * w + b), forward and backward.

p = proj_i(state) and e = emb_i(token) come in already computed (the matrix products stay in
cuBLAS); the kernel fuses the scaled embedding add, the norm (fms-extras' x * rsqrt(mean(x^2) +
eps), affine) and the exact GELU, in one pass over each row forward and one backward, instead of
about ten elementwise kernels and their saved intermediates. `fused_head_step` is an autograd
function: Triton on CUDA tensors (`triton_step`), elsewhere the PyTorch formulas of `reference`
(the same function, so CPU training and the Triton path agree). The backward saves only p and e.
`triton` is imported only on the CUDA path (the `gpu` extra; it ships with torch on Linux), and on
CPU under `TRITON_INTERPRET=1` for the tests.
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_speculator.kernels import reference

__all__ = ["FusedHeadStep", "fused_head_step", "head_step_triton"]


def head_step_triton() -> Any:
    """The Triton module (CUDA, or CPU tensors under `TRITON_INTERPRET=1`)."""
    from arctic_speculator.kernels import triton_step

    return triton_step


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
        use_triton: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(p, e, weight, bias)
        ctx.alpha, ctx.eps, ctx.use_triton = alpha, eps, use_triton
        if use_triton:
            return head_step_triton().head_step_forward(p, e, alpha, weight, bias, eps)
        with torch.no_grad():
            return reference.head_step(p, e, alpha, weight, bias, eps)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        p, e, weight, bias = ctx.saved_tensors
        backward = head_step_triton().head_step_backward if ctx.use_triton else reference.head_step_backward
        dp, de, dw, db = backward(dy, p, e, ctx.alpha, weight, bias, ctx.eps)
        return dp.to(p.dtype), de.to(e.dtype), None, dw.to(weight.dtype), db.to(bias.dtype), None, None


def fused_head_step(
    p: torch.Tensor,
    e: torch.Tensor,
    alpha: float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
    *,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """The fused step; Triton when the tensors are on CUDA (or `use_triton`), else the PyTorch formulas."""
    triton = p.is_cuda if use_triton is None else use_triton
    if not triton and not torch.is_grad_enabled():  # drafting: no graph, skip the autograd machinery
        return reference.head_step(p, e, alpha, weight, bias, eps)
    out: torch.Tensor = FusedHeadStep.apply(p, e, alpha, weight, bias, eps, triton)
    return out
