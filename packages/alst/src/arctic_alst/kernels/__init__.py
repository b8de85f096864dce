"""Tiled cross-entropy: loss and gradient of a chunk of logits in one pass, gradient written in place.

For logit rows z `[N, V]` and targets y `[N]` (-100: ignored):

    loss_i = logsumexp(z_i) - z_i[y_i]          grad_i = softmax(z_i) - onehot(y_i)

`tiled_cross_entropy(z, y)` is a `torch.autograd.Function` returning sum_i loss_i: its forward runs
the kernel (Triton on CUDA: online logsumexp over vocabulary tiles, then the gradient written over
the logits, `triton_ce.py`; the PyTorch reference `reference.py` elsewhere) and its backward
scales the saved gradient. Meant for chunks of rows (as `arctic_core.losses` runs its head over
chunks), so the largest tensor is one chunk's logits, and no softmax graph is kept. `triton` is
imported only on the CUDA path.
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_alst.kernels.reference import cross_entropy_value_and_grad

__all__ = [
    "TiledCrossEntropy",
    "cross_entropy_value_and_grad",
    "cross_entropy_value_and_grad_triton",
    "tiled_cross_entropy",
]


def cross_entropy_value_and_grad_triton(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel (CUDA, or CPU tensors under `TRITON_INTERPRET=1`)."""
    from arctic_alst.kernels.triton_ce import cross_entropy_value_and_grad as kernel

    return kernel(logits, targets)


class TiledCrossEntropy(torch.autograd.Function):
    """sum_i CE(z_i, y_i); the gradient wrt z comes from the forward's kernel."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.is_cuda:
            rows, grad = cross_entropy_value_and_grad_triton(logits.detach().float().contiguous(), targets)
        else:
            rows, grad = cross_entropy_value_and_grad(logits.detach(), targets)
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        return rows.sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.dtype), None


def tiled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `[N, V]` logits against `[N]` targets (-100 ignored), differentiable wrt logits."""
    out: torch.Tensor = TiledCrossEntropy.apply(logits, targets)
    return out
