"""Packed rows under sdpa: attention one sample at a time, and no block mask built.

transformers keeps packed samples apart (compat/packing.py) by building, from the position resets, a
block-diagonal causal mask of every row, `[B, 1, L, L]`, and handing it to sdpa. That is correct but
wasteful three ways: each row attends over its whole length L (L² scores, where its samples need
Σ nᵢ²); with an explicit mask sdpa cannot take its causal path (on CUDA: no flash kernel, the
memory-efficient one instead); and the mask itself is L² per row (a 32K-token row: 1 GiB).

`enable(model)` selects, on that model alone, the implementation `arctic_packed_sdpa` (registered once
through transformers' public `AttentionInterface` and `AttentionMaskInterface`; nothing existing is
touched):

- its mask function returns no mask when there is nothing but causality and packing to express (no
  2D mask, no cache offset, as many keys as queries: a training forward), else sdpa's own mask;
- its attention function, given no mask and as many keys as queries, runs
  `scaled_dot_product_attention(is_causal=True)` once per segment (a run of consecutive position ids:
  a packed sample; the collate restarts each at 0 and padding continues counting), else sdpa's own
  function with the mask it was given (padded batches, generation with a cache).

So a packed forward never builds a mask and spends Σ nᵢ² on scores; everything else runs exactly as
under `sdpa`. `eligible(model)` keeps it to causal, text-only, full-attention decoders (a sliding
window, logit soft-capping or attention sinks change the mask or the scores: those keep transformers'
mask). flash_attention_2/3 need none of this: transformers already hands them varlen boundaries.
`arctic_alst.ulysses` uses `segments` and `attend_segments` for its gathered rows too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from arctic_core.errors import ArcticError

NAME = "arctic_packed_sdpa"
"""The attention implementation (and mask function) Arctic registers and selects on a packed run's model."""

FAMILIES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "olmo",
        "olmo2",
        "olmoe",
        "granite",
        "granitemoe",
        "phi3",
        "smollm3",
    }
)
"""Model types whose sdpa attention is plain causal attention over (q, k, v) with the mask transformers
builds: their attention function gets `position_ids`, and nothing else shapes the scores."""


def segments(positions: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row of `[B, n]` position ids: the (start, end) of each run of consecutive positions."""
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    out = []
    for row in starts.cpu():
        begin = row.nonzero().flatten().tolist()
        out.append(list(zip(begin, [*begin[1:], row.numel()])))
    return out


def causal_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None, dropout: float
) -> torch.Tensor:
    """Causal sdpa over one segment; fewer KV heads than query heads are shared, not copied (`enable_gqa`)."""
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, is_causal=True, dropout_p=dropout, scale=scaling, enable_gqa=gqa
    )


def attend_segments(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: list[list[tuple[int, int]]],
    scaling: float | None,
    dropout: float,
    core: Any = None,
) -> torch.Tensor:
    """Causal attention within each segment of each row: [B, hq, n, D] (k, v: [B, hkv, n, D]) -> [B, hq, n, D].

    `core(q, k, v, scaling, dropout)` attends one segment causally; None: sdpa (`causal_sdpa`), which
    takes grouped KV heads as they are; another core gets each KV head repeated for its query heads."""
    if core is None:
        core = causal_sdpa
    elif q.shape[1] != k.shape[1]:  # each KV head serves `groups` consecutive query heads
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    outputs = []
    for row, segs in enumerate(rows):
        if len(segs) == 1:
            outputs.append(core(q[row : row + 1], k[row : row + 1], v[row : row + 1], scaling, dropout))
            continue
        pieces = [
            core(
                q[row : row + 1, :, s:e], k[row : row + 1, :, s:e], v[row : row + 1, :, s:e], scaling, dropout
            )
            for s, e in segs
        ]
        outputs.append(torch.cat(pieces, dim=2))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)


_last: tuple[torch.Tensor, list[list[tuple[int, int]]]] | None = None
"""The position ids of the latest forward and their segments: every layer gets the same tensor, so the
segments (a device-to-host copy on a GPU) are found once per forward."""


def cached_segments(positions: torch.Tensor) -> list[list[tuple[int, int]]]:
    global _last
    if _last is None or _last[0] is not positions:
        _last = (positions, segments(positions))
    return _last[1]


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, H, L, D] -> ([B, L, H, D], None)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if attention_mask is not None or query.shape[-2] != key.shape[-2]:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    unsupported = [x for x in ("sliding_window", "softcap", "s_aux") if kwargs.get(x) is not None]
    if unsupported or not getattr(module, "is_causal", True):
        raise ArcticError(
            f"{type(module).__name__} uses {', '.join(unsupported) or 'bidirectional attention'}, which "
            f"{NAME!r} does not implement (arctic_core.engine.packed_attention.eligible should have kept it off)"
        )
    positions = kwargs.get("position_ids")
    if positions is None:
        raise ArcticError(
            f"{type(module).__name__} passes no position_ids to its attention function, so {NAME!r} cannot "
            "find the packed samples (arctic_core.engine.packed_attention.FAMILIES should not list it)"
        )
    if positions.shape[0] != query.shape[0]:
        positions = positions.expand(query.shape[0], -1)
    out = attend_segments(query, key, value, cached_segments(positions), scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


def packed_sdpa_mask(**kwargs: Any) -> torch.Tensor | None:
    """transformers' mask-function signature: no mask for a training forward (causality and packing only)."""
    from transformers.masking_utils import sdpa_mask

    offset = kwargs.get("q_offset", 0)
    no_offset = not (offset.any() if isinstance(offset, torch.Tensor) else offset)
    if (
        kwargs.get("attention_mask") is None
        and no_offset
        and kwargs.get("kv_length") == kwargs.get("q_length")
    ):
        return None
    return sdpa_mask(**kwargs)


def register() -> None:
    """Register `NAME` with transformers' attention and mask interfaces (idempotent; never overwrites)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for registry, interface, function in (
        (ALL_ATTENTION_FUNCTIONS, AttentionInterface, packed_sdpa),
        (ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, packed_sdpa_mask),
    ):
        found = registry._global_mapping.get(NAME)
        if found is None:
            interface.register(NAME, function)
        elif found is not function:
            raise ArcticError(f"transformers' {interface.__name__} already has another {NAME!r}: {found!r}")


def eligible(model: Any) -> str | None:
    """Why `model` keeps transformers' block mask (None: it can take `NAME`)."""
    config = getattr(model, "config", None)
    if config is None:
        return "not a transformers model"
    if config._attn_implementation != "sdpa":
        return f"attn_implementation is {config._attn_implementation!r}, not 'sdpa'"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        return "a multimodal model"
    if config.model_type not in FAMILIES:
        return f"model type {config.model_type!r} is not among those checked (packed_attention.FAMILIES)"
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    window = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    if layer_types != {"full_attention"} or window:
        return "it has sliding-window attention"
    return None


def enable(model: Any) -> str | None:
    """Select `NAME` on `model` (not on other models of the process) when `eligible`; returns why not, else None."""
    why = eligible(model)
    if why is not None:
        return why
    register()
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:
        return "transformers' set_attn_implementation refused it"
    return None


def how_kept_apart(model: Any, why_not: str | None) -> str:
    """For the run's log: how packed samples of `model` are kept apart, given `enable`'s answer."""
    if why_not is None:
        return f"attended one at a time ({NAME})"
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation in ("sdpa", "eager"):
        return f"kept apart by transformers' block mask ({why_not})"
    if str(implementation).startswith("flash_attention"):
        return "kept apart by flash attention's varlen kernels"
    return f"kept apart by attention {implementation!r}"


def disable(model: Any) -> None:
    """Give `model` plain sdpa back (before saving a config, or to compare)."""
    if getattr(model.config, "_attn_implementation", None) == NAME:
        model.set_attn_implementation("sdpa")
