"""Triton kernels of the per-head step (forward and backward), one program per row.

Forward: z = p + alpha*e, r = rsqrt(mean(z^2) + eps), u = z*r*w + b, y = GELU(u) (erf). Backward
recomputes z, r and u from p and e (nothing but the inputs is saved), writes dp and de, and each
row's contributions du*n and du to dw and db, which the caller sums over rows. Formulas:
`arctic_speculator.kernels.reference`. Imported only on the CUDA path (or under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SQRT1_2 = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


@triton.jit
def _forward_kernel(p_ptr, e_ptr, w_ptr, b_ptr, y_ptr, dim, alpha, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    p = tl.load(p_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(e_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    z = p + alpha * e
    r = 1.0 / tl.sqrt(tl.sum(z * z, axis=0) / dim + eps)
    u = z * r * w + b
    y = 0.5 * u * (1.0 + tl.erf(u * SQRT1_2))
    tl.store(y_ptr + row * dim + cols, y, mask=mask)


@triton.jit
def _backward_kernel(
    dy_ptr, p_ptr, e_ptr, w_ptr, b_ptr, dp_ptr, de_ptr, dw_ptr, db_ptr, dim, alpha, eps, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    offset = row * dim + cols
    dy = tl.load(dy_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(e_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    z = p + alpha * e
    r = 1.0 / tl.sqrt(tl.sum(z * z, axis=0) / dim + eps)
    n = z * r
    u = n * w + b
    du = dy * (0.5 * (1.0 + tl.erf(u * SQRT1_2)) + u * INV_SQRT_2PI * tl.exp(-0.5 * u * u))
    dn = du * w
    dz = r * (dn - n * (tl.sum(tl.where(mask, dn * n, 0.0), axis=0) / dim))
    tl.store(dp_ptr + offset, dz, mask=mask)
    tl.store(de_ptr + offset, alpha * dz, mask=mask)
    tl.store(dw_ptr + offset, du * n, mask=mask)
    tl.store(db_ptr + offset, du, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()


def head_step_forward(
    p: torch.Tensor, e: torch.Tensor, alpha: float, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """y `[..., D]` in p's dtype."""
    p2, e2 = _rows(p), _rows(e)
    rows, dim = p2.shape
    y = torch.empty_like(p2)
    if rows:
        block = triton.next_power_of_2(dim)
        _forward_kernel[(rows,)](
            p2, e2, weight.contiguous(), bias.contiguous(), y, dim, float(alpha), float(eps), BLOCK=block
        )
    return y.view(p.shape)


def head_step_backward(
    dy: torch.Tensor,
    p: torch.Tensor,
    e: torch.Tensor,
    alpha: float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dp, de, dweight, dbias), fp32."""
    dy2, p2, e2 = _rows(dy), _rows(p), _rows(e)
    rows, dim = p2.shape
    grads = [torch.empty(rows, dim, dtype=torch.float32, device=p.device) for _ in range(4)]
    if rows:
        block = triton.next_power_of_2(dim)
        _backward_kernel[(rows,)](
            dy2,
            p2,
            e2,
            weight.contiguous(),
            bias.contiguous(),
            *grads,
            dim,
            float(alpha),
            float(eps),
            BLOCK=block,
        )
    dp, de, dw_rows, db_rows = grads
    return dp.view(p.shape), de.view(p.shape), dw_rows.sum(0), db_rows.sum(0)


HEAD_STEP = (head_step_forward, head_step_backward)
"""(forward, backward): the Triton version of kernel `speculator.head_step`."""
