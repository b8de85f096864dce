"""The DPO/cDPO/IPO losses against their formulas (sequence log-probs: packages/core/tests/test_losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from arctic_sft.dpo_loss import preference_losses

# Fixed sequence log-probs of three pairs: policy chosen/rejected, reference chosen/rejected.
PC = torch.tensor([-10.0, -4.0, -7.5])
PR = torch.tensor([-12.0, -3.0, -7.5])
RC = torch.tensor([-11.0, -5.0, -6.0])
RR = torch.tensor([-11.5, -2.0, -8.0])


def _h(i: int) -> float:
    return float((PC[i] - PR[i]) - (RC[i] - RR[i]))


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_loss_matches_the_dpo_formula():
    beta = 0.1
    losses, chosen, rejected = preference_losses(PC, PR, RC, RR, beta=beta)
    expected = [-_logsig(beta * _h(i)) for i in range(3)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx((beta * (PC - RC)).tolist())
    assert rejected.tolist() == pytest.approx((beta * (PR - RR)).tolist())


def test_label_smoothed_loss_matches_the_cdpo_formula():
    beta, eps = 0.5, 0.2
    losses, _, _ = preference_losses(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    expected = [-(1 - eps) * _logsig(beta * _h(i)) - eps * _logsig(-beta * _h(i)) for i in range(3)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    plain, _, _ = preference_losses(PC, PR, RC, RR, beta=beta)
    assert not torch.allclose(losses, plain)


def test_ipo_loss_matches_its_formula():
    beta = 0.25
    losses, _, _ = preference_losses(PC, PR, RC, RR, beta=beta, loss_type="ipo")
    expected = [(_h(i) - 1 / (2 * beta)) ** 2 for i in range(3)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_equal_policy_and_reference_give_ln2_and_zero_rewards():
    losses, chosen, rejected = preference_losses(PC, PR, PC, PR, beta=0.1, label_smoothing=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 3)
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="loss_type"):
        preference_losses(PC, PR, RC, RR, beta=0.1, loss_type="hinge")


def test_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    losses, _, _ = preference_losses(pc, pr, RC, RR, beta=0.1)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
