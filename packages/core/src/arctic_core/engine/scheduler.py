"""Learning-rate schedules over optimizer steps: linear, cosine, constant, constant_with_warmup, wsd.

Step s (1-based) of an n-step run uses `lr x factor(s)`:

- warmup, steps 1..W: factor = s / W, so the peak is reached exactly at step W;
- linear / cosine, after the peak step P = max(W, 1): from the peak towards `min_lr_ratio`,
  which it would reach at step n+1 (so the last step still learns); without warmup step 1
  runs at the peak;
- constant: the peak from the first step, with no warmup (as transformers' `constant`, which
  ArcticTraining recipes name);
- constant_with_warmup: the peak after warmup;
- wsd: the peak until the last D decay steps, which fall linearly towards `min_lr_ratio`.

W is `num_warmup_steps`, else `ceil(warmup_ratio x n)`; D is `num_decay_steps`, else
`ceil(decay_ratio x n)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from arctic_core.config import SchedulerConfig


def warmup_steps(config: SchedulerConfig, total: int) -> int:
    if config.num_warmup_steps is not None:
        return min(config.num_warmup_steps, total)
    return min(math.ceil(config.warmup_ratio * total), total)


def decay_steps(config: SchedulerConfig, total: int) -> int:
    if config.num_decay_steps is not None:
        return min(config.num_decay_steps, total)
    return min(math.ceil(config.decay_ratio * total), total)


def lr_factor(config: SchedulerConfig, total: int) -> Callable[[int], float]:
    """factor(s) for 1-based optimizer step s."""
    warmup, floor = warmup_steps(config, total), config.min_lr_ratio
    decay = decay_steps(config, total)

    def factor(step: int) -> float:
        if config.name == "constant":
            return 1.0
        if step <= warmup:
            return step / warmup
        if config.name == "constant_with_warmup":
            return 1.0
        if config.name == "wsd":
            start = max(total - decay, warmup)
            if step <= start:
                return 1.0
            progress = (step - start) / (total - start + 1)
            return floor + (1.0 - floor) * (1.0 - progress)
        peak = max(warmup, 1)
        progress = (step - peak) / (total - peak + 1)
        if config.name == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step (LambdaLR counts from 0, the schedule from 1)."""
    factor = lr_factor(config, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: factor(done + 1))
