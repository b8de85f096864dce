"""PyTorch reference of the fused KL kernel: the same value and gradient, written as formulas."""

from __future__ import annotations

import torch


def kl_value_and_grad(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row T^2 KL(softmax(z_t/T) || softmax(z_s/T)) `[N]`, and T (q - p) `[N, V]` (fp32)."""
    log_q = torch.log_softmax(student.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher.float() / temperature, dim=-1)
    p = log_p.exp()
    rows = (p * (log_p - log_q)).sum(dim=-1) * temperature**2
    return rows, (log_q.exp() - p) * temperature
