"""Optimizers: torch AdamW (default; torch's fused kernel on CPU and CUDA, no compiled op), DeepSpeed
CPUAdam, DeepSpeed FusedAdam (GPUs).

Every optimizer gets two parameter groups: weight decay for matrices, none for biases,
norm weights and every other 1-D parameter. Only trainable parameters (`requires_grad`)
enter the optimizer, so frozen ones never change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from arctic_core.config import OptimizerConfig
from arctic_core.errors import RecipeError

NO_DECAY_NAMES = ("bias", "norm.weight", "layernorm.weight", "layer_norm.weight", "ln_f.weight")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights and 1-D parameters get no weight decay."""
    shape = getattr(param, "ds_shape", None) or param.shape  # ZeRO-3 keeps the real shape in ds_shape
    return len(shape) <= 1 or name.endswith(NO_DECAY_NAMES)


def parameter_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in named:
        if param.requires_grad:
            (no_decay if is_no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, config: OptimizerConfig, *, cuda: bool) -> torch.optim.Optimizer:
    groups = parameter_groups(model.named_parameters(), config.weight_decay)
    lr, betas, eps = config.lr, (config.betas[0], config.betas[1]), config.eps
    if config.type == "adamw":
        params = [p for group in groups for p in group["params"]]
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        # torch's fused kernel: one pass per parameter instead of a dozen elementwise ops (CPU and CUDA)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    if config.type == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    if not cuda:
        raise RecipeError("fused_adam needs a CUDA GPU; use adamw or cpu_adam on CPU", path="optimizer.type")
    from deepspeed.ops.adam import FusedAdam

    return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True)
