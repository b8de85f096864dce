"""The distillation chunk's fused KL: value and gradient wrt the student's logits in one kernel.

For rows of student logits z_s and teacher logits z_t `[N, V]` at temperature T, with
p = softmax(z_t/T) and q = softmax(z_s/T):

    value = T^2 sum_i KL(p_i || q_i)           grad = d value / d z_s = T (q - p)

`fused_kl(z_s, z_t, T)` is a `torch.autograd.Function`: its forward computes both (Triton on CUDA,
the PyTorch reference `reference.kl_value_and_grad` elsewhere) and its backward returns the saved
gradient times the incoming one; no softmax graph is built. Inside `arctic_core.losses`' checkpointed
chunks (`distillation_kl(..., chunk_kl=fused_kl)`) the saved gradient is discarded after the forward
and recomputed in the backward, so the memory bound stays one chunk of vocabulary-wide tensors.
`triton` is imported only on the CUDA path (the `gpu` extra; it ships with torch on Linux).
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_swiftkv.kernels.reference import kl_value_and_grad

__all__ = ["FusedKL", "fused_kl", "kl_value_and_grad", "kl_value_and_grad_triton"]


def kl_value_and_grad_triton(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel (CUDA, or CPU tensors under `TRITON_INTERPRET=1`): per-row value `[N]`, grad `[N, V]`."""
    from arctic_swiftkv.kernels.triton_kl import kl_value_and_grad as triton_kernel

    return triton_kernel(student, teacher, temperature)


def _value_and_grad(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if student.is_cuda:
        return kl_value_and_grad_triton(student, teacher, temperature)
    return kl_value_and_grad(student, teacher, temperature)


class FusedKL(torch.autograd.Function):
    """T^2 sum_i KL(softmax(z_t,i/T) || softmax(z_s,i/T)); gradient only wrt the student's logits."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        rows, grad = _value_and_grad(student.detach(), teacher.detach(), temperature)
        ctx.save_for_backward(grad)
        return rows.sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def fused_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """`chunk_kl` for `arctic_core.losses.distillation_kl`: the fused value, differentiable wrt `student`."""
    out: torch.Tensor = FusedKL.apply(student.float(), teacher.float(), temperature)
    return out
