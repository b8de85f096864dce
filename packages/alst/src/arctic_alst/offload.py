"""Activation-checkpoint offload: each checkpointed decoder layer keeps its input in CPU memory.

With activation checkpointing, what a layer keeps between forward and backward is its input
hidden state ([B, L, H] per layer): at long sequences the sum over layers dominates device
memory. Here the layer's checkpoint function is replaced (per instance, through transformers'
`GradientCheckpointingLayer._gradient_checkpointing_func`) by `offloaded_checkpoint`:

- forward: copy the input to CPU (pinned when on CUDA), run the layer without saving activations;
- backward: copy it back, recompute the layer with gradients (same RNG state), backpropagate.

Parameter gradients accumulate as with reentrant checkpointing. Only the layer input (the first
positional argument) may require a gradient; the other arguments (position embeddings, masks)
are kept as they are.
"""

from __future__ import annotations

from typing import Any

import torch


def _to_cpu(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":
        return x.detach()
    held = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
    held.copy_(x.detach(), non_blocking=True)
    return held


class _OffloadedCheckpoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: Any, x: torch.Tensor, *rest: Any) -> Any:
        ctx.run, ctx.rest, ctx.device = run, rest, x.device
        ctx.cpu_state = torch.get_rng_state()
        ctx.cuda_state = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
        ctx.held = _to_cpu(x)
        ctx.wants_grad = x.requires_grad
        with torch.no_grad():
            out = run(x, *rest)
        ctx.is_tuple = isinstance(out, tuple)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        x = ctx.held.to(ctx.device, non_blocking=True).requires_grad_(ctx.wants_grad)
        devices = [ctx.device] if ctx.cuda_state is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(ctx.cpu_state)
            if ctx.cuda_state is not None:
                torch.cuda.set_rng_state(ctx.cuda_state, ctx.device)
            with torch.enable_grad():
                out = ctx.run(x, *ctx.rest)
        outputs = out if ctx.is_tuple else (out,)
        pairs = [
            (o, g)
            for o, g in zip(outputs, grads)
            if isinstance(o, torch.Tensor) and o.requires_grad and g is not None
        ]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        ctx.held = None
        return (None, x.grad if ctx.wants_grad else None, *([None] * len(ctx.rest)))


def offloaded_checkpoint(run: Any, x: torch.Tensor, *rest: Any, **_: Any) -> Any:
    """A drop-in `_gradient_checkpointing_func`: `run(x, *rest)` with `x` kept on the CPU until backward."""
    return _OffloadedCheckpoint.apply(run, x, *rest)


def offload_checkpoints(model: torch.nn.Module) -> int:
    """Use `offloaded_checkpoint` in every checkpointing layer of `model`; returns how many layers."""
    count = 0
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(
            module, "_gradient_checkpointing_func"
        ):
            module._gradient_checkpointing_func = offloaded_checkpoint  # type: ignore[assignment]
            count += 1
    return count
