"""GRPO's objective against its formulas written out here, values and gradients (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from arctic_rl.loss import aggregate, completion_log_probs, group_advantages, token_losses

N, C, L_MAX = 4, 5, 7


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(N, C, generator=g) * 3).requires_grad_()
    old = logp.detach() + 0.4 * torch.randn(N, C, generator=g)  # ratios well inside and outside the clip
    ref = logp.detach() + 0.3 * torch.randn(N, C, generator=g)
    adv = torch.tensor([1.5, -0.7, 0.2, -1.1])
    mask = torch.ones(N, C)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return logp, old, ref, adv, mask


def written_out(logp, old, ref, adv, mask, loss_type, eps=0.2, eps_high=0.28, beta=0.05):
    """ℓ and the three aggregations, element by element in Python floats' order of ideas."""
    rows = []
    for i in range(N):
        row = []
        for t in range(C):
            ratio = torch.exp(logp[i, t] - old[i, t])
            clipped = torch.clamp(ratio, 1 - eps, 1 + eps_high)
            surrogate = torch.minimum(ratio * adv[i], clipped * adv[i])
            kl = torch.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
            row.append(-surrogate + beta * kl)
        rows.append(row)
    if loss_type == "grpo":  # 1/N Σ_i 1/|o_i| Σ_t ℓ
        return sum(sum(rows[i][t] * mask[i, t] for t in range(C)) / mask[i].sum() for i in range(N)) / N
    total = sum(rows[i][t] * mask[i, t] for i in range(N) for t in range(C))
    if loss_type == "dr_grpo":  # Σ ℓ / (N · L_max)
        return total / (N * L_MAX)
    return total / mask.sum()  # dapo: Σ ℓ / Σ |o_i|


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_each_loss_type_is_its_formula_values_and_gradients(loss_type):
    logp, old, ref, adv, mask = inputs()
    losses, kl, clipped = token_losses(logp, old, ref, adv, epsilon=0.2, epsilon_high=0.28, beta=0.05)
    got = aggregate(losses, mask, loss_type, L_MAX)
    (grad,) = torch.autograd.grad(got, logp)
    logp2 = logp.detach().clone().requires_grad_()
    want = written_out(logp2, old, ref, adv, mask, loss_type)
    (want_grad,) = torch.autograd.grad(want, logp2)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-7)
    assert (kl >= 0).all() and clipped.any() and not clipped.all()  # the clip is exercised both ways


def test_one_iteration_gradient_is_the_plain_policy_gradient():
    """old = π detached (ratio 1, never clipped): ∇L = −1/N Σ_i A_i/|o_i| Σ_t ∇logπ (grpo, β = 0)."""
    logp, _, _, adv, mask = inputs(1)
    losses, _, clipped = token_losses(logp, logp.detach(), None, adv, epsilon=0.2, epsilon_high=0.2, beta=0.0)
    (grad,) = torch.autograd.grad(aggregate(losses, mask, "grpo", L_MAX), logp)
    want = -(adv.unsqueeze(1) * mask / mask.sum(1, keepdim=True)) / N
    torch.testing.assert_close(grad, want)
    assert not clipped.any()


def test_advantages_group_batch_and_none():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    centred = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]], dtype=torch.float64)
    group_std = math.sqrt(1 / 3)  # sample std of (1, 0, 0, 1)
    torch.testing.assert_close(group_advantages(rewards, "none"), centred)
    torch.testing.assert_close(group_advantages(rewards, "group")[0], centred[0] / (group_std + 1e-4))
    assert group_advantages(rewards, "group")[1].abs().max() == 0  # a zero-variance group teaches nothing
    torch.testing.assert_close(group_advantages(rewards, "batch", 0.8), centred / (0.8 + 1e-4))


def test_completion_log_probs_read_the_completion_positions_at_the_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    ids = torch.randint(0, 11, (2, 6), generator=g)
    logp, entropy = completion_log_probs(logits, ids, prompt_width=3, temperature=0.5)
    for i in range(2):
        for t in range(3):
            dist = torch.log_softmax(logits[i, 2 + t] / 0.5, dim=-1)
            assert logp[i, t].item() == pytest.approx(dist[ids[i, 3 + t]].item(), rel=1e-6)
            assert entropy[i, t].item() == pytest.approx(-(dist.exp() * dist).sum().item(), rel=1e-5)
