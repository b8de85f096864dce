"""Ulysses sequence parallelism around attention, with packed samples kept apart in every backend.

Each of the S ranks of a sequence-parallel group holds a contiguous slice of every sequence
(`arctic_alst.sharding`: k real positions plus one placeholder at the end of each slice). Around
attention, and only there, the layout changes:

    q, k, v  [B, H, k+1, D] on every rank --all-to-all--> [B, H/S, S(k+1), D]: all positions, H/S heads
    attention over the whole sequence, one segment (packed sample) at a time, placeholders left out
    output   [B, H/S, S(k+1), D] --all-to-all--> [B, H, k+1, D]: back to this rank's positions

When the model has fewer KV heads than S, each is repeated S/kv times first (so every rank gets
one). The segments come from the global position ids, gathered once per forward: a new sample
starts wherever a position is not its predecessor's plus one (the collate restarts each packed
sample at 0, and padding continues counting). Within a segment attention is causal; no token ever
sees another segment or a placeholder, whatever the backend:

- `sdpa`: `scaled_dot_product_attention(is_causal=True)` per segment (no mask is ever built);
- `eager`: scores, causal mask, fp32 softmax per segment (what transformers' eager does);
- `flash_attention_2`/`_3` (flash-attn installed, CUDA): one varlen call over all segments.

DeepSpeed's `UlyssesSPAttentionHF` discards the attention mask and lets sdpa run causally over
the whole gathered row, so packed samples attend to each other there, and it refuses eager: this
module replaces it. The all-to-all is `torch.distributed.all_to_all_single`, differentiable
through `_SeqToHeads` / `_HeadsToSeq` (each one's backward is the other's forward).

Nothing process-wide changes: `enable(model, group, size)` registers one dispatcher under Arctic's
own name `arctic_ulysses` through transformers' public `AttentionInterface.register` (no existing
entry is touched) and selects it on `model` alone (`set_attn_implementation`), remembering the
model's own implementation as the inner one; the dispatcher finds each attention module's
`UlyssesAttention` by the module. Other models of the process (a freshly loaded one, a frozen
companion that is not enabled) keep their attention. `disable(model)` gives the model its own
implementation back. transformers builds no attention mask for a name it has no mask function for,
so the quadratic mask of the local slice is never allocated.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from arctic_alst.config import SUPPORTED  # in the light config module: the recipe check uses it
from arctic_core.engine.packed_attention import attend_segments, segments
from arctic_core.errors import ArcticError, RecipeError

NAME = "arctic_ulysses"
"""The attention implementation Arctic registers with transformers and selects on the trained model."""


def _seq_to_heads(x: torch.Tensor, group: Any, size: int) -> torch.Tensor:
    """[B, H, n, D] (this rank's positions, all heads) -> [B, H/S, S*n, D] (all positions, its heads)."""
    b, h, n, d = x.shape
    send = x.reshape(b, size, h // size, n, d).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * n, d)


def _heads_to_seq(y: torch.Tensor, group: Any, size: int) -> torch.Tensor:
    """The inverse of `_seq_to_heads`: [B, H/S, S*n, D] -> [B, H, n, D]."""
    b, hl, total, d = y.shape
    n = total // size
    send = y.reshape(b, hl, size, n, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.transpose(0, 1).reshape(b, size * hl, n, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, size: int) -> torch.Tensor:
        ctx.group, ctx.size = group, size
        return _seq_to_heads(x, group, size)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _heads_to_seq(grad.contiguous(), ctx.group, ctx.size), None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, group: Any, size: int) -> torch.Tensor:
        ctx.group, ctx.size = group, size
        return _heads_to_seq(y, group, size)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _seq_to_heads(grad.contiguous(), ctx.group, ctx.size), None, None


def check_heads(config: Any, size: int) -> None:
    """Attention heads divisible by the sequence-parallel size; KV heads divisible by it or dividing it."""
    from arctic_alst.config import heads_problem

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    problem = heads_problem(heads, getattr(text, "num_key_value_heads", None) or heads, size)
    if problem:
        raise RecipeError(problem, path="sequence_parallel_size")


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, dropout: float) -> torch.Tensor:
    n = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(causal, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights, v)


def _flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: list[list[tuple[int, int]]],
    scaling: float,
    dropout: float,
) -> torch.Tensor:
    """One varlen flash-attention call over every segment of every row: [B, h, n, D] in and out."""
    from flash_attn import flash_attn_varlen_func

    b, h, n, d = q.shape
    bounds = [row * n + s for row, segs in enumerate(rows) for s, _ in segs] + [b * n]
    cu = torch.tensor(bounds, dtype=torch.int32, device=q.device)
    longest = max(e - s for segs in rows for s, e in segs)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(b * n, t.shape[1], d)

    out = flash_attn_varlen_func(
        flat(q),
        flat(k),
        flat(v),
        cu,
        cu,
        longest,
        longest,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
    )
    return out.reshape(b, n, h, d).transpose(1, 2)


class UlyssesAttention:
    """Callable with transformers' attention-function signature; see the module docstring."""

    def __init__(self, group: Any, size: int, implementation: str):
        if implementation not in SUPPORTED:
            raise RecipeError(
                f"is {implementation!r}; sequence parallelism supports {', '.join(SUPPORTED)}",
                path="model.attn_implementation",
            )
        self.group, self.size, self.implementation = group, size, implementation
        self._cached: tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]] | None = None
        self.positions: torch.Tensor | None = None
        self.handle: Any = None  # the position-tracking hook `enable` adds

    def track(self, model: torch.nn.Module) -> Any:
        """Read the position ids of every forward of `model` (a layer may not pass them to attention)."""

        def keep(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.positions = kwargs.get("position_ids")

        return model.register_forward_pre_hook(keep, with_kwargs=True)

    def layout(self, local_positions: torch.Tensor) -> tuple[torch.Tensor, list[list[tuple[int, int]]]]:
        """(indices of the real positions in the gathered sequence, their segments per row); once per forward."""
        if self._cached is not None and self._cached[0] is local_positions:
            return self._cached[1], self._cached[2]
        parts = [torch.empty_like(local_positions) for _ in range(self.size)]
        dist.all_gather(parts, local_positions.contiguous(), group=self.group)
        n = local_positions.shape[1]
        real = torch.tensor(
            [r * n + j for r in range(self.size) for j in range(n - 1)], device=local_positions.device
        )
        gathered = torch.cat(parts, dim=1)[:, real]
        found = segments(gathered)
        self._cached = (local_positions, real, found)
        return real, found

    def __call__(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        positions = self.positions if self.positions is not None else kwargs.get("position_ids")
        if positions is None or positions.shape[-1] != query.shape[-2]:
            raise RuntimeError(
                "sequence parallelism needs the position_ids of the sharded batch in every forward"
            )
        size, group = self.size, self.group
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        if key.shape[1] < size:  # fewer KV heads than ranks: give every rank one
            key = key.repeat_interleave(size // key.shape[1], dim=1)
            value = value.repeat_interleave(size // value.shape[1], dim=1)
        q = _SeqToHeads.apply(query, group, size)
        k = _SeqToHeads.apply(key, group, size)
        v = _SeqToHeads.apply(value, group, size)
        real, rows = self.layout(positions)
        out = torch.zeros_like(q)
        attended = self.attend(q[:, :, real], k[:, :, real], v[:, :, real], rows, scale, dropout)
        out = out.index_copy(2, real, attended)
        return _HeadsToSeq.apply(out, group, size).transpose(1, 2).contiguous(), None

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rows: list[list[tuple[int, int]]],
        scaling: float,
        dropout: float,
    ) -> torch.Tensor:
        """Causal attention within each segment of each row: [B, hq, n, D] (k, v: [B, hkv, n, D])."""
        if self.implementation.startswith("flash_attention"):
            return _flash(q, k, v, rows, scaling, dropout)
        return attend_segments(
            q, k, v, rows, scaling, dropout, core=_eager if self.implementation == "eager" else None
        )


_BY_MODULE: weakref.WeakKeyDictionary[torch.nn.Module, UlyssesAttention] = weakref.WeakKeyDictionary()


def ulysses_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """What transformers calls for `attn_implementation = "arctic_ulysses"`: the module's `UlyssesAttention`."""
    attention = _BY_MODULE.get(module)
    if attention is None:
        raise ArcticError(
            f"{type(module).__name__} selects attention {NAME!r} but belongs to no model that "
            "arctic_alst.ulysses.enable prepared (a copy of one? enable the copy)"
        )
    return attention(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register `ulysses_attention` as `arctic_ulysses` with transformers (idempotent; never overwrites)."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    found = ALL_ATTENTION_FUNCTIONS.get(NAME)
    if found is ulysses_attention:
        return
    if found is not None:
        raise ArcticError(f"transformers' AttentionInterface already has another {NAME!r}: {found!r}")
    AttentionInterface.register(NAME, ulysses_attention)


def enable(model: Any, group: Any, size: int) -> UlyssesAttention:
    """Route `model`'s attention (only this model's) through Ulysses over `group`; returns the wrapper.

    The wrapper reads every forward's position ids (`track`); `disable(model)` undoes both.
    """
    current = model.config._attn_implementation
    if current == NAME:
        raise ArcticError("sequence parallelism is already enabled on this model")
    attention = UlyssesAttention(group, size, current)
    register()
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:
        raise ArcticError(
            f"{type(model).__name__} did not take attn_implementation {NAME!r} (transformers' "
            "set_attn_implementation refused it: see the warning above)"
        )
    for module in model.modules():
        _BY_MODULE[module] = attention
    attention.handle = attention.track(model)
    return attention


def disable(model: Any) -> None:
    """Give `model` back its own attention implementation (the inverse of `enable`)."""
    attention = _BY_MODULE.get(model)
    if attention is None:
        return
    if attention.handle is not None:
        attention.handle.remove()
    for module in model.modules():
        _BY_MODULE.pop(module, None)
    model.set_attn_implementation(attention.implementation)
