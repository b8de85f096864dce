"""PyTorch reference of the tiled cross-entropy kernel: per-row loss and its gradient wrt the logits."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def cross_entropy_value_and_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `[N, V]`, targets `[N]` -> (loss per row `[N]` fp32, d sum(loss) / d logits `[N, V]` fp32).

    loss_i = logsumexp(z_i) - z_i[y_i]; grad_i = softmax(z_i) - onehot(y_i); rows with y = -100 give 0.
    """
    z = logits.float()
    keep = targets != IGNORE_INDEX
    safe = torch.where(keep, targets, 0)
    lse = torch.logsumexp(z, dim=-1)
    loss = (lse - z.gather(1, safe[:, None])[:, 0]) * keep
    grad = torch.softmax(z, dim=-1)
    grad[torch.arange(z.shape[0], device=z.device), safe] -= 1.0
    return loss, grad * keep[:, None]
