"""One block of the chunked InfoNCE: a PyTorch reference and a Triton kernel with the same contract.

A block is R rows (queries `q_rows [R, D]`, already gathered per row) against every document
`d [N, D]`, with a boolean candidate mask `allowed [R, N]` (the target is always allowed) and
the target column of each row. With s = q_rows @ d^T / τ, masked to -inf outside `allowed`:

    forward:   lse_r = logsumexp_j s_rj (online, over column tiles)      picked_r = s_r,t(r)
    backward:  G = scale · (exp(s - lse) - onehot(t))                      (scale = dL/dloss / (τ·rows))
               dq_rows = G @ d            dd = G^T @ q_rows

The Triton version never holds a row of scores: `_forward` runs an online log-sum-exp over
column tiles (one program per row tile); `_backward_dq` (one program per row tile and output
dimension tile) and `_backward_dd` (one per column tile and output dimension tile) recompute
their score tiles from q, d and lse, so the gradients need no atomics and are deterministic.
Scores are dot products accumulated over `BLOCK_K`-wide slices of the embedding, in fp32 with
IEEE products (no TF32: at τ = 0.02 a score's error is multiplied by 50).

Triton is imported only when a Triton block runs. On a CPU, Triton's interpreter runs the same
kernels when `TRITON_INTERPRET=1` is set before triton is first imported (the tests do so).
"""

from __future__ import annotations

import torch


def torch_forward(
    q_rows: torch.Tensor, d: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse, picked) of the block's scaled, masked scores: the reference."""
    scores = ((q_rows @ d.T) / temperature).masked_fill(~allowed, float("-inf"))
    return torch.logsumexp(scores, dim=-1), scores.gather(1, target[:, None]).squeeze(1)


def torch_backward(
    q_rows: torch.Tensor,
    d: torch.Tensor,
    allowed: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq_rows, dd) of the block, scale · (softmax - onehot) recomputed from lse: the reference."""
    scores = ((q_rows @ d.T) / temperature).masked_fill(~allowed, float("-inf"))
    probs = torch.exp(scores - lse[:, None])
    probs[torch.arange(q_rows.shape[0], device=q_rows.device), target] -= 1.0
    probs = probs * scale
    return probs @ d, probs.T @ q_rows


def _block_sizes(rows: int, columns: int, dim: int) -> dict[str, int]:
    import triton

    return {
        "BLOCK_M": min(64, max(16, triton.next_power_of_2(rows))),
        "BLOCK_N": min(64, max(16, triton.next_power_of_2(columns))),
        "BLOCK_K": min(64, max(16, triton.next_power_of_2(dim))),
        "BLOCK_D": min(128, max(16, triton.next_power_of_2(dim))),
    }


def triton_forward(
    q_rows: torch.Tensor, d: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch_forward` as one Triton launch (fp32)."""
    import triton

    from arctic_embed.kernels import _triton as kernels

    q_rows, d = q_rows.float().contiguous(), d.float().contiguous()
    mask = allowed.contiguous().view(torch.uint8)
    target = target.contiguous()
    rows, dim = q_rows.shape
    columns = d.shape[0]
    lse = torch.empty(rows, dtype=torch.float32, device=q_rows.device)
    picked = torch.empty_like(lse)
    sizes = _block_sizes(rows, columns, dim)
    grid = (triton.cdiv(rows, sizes["BLOCK_M"]),)
    kernels.forward[grid](
        q_rows,
        d,
        mask,
        target,
        lse,
        picked,
        rows,
        columns,
        dim,
        1.0 / temperature,
        BLOCK_M=sizes["BLOCK_M"],
        BLOCK_N=sizes["BLOCK_N"],
        BLOCK_K=sizes["BLOCK_K"],
    )
    return lse, picked


def triton_backward(
    q_rows: torch.Tensor,
    d: torch.Tensor,
    allowed: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch_backward` as two Triton launches (dq over row tiles, dd over column tiles; fp32)."""
    import triton

    from arctic_embed.kernels import _triton as kernels

    q_rows, d = q_rows.float().contiguous(), d.float().contiguous()
    mask = allowed.contiguous().view(torch.uint8)
    target, lse = target.contiguous(), lse.float().contiguous()
    scale = scale.float().reshape(1).contiguous()
    rows, dim = q_rows.shape
    columns = d.shape[0]
    dq = torch.empty_like(q_rows)
    dd = torch.empty_like(d)
    s = _block_sizes(rows, columns, dim)
    args = (q_rows, d, mask, target, lse, scale, rows, columns, dim, 1.0 / temperature)
    blocks = {
        "BLOCK_M": s["BLOCK_M"],
        "BLOCK_N": s["BLOCK_N"],
        "BLOCK_K": s["BLOCK_K"],
        "BLOCK_D": s["BLOCK_D"],
    }
    dim_tiles = triton.cdiv(dim, s["BLOCK_D"])
    kernels.backward_dq[(triton.cdiv(rows, s["BLOCK_M"]), dim_tiles)](*args, dq, **blocks)
    kernels.backward_dd[(triton.cdiv(columns, s["BLOCK_N"]), dim_tiles)](*args, dd, **blocks)
    return dq, dd


TORCH_BLOCK = (torch_forward, torch_backward)
"""(forward, backward): the PyTorch reference of kernel `embed.infonce`."""
TRITON_BLOCK = (triton_forward, triton_backward)
"""(forward, backward): the Triton version of kernel `embed.infonce`."""
