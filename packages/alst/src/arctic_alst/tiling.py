"""Tiled MLP: each decoder MLP runs over sequence tiles, so its [tokens, intermediate] activations
exist for one tile at a time.

A gated MLP (`down(act(gate(x)) * up(x))`: Llama, Qwen, Mistral, ...) is applied to the tiles of
x one after another without saving activations, and recomputed tile by tile in the backward.
Memory for the MLP's intermediate activations drops by the number of tiles; compute grows by one
MLP forward. Tiles: ceil(tokens / hidden_size) (ArcticTraining's choice), agreed by all ranks
(the maximum), since under ZeRO-3 every tile's recompute gathers the weights collectively.

`tile_mlps` puts a `TiledMLP` module in each gated MLP's place (the same submodules under the same
names: parameter names and checkpoints are unchanged; the MLP's class and every other model of the
process are untouched).

The autograd function is DeepSpeed's `TiledMLP` (`deepspeed.runtime.sequence_parallel`): it marks
the weights `ds_grad_is_ready = False` for every tile but the last, so ZeRO reduces each weight
gradient once, after the last tile has added its part.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from arctic_core.gather import agree_max


def gated_mlp(module: Any, x: torch.Tensor) -> torch.Tensor:
    return module.down_proj(module.act_fn(module.gate_proj(x)) * module.up_proj(x))


def tile_count(tokens: int, hidden: int, device: torch.device) -> int:
    """ceil(tokens / hidden), the maximum over every rank when distributed (`device` is unused)."""
    return agree_max(max(1, math.ceil(tokens / hidden)))


def tiled_forward(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """`mlp` (a gated MLP, or a `TiledMLP` holding its parts) over the tiles of `x`."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP as TiledMLPFunction

    tiles = tile_count(x.shape[-2], x.shape[-1], x.device)
    if tiles == 1 or not torch.is_grad_enabled():
        return gated_mlp(mlp, x)
    weights = [p for p in mlp.parameters() if p.requires_grad]
    return TiledMLPFunction.apply(gated_mlp, mlp, x, tiles, weights)


def is_gated_mlp(module: torch.nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


class TiledMLP(torch.nn.Module):
    """A gated MLP run by `tiled_forward`: it adopts the MLP's submodules, parameters and buffers under
    their own names, so the parameter names (and the saved checkpoint) are those of the original."""

    def __init__(self, mlp: torch.nn.Module):
        super().__init__()
        for name, child in mlp.named_children():
            self.add_module(name, child)
        for name, param in mlp.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in mlp.named_buffers(recurse=False):
            self.register_buffer(name, buffer, persistent=name not in mlp._non_persistent_buffers_set)
        self.act_fn = mlp.act_fn
        self.original_class = type(mlp).__name__
        self.train(mlp.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_forward(self, x)

    def extra_repr(self) -> str:
        return f"tiles {self.original_class}"


def tile_mlps(model: torch.nn.Module) -> int:
    """Replace every gated MLP of `model` by a `TiledMLP` (in the model's own module tree, parameter
    names unchanged); returns how many."""
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if is_gated_mlp(child) and not isinstance(child, TiledMLP)
    ]
    for parent, name, child in found:
        setattr(parent, name, TiledMLP(child))
    return len(found)
