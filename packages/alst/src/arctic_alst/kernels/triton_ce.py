"""Triton kernel of the tiled cross-entropy (see `arctic_alst.kernels`): one program per row.

Pass 1 walks the row's vocabulary in tiles of BLOCK, keeping a running maximum m and a running
sum s of exp(z - m) (online logsumexp: when a tile raises the maximum, s is rescaled by
exp(m_old - m_new)). Pass 2 walks the tiles again and overwrites the logits with the gradient
softmax(z) - onehot(y), in place: no second [N, V] tensor is ever allocated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cross_entropy_rows(logits_ptr, targets_ptr, loss_ptr, stride, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride
    target = tl.load(targets_ptr + row)
    offsets = tl.arange(0, BLOCK)
    m = -float("inf")
    s = 0.0
    for start in range(0, vocab, BLOCK):
        cols = start + offsets
        z = tl.load(base + cols, mask=cols < vocab, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    keep = target != -100
    safe = tl.where(keep, target, 0)
    picked = tl.load(base + safe).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(keep, lse - picked, 0.0))
    for start in range(0, vocab, BLOCK):
        cols = start + offsets
        z = tl.load(base + cols, mask=cols < vocab, other=0.0).to(tl.float32)
        grad = tl.exp(z - lse) - tl.where(cols == safe, 1.0, 0.0)
        grad = tl.where(keep, grad, 0.0)
        tl.store(base + cols, grad, mask=cols < vocab)


def cross_entropy_value_and_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per row `[N]`, gradient `[N, V]`): fp32 logits are overwritten by their gradient and returned."""
    z = logits if logits.dtype == torch.float32 and logits.is_contiguous() else logits.float().contiguous()
    rows, vocab = z.shape
    loss = torch.empty(rows, dtype=torch.float32, device=z.device)
    if rows:
        block = min(4096, triton.next_power_of_2(vocab))
        _cross_entropy_rows[(rows,)](z, targets.contiguous(), loss, z.stride(0), vocab, BLOCK=block)
    return loss, z
