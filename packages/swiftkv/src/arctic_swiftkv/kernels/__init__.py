"""The distillation chunk's fused KL: value and gradient wrt the student's logits in one kernel.

For rows of student logits z_s and teacher logits z_t `[N, V]` at temperature T, with
p = softmax(z_t/T) and q = softmax(z_s/T):

    value = T^2 sum_i KL(p_i || q_i)           grad = d value / d z_s = T (q - p)

`fused_kl(z_s, z_t, T, kernels=...)` is a `torch.autograd.Function`: its forward computes both with
the implementation the kernel switch picks (kernel `swiftkv.fused_kl` in `arctic_core.kernels`: the
PyTorch reference `reference.kl_value_and_grad`, or the Triton kernel `triton_kl`) and its backward
returns the saved gradient times the incoming one; no softmax graph is built. Inside
`arctic_core.losses`' checkpointed chunks (`distillation_kl(..., chunk_kl=...)`) the saved gradient is
discarded after the forward and recomputed in the backward, so the memory bound stays one chunk of
vocabulary-wide tensors. `triton` is imported only when the Triton version is picked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from arctic_core.kernels import select
from arctic_swiftkv.kernels.reference import kl_value_and_grad

__all__ = ["FUSED_KL", "FusedKL", "fused_kl", "kl_value_and_grad"]

FUSED_KL = "swiftkv.fused_kl"
"""The kernel's registry name (declared in `arctic_swiftkv.plugin`)."""

ValueAndGrad = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


class FusedKL(torch.autograd.Function):
    """T^2 sum_i KL(softmax(z_t,i/T) || softmax(z_s,i/T)); gradient only wrt the student's logits."""

    @staticmethod
    def forward(
        ctx: Any, student: torch.Tensor, teacher: torch.Tensor, temperature: float, kernel: ValueAndGrad
    ) -> torch.Tensor:
        rows, grad = kernel(student.detach(), teacher.detach(), temperature)
        ctx.save_for_backward(grad)
        return rows.sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def fused_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, kernels: str = "auto"
) -> torch.Tensor:
    """`chunk_kl` for `arctic_core.losses.distillation_kl`: the fused value, differentiable wrt `student`.

    `kernels` is the recipe's kernel switch (auto, torch, triton).
    """
    kernel = select(FUSED_KL, kernels, student.device)
    out: torch.Tensor = FusedKL.apply(student.float(), teacher.float(), temperature, kernel)
    return out
