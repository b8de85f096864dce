"""The Triton kernels of `arctic_embed.kernels.infonce` (imported only when a Triton block runs)."""

import triton
import triton.language as tl


@triton.jit
def scores_tile(
    q_ptr,
    d_ptr,
    rows_idx,
    cols_idx,
    rows,
    columns,
    dim,
    inv_t,
    mask_ptr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        qt = tl.load(
            q_ptr + rows_idx[:, None] * dim + ks[None, :],
            mask=(rows_idx[:, None] < rows) & (ks[None, :] < dim),
            other=0.0,
        )
        dt = tl.load(
            d_ptr + cols_idx[:, None] * dim + ks[None, :],
            mask=(cols_idx[:, None] < columns) & (ks[None, :] < dim),
            other=0.0,
        )
        acc = tl.dot(qt, tl.trans(dt), acc, input_precision="ieee")
    inside = (rows_idx[:, None] < rows) & (cols_idx[None, :] < columns)
    ok = tl.load(mask_ptr + rows_idx[:, None] * columns + cols_idx[None, :], mask=inside, other=0)
    return tl.where(inside & (ok != 0), acc * inv_t, float("-inf"))


@triton.jit
def forward(
    q_ptr,
    d_ptr,
    mask_ptr,
    target_ptr,
    lse_ptr,
    picked_ptr,
    rows,
    columns,
    dim,
    inv_t,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows_idx = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    target = tl.load(target_ptr + rows_idx, mask=rows_idx < rows, other=-1)
    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    picked = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, columns, BLOCK_N):
        cols_idx = n0 + tl.arange(0, BLOCK_N)
        s = scores_tile(
            q_ptr, d_ptr, rows_idx, cols_idx, rows, columns, dim, inv_t, mask_ptr, BLOCK_M, BLOCK_N, BLOCK_K
        )
        new_max = tl.maximum(running_max, tl.max(s, axis=1))
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)  # a row with no candidate yet
        running_sum = running_sum * tl.exp(running_max - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
        running_max = new_max
        hit = cols_idx[None, :] == target[:, None]
        picked += tl.sum(tl.where(hit, s, 0.0), axis=1)
    lse = running_max + tl.log(tl.where(rows_idx < rows, running_sum, 1.0))  # padding rows: no log(0)
    tl.store(lse_ptr + rows_idx, lse, mask=rows_idx < rows)
    tl.store(picked_ptr + rows_idx, picked, mask=rows_idx < rows)


@triton.jit
def gradient_tile(
    q_ptr,
    d_ptr,
    mask_ptr,
    target_ptr,
    lse_ptr,
    scale_ptr,
    rows_idx,
    cols_idx,
    rows,
    columns,
    dim,
    inv_t,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    s = scores_tile(
        q_ptr, d_ptr, rows_idx, cols_idx, rows, columns, dim, inv_t, mask_ptr, BLOCK_M, BLOCK_N, BLOCK_K
    )
    lse = tl.load(lse_ptr + rows_idx, mask=rows_idx < rows, other=0.0)
    target = tl.load(target_ptr + rows_idx, mask=rows_idx < rows, other=-1)
    p = tl.exp(s - lse[:, None])
    p = tl.where(cols_idx[None, :] == target[:, None], p - 1.0, p)
    return p * tl.load(scale_ptr)


@triton.jit
def backward_dq(
    q_ptr,
    d_ptr,
    mask_ptr,
    target_ptr,
    lse_ptr,
    scale_ptr,
    rows,
    columns,
    dim,
    inv_t,
    dq_ptr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows_idx = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    out = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, columns, BLOCK_N):
        cols_idx = n0 + tl.arange(0, BLOCK_N)
        g = gradient_tile(
            q_ptr,
            d_ptr,
            mask_ptr,
            target_ptr,
            lse_ptr,
            scale_ptr,
            rows_idx,
            cols_idx,
            rows,
            columns,
            dim,
            inv_t,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
        )
        dt = tl.load(
            d_ptr + cols_idx[:, None] * dim + out[None, :],
            mask=(cols_idx[:, None] < columns) & (out[None, :] < dim),
            other=0.0,
        )
        acc = tl.dot(g, dt, acc, input_precision="ieee")
    tl.store(
        dq_ptr + rows_idx[:, None] * dim + out[None, :],
        acc,
        mask=(rows_idx[:, None] < rows) & (out[None, :] < dim),
    )


@triton.jit
def backward_dd(
    q_ptr,
    d_ptr,
    mask_ptr,
    target_ptr,
    lse_ptr,
    scale_ptr,
    rows,
    columns,
    dim,
    inv_t,
    dd_ptr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    cols_idx = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for m0 in range(0, rows, BLOCK_M):
        rows_idx = m0 + tl.arange(0, BLOCK_M)
        g = gradient_tile(
            q_ptr,
            d_ptr,
            mask_ptr,
            target_ptr,
            lse_ptr,
            scale_ptr,
            rows_idx,
            cols_idx,
            rows,
            columns,
            dim,
            inv_t,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
        )
        qt = tl.load(
            q_ptr + rows_idx[:, None] * dim + out[None, :],
            mask=(rows_idx[:, None] < rows) & (out[None, :] < dim),
            other=0.0,
        )
        acc = tl.dot(tl.trans(g), qt, acc, input_precision="ieee")
    tl.store(
        dd_ptr + cols_idx[:, None] * dim + out[None, :],
        acc,
        mask=(cols_idx[:, None] < columns) & (out[None, :] < dim),
    )
