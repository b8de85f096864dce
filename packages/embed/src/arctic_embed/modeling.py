"""The bi-encoder: one shared transformers `AutoModel` tower, a pooling, L2 normalisation.

    h = encoder(input_ids, attention_mask).last_hidden_state           [B, L, H]
    e = pool(h, mask)   first_token: h[:, 0]   mean: sum(h * m) / sum(m)
                        last_token: h[b, last position with m = 1]   (left or right padding)
    embedding = e[:, :d] / ||e[:, :d]||      (d = the full width, or a Matryoshka width)

The trained module is the encoder itself (a `PreTrainedModel`, so core's PEFT, ZeRO-3 and
`huggingface` checkpoint apply unchanged); pooling and normalisation are functions of its
output. `embed_texts` runs the encoder in chunks, optionally under non-reentrant activation
checkpointing per chunk: then only the chunk's inputs and pooled outputs stay alive between
forward and backward, and each chunk's activations are recomputed in the backward pass, which
bounds memory by one chunk whatever the global batch (the GradCache idea, without a second
backward pass: one graph, one `engine.backward`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

POOLINGS = ("first_token", "mean", "last_token")
BIENCODER_CONFIG = "biencoder_config.json"


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool `[B, L, H]` hidden states over the positions where `mask` is 1."""
    if pooling == "first_token":
        return hidden[:, 0]
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if pooling == "last_token":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp(min=0)]
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def normalize(embeddings: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The first `dim` coordinates (all when None), L2-normalised, in fp32."""
    cut = embeddings if dim is None else embeddings[:, :dim]
    return F.normalize(cut.float(), dim=-1)


def encode(encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooled (not yet normalised) embeddings `[B, H]` of one call of the encoder."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return pool(hidden, attention_mask, pooling)


def embed_texts(
    encoder: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str,
    *,
    chunk_size: int = 0,
) -> torch.Tensor:
    """Pooled embeddings of every row, `chunk_size` rows per encoder call (0: one call).

    Chunked, the rows go through the encoder longest first and each chunk is cut to its own
    longest row (`trim_padding`), so a chunk of short texts does not pay for the batch's longest;
    the embeddings come back in the rows' order. With gradients enabled, each chunk runs under
    non-reentrant activation checkpointing (its RNG state preserved, so dropout recomputes
    identically).
    """
    rows = input_ids.shape[0]
    if chunk_size <= 0 or chunk_size >= rows:
        return encode(encoder, input_ids, attention_mask, pooling)
    order = torch.argsort(attention_mask.sum(dim=1), descending=True, stable=True)
    input_ids, attention_mask = input_ids[order], attention_mask[order]
    parts = []
    for start in range(0, rows, chunk_size):
        ids, mask = trim_padding(
            input_ids[start : start + chunk_size], attention_mask[start : start + chunk_size]
        )
        if not torch.is_grad_enabled():
            parts.append(encode(encoder, ids, mask, pooling))
            continue
        parts.append(checkpoint(encode, encoder, ids, mask, pooling, use_reentrant=False))
    return torch.cat(parts)[torch.argsort(order)]


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing all-padding columns (right padding)."""
    used = attention_mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 1
    return input_ids[:, :width], attention_mask[:, :width]


def save_biencoder_config(folder: str | Path, pooling: str, **extra: Any) -> None:
    """ArcticTraining's `biencoder_config.json` ({"pooling": ...}) beside the encoder's weights."""
    (Path(folder) / BIENCODER_CONFIG).write_text(json.dumps({"pooling": pooling, **extra}, indent=2) + "\n")


def read_pooling(folder: str | Path, default: str = "first_token") -> str:
    """The pooling a saved model folder declares: biencoder_config.json, else a sentence-transformers
    Pooling module's config.json (either format), else `default`."""
    from arctic_embed.export import read_sentence_transformers_pooling

    found = read_sentence_transformers_pooling(folder)
    return found if found is not None else default
