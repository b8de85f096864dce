"""Triton kernel of the per-chunk softmax cross-entropy, gradient written over the logits in place.

One program per row. Loop 1 reads the row once, applies the logit transform u = c·tanh(s·z/c) and keeps
the running maximum m and the sum of exp(u − m) (rescaled whenever m grows); the target's u is read
once by index. Loop 2 overwrites the row with (exp(u − lse) − [v = y]) · du/dz. Nothing
vocabulary-wide is allocated. Same contract as `arctic_core.kernels.reference.ce_value_and_grad_`;
imported only on the CUDA path (or under `TRITON_INTERPRET=1`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _transform(z, scale, softcap, HAS_CAP: tl.constexpr):
    """(u, du/dz) for raw logits z: u = c·tanh(s·z/c) with a cap, s·z without."""
    x = z * scale
    if HAS_CAP:
        e = tl.exp(-2.0 * tl.abs(x / softcap))
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(x < 0, -t, t)
        u = softcap * t
        du = scale * (1.0 - t * t)
    else:
        u = x
        du = scale + 0.0 * x
    return u, du


@triton.jit
def _ce_kernel(
    logits_ptr,
    targets_ptr,
    loss_ptr,
    vocab,
    stride,
    scale,
    softcap,
    ignore_index,
    HAS_CAP: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    target = tl.load(targets_ptr + row)
    valid = target != ignore_index
    top = tl.zeros([], dtype=tl.float32) - float("inf")
    total = tl.zeros([], dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < vocab
        z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        u, _ = _transform(z, scale, softcap, HAS_CAP)
        u = tl.where(mask, u, float("-inf"))
        new_top = tl.maximum(top, tl.max(u, axis=0))
        total = total * tl.exp(top - new_top) + tl.sum(tl.exp(u - new_top), axis=0)
        top = new_top
    lse = top + tl.log(total)
    safe = tl.where(valid, target, 0).to(tl.int64)
    picked, _ = _transform(tl.load(base + safe).to(tl.float32), scale, softcap, HAS_CAP)
    tl.store(loss_ptr + row, tl.where(valid, lse - picked, 0.0))
    if GRAD:
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < vocab
            z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            u, du = _transform(z, scale, softcap, HAS_CAP)
            grad = (tl.exp(u - lse) - tl.where(cols == safe, 1.0, 0.0)) * du
            grad = tl.where(valid, grad, 0.0)
            tl.store(base + cols, grad, mask=mask)


def ce_value_and_grad_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    grad: bool = True,
    block: int = BLOCK,
) -> torch.Tensor:
    """Per-row CE `[C]` of fp32 `logits` `[C, V]`; with `grad`, `logits` becomes d loss / d logits."""
    if logits.dtype != torch.float32 or logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(
            f"logits must be fp32 [C, V], row-contiguous, got {logits.dtype} {tuple(logits.shape)}"
        )
    rows, vocab = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        _ce_kernel[(rows,)](
            logits,
            targets.contiguous(),
            loss,
            vocab,
            logits.stride(0),
            1.0 if scale is None else float(scale),
            1.0 if softcap is None else float(softcap),
            ignore_index,
            HAS_CAP=softcap is not None,
            GRAD=grad,
            BLOCK=min(block, triton.next_power_of_2(vocab)),
        )
    return loss
