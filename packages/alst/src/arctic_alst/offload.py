"""Activation-checkpoint offload: each checkpointed decoder layer keeps its input in CPU memory.

With activation checkpointing, what a layer keeps between forward and backward is its input
hidden state ([B, L, H] per layer): at long sequences the sum over layers dominates device
memory. Checkpointing (torch's `checkpoint`, reentrant or not) keeps those inputs as *saved
tensors* of the autograd graph, saved at the layer's boundary, while everything inside the
layer is dropped and recomputed. `offload_checkpoints(model)` hooks every checkpointing layer of
the model (public module hooks, nothing else changed) so that while the layer is entered, torch's
public `saved_tensors_hooks` move what is saved to CPU:

- forward: the layer input (every saved tensor that requires a gradient) is copied to CPU
  memory (pinned, asynchronous on CUDA); tensors that need no gradient (position embeddings,
  masks) are kept by reference, as the checkpoint keeps them anyway;
- backward: the checkpoint unpacks its input, which is copied back to the device, recomputes
  the layer (RNG replayed by torch) and backpropagates.

This relies on transformers' `GradientCheckpointingLayer` running the checkpoint inside the
module call, with module hooks outside it (so the hooks wrap the checkpoint, not what it
recomputes): `arctic_core/compat/transformers_internals.py` checks it. On a CPU-only machine the
copy is a no-op (the input already lives in CPU memory).
"""

from __future__ import annotations

from typing import Any

import torch


def _pack(x: torch.Tensor) -> Any:
    if x.device.type == "cpu" or not x.requires_grad:
        return x
    held = torch.empty(x.shape, dtype=x.dtype, layout=x.layout, device="cpu", pin_memory=x.is_cuda)
    held.copy_(x, non_blocking=x.is_cuda)
    return (x.device, held)


def _unpack(packed: Any) -> torch.Tensor:
    if isinstance(packed, torch.Tensor):
        return packed
    device, held = packed
    return held.to(device, non_blocking=True)


class OffloadInputs:
    """Forward pre-hook and forward hook of one checkpointing layer: CPU saved-tensor hooks while it runs."""

    def __init__(self) -> None:
        self.active: list[Any] = []

    def enter(self, module: torch.nn.Module, args: Any) -> None:
        context = None
        if getattr(module, "gradient_checkpointing", False) and module.training and torch.is_grad_enabled():
            context = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)
            context.__enter__()
        self.active.append(context)

    def leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        context = self.active.pop() if self.active else None
        if context is not None:
            context.__exit__(None, None, None)


def offload_checkpoints(model: torch.nn.Module) -> list[Any]:
    """Offload the saved inputs of every checkpointing decoder layer (transformers'
    `GradientCheckpointingLayer`) of `model`; returns the hook handles (two per layer: removing
    them undoes it), none when no layer checkpoints."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    handles = []
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            hooks = OffloadInputs()
            handles.append(module.register_forward_pre_hook(hooks.enter))
            handles.append(module.register_forward_hook(hooks.leave, always_call=True))
    return handles
