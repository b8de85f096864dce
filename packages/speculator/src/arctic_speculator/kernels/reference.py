"""PyTorch reference of the speculator's per-head step: y = GELU(norm(p + alpha * e) * w + b).

p = proj(state), e = emb(token) `[N, D]`; norm(z) = z * rsqrt(mean(z^2) + eps) (fms-extras'
LayerNormParameterized); GELU is the exact (erf) one. `head_step_backward` writes the gradients
out by hand (what the Triton kernel computes), with n = norm(z), r = rsqrt(mean(z^2) + eps),
u = n * w + b:

    du = dy * (Phi(u) + u * phi(u))      dw = sum_rows du * n      db = sum_rows du
    dz = r * (du*w - n * mean(du*w * n))  dp = dz                   de = alpha * dz
"""

from __future__ import annotations

import math

import torch


def head_step(
    p: torch.Tensor, e: torch.Tensor, alpha: float, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """The step by autograd-able torch ops (the reference and the CPU path)."""
    z = p + alpha * e
    n = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + eps)
    return torch.nn.functional.gelu(n * weight + bias)


def head_step_backward(
    dy: torch.Tensor,
    p: torch.Tensor,
    e: torch.Tensor,
    alpha: float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dp, de, dweight, dbias) of the step, in fp32, by the formulas of the module docstring."""
    z = (p + alpha * e).float()
    r = torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + eps)
    n = z * r
    u = n * weight.float() + bias.float()
    cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    pdf = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    du = dy.float() * (cdf + u * pdf)
    dn = du * weight.float()
    dz = r * (dn - n * (dn * n).mean(-1, keepdim=True))
    return dz, alpha * dz, (du * n).sum(0), du.sum(0)


def head_step_forward(
    p: torch.Tensor, e: torch.Tensor, alpha: float, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """The step's value without a graph (the autograd function's forward)."""
    with torch.no_grad():
        return head_step(p, e, alpha, weight, bias, eps)


HEAD_STEP = (head_step_forward, head_step_backward)
"""(forward, backward): the PyTorch reference of kernel `speculator.head_step`."""
