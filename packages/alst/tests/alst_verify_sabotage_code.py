"""Recipe `code:` for the alst verify sabotage test: a trainer and a patch that break `sp` and `tiled`.

- Sequence parallelism: `micro_batch_weight` returns the micro-batch's samples, as code written
  for a per-sample mean does. The loss (core's default) is the mean over the trainable tokens of
  what the rank holds; under `sequence_parallel_size = 2` both ranks hold the same samples (each
  half of every sequence), so both shards weigh the same whatever their trainable tokens, and the
  step is the mean of the two shard means instead of the mean over all its tokens. On one rank
  (one micro-batch) the weight cancels out: the reference is right.
- Tiled MLP: `arctic_alst.tiling.tiled_forward` is replaced by one whose backward loses the
  last tile's gradient (what a loop over the tiles that stops one short does): the forward, and
  so the loss, is unchanged; the MLP weights miss the last tile's part of their gradients. The
  last tile, because it is the one a check on short padded rows would miss: verify packs the
  samples into rows of 3 tiles, so real tokens reach every tile.

The verify workers import this file to find the recipe's trainer, before they build the model,
so every tiled MLP gets the patched forward.
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_alst import tiling
from arctic_core.trainer import Trainer

_tiled_forward = tiling.tiled_forward


class SampleWeighted(Trainer):
    name = "alst_verify_sabotaged"

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        return float(batch["input_ids"].shape[0])


def last_tile_lost(self: Any, x: torch.Tensor) -> torch.Tensor:
    out = _tiled_forward(self, x)
    tiles = tiling.tile_count(x.shape[-2], x.shape[-1], x.device)
    if tiles > 1 and out.requires_grad:
        last = x.chunk(tiles, dim=-2)[-1].shape[-2]

        def drop(grad: torch.Tensor) -> torch.Tensor:
            kept = grad.shape[-2] - last
            return torch.cat([grad[..., :kept, :], torch.zeros_like(grad[..., kept:, :])], dim=-2)

        out.register_hook(drop)
    return out


tiling.tiled_forward = last_tile_lost
