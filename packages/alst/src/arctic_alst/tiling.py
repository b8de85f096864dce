"""Tiled MLP: each decoder MLP runs over sequence tiles, so its [tokens, intermediate] activations
exist for one tile at a time.

A gated MLP (`down(act(gate(x)) * up(x))`: Llama, Qwen, Mistral, ...) is applied to the tiles of
x one after another without saving activations, and recomputed tile by tile in the backward.
Memory for the MLP's intermediate activations drops by the number of tiles; compute grows by one
MLP forward. Tiles: ceil(tokens / hidden_size) (ArcticTraining's choice), agreed by all ranks
(the maximum), since under ZeRO-3 every tile's recompute gathers the weights collectively.

The autograd function is DeepSpeed's `TiledMLP` (`deepspeed.runtime.sequence_parallel`): it marks
the weights `ds_grad_is_ready = False` for every tile but the last, so ZeRO reduces each weight
gradient once, after the last tile has added its part.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch

from arctic_core.gather import agree_max


def gated_mlp(module: Any, x: torch.Tensor) -> torch.Tensor:
    return module.down_proj(module.act_fn(module.gate_proj(x)) * module.up_proj(x))


def tile_count(tokens: int, hidden: int, device: torch.device) -> int:
    """ceil(tokens / hidden), the maximum over every rank when distributed (`device` is unused)."""
    return agree_max(max(1, math.ceil(tokens / hidden)))


def tiled_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    tiles = tile_count(x.shape[-2], x.shape[-1], x.device)
    if tiles == 1 or not torch.is_grad_enabled():
        return gated_mlp(self, x)
    weights = [p for p in self.parameters() if p.requires_grad]
    return TiledMLP.apply(gated_mlp, self, x, tiles, weights)


def is_gated_mlp(module: torch.nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def tile_mlps(model: torch.nn.Module) -> int:
    """Make every gated MLP of `model` tiled (per instance; parameter names unchanged); returns how many."""
    count = 0
    for module in model.modules():
        if is_gated_mlp(module):
            module.forward = types.MethodType(tiled_forward, module)  # type: ignore[method-assign]
            count += 1
    return count
