"""SwiftKV's distillation loss from the teacher's and the student's hidden states.

Over the micro-batch's trainable positions P (position t is trainable when its next-token label
`labels[t+1]` is not -100: the positions SFT trains, so N = `num_trainable_tokens`):

    kl  = (1/N) sum_{t in P} T^2 KL(softmax(z_teacher,t / T) || softmax(z_student,t / T))
    mse = (1/N) sum_{t in P} mean_d (h_student,t[d] - h_teacher,t[d])^2      (at `hidden_loss_layer`)
    loss = kl + hidden_loss_mult * mse

z = lm_head(final hidden state); the KL runs the head over chunks of rows (`arctic_core.losses`), so
full-vocabulary logits of neither model ever exist; each chunk's KL and its gradient come from one
fused kernel (`arctic_swiftkv.kernels`; the recipe's `kernels` key picks its PyTorch reference or Triton). **The mean** is over trainable positions, not
(as ArcticTraining) over every position of the padded batch: so a micro-batch's loss does not shrink
with its padding or its prompt length, and core's weighting by trainable tokens makes the step loss
the exact mean over all trainable positions of the global batch, whatever the micro-batch split or
rank count. A batch without trainable positions gives 0, still connected to the graph.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from arctic_core.losses import distillation_kl
from arctic_core.trainer import LossOutput
from arctic_swiftkv.kernels import fused_kl


def trainable_positions(labels: torch.Tensor) -> torch.Tensor:
    """`[B, L]` bool: positions whose next-token label is trained (the last position never is)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def distillation_loss(
    head: torch.nn.Module,
    student_states: tuple[torch.Tensor, ...],
    teacher_states: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    *,
    temperature: float,
    hidden_loss_mult: float,
    hidden_loss_layer: int,
    chunk_size: int,
    config: Any = None,
    kernels: str = "auto",
) -> LossOutput:
    """`kl + hidden_loss_mult * mse` (see the module docstring), with both terms as metrics."""
    mask = trainable_positions(labels)
    rows = int(mask.sum())
    kl = distillation_kl(
        head,
        student_states[-1][mask],
        head,
        teacher_states[-1][mask].detach(),
        temperature=temperature,
        chunk_size=chunk_size,
        config=config,
        chunk_kl=functools.partial(fused_kl, kernels=kernels),
    )
    diff = student_states[hidden_loss_layer][mask] - teacher_states[hidden_loss_layer][mask].detach()
    mse = diff.float().pow(2).mean(dim=-1).sum() / max(rows, 1)
    loss = kl + hidden_loss_mult * mse
    return LossOutput(loss, metrics={"kl": kl.detach(), "hidden_mse": mse.detach()})
