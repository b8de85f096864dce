"""The chunked speculator loss against per-head cross-entropy written out with full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arctic_speculator.loss import head_targets, head_tokens, speculator_loss, trainable_positions
from arctic_speculator.modeling import MLPSpeculator


def plain_loss(spec: MLPSpeculator, hidden: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor):
    """Independently: position t < L-2, head i, target labels[t+2+i] (none past the row); sum over (t, i) / N
    (head-0 count). The row is right-padded by n columns (labels -100), so every head's target exists."""
    n, length = spec.n_predict, ids.shape[1]
    steps = length - 2
    ids = F.pad(ids, (0, n), value=1)
    labels = F.pad(labels, (0, n), value=-100)
    logits = spec(hidden[:, :steps], ids[:, 1:])  # [n, B, T, V]
    total, per_head = 0.0, []
    for i in range(n):
        targets = labels[:, 2 + i : 2 + i + steps]
        ce = F.cross_entropy(
            logits[i].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total = total + ce
        valid = targets != -100
        per_head.append((logits[i].argmax(-1)[valid] == targets[valid]).float().mean())
    return total / (labels[:, 2 : 2 + steps] != -100).sum(), per_head


@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_loss_and_gradients_match_per_head_cross_entropy(chunk_size):
    torch.manual_seed(0)
    spec = MLPSpeculator(16, 40, n_predict=3, inner_dim=12, scale_input=True)
    hidden = torch.randn(2, 11, 16)
    ids = torch.randint(0, 40, (2, 11))
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[1, 8:] = -100  # padding
    expected, accuracy = plain_loss(spec, hidden, ids, labels)
    grads = torch.autograd.grad(expected, list(spec.parameters()))
    states = spec(hidden[:, :9], head_tokens(ids, 3), return_states=True)
    loss, metrics = speculator_loss(states, list(spec.head), labels, chunk_size=chunk_size)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    for got, want in zip(torch.autograd.grad(loss, list(spec.parameters())), grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    for i in range(3):
        assert metrics[f"head{i}_accuracy"] == pytest.approx(float(accuracy[i]))
    assert trainable_positions(labels) == int((labels[:, 2:] != -100).sum())


def test_a_micro_batch_without_targets_gives_zero_with_a_graph():
    spec = MLPSpeculator(8, 20, n_predict=2)
    ids = torch.randint(0, 20, (1, 6))
    states = spec(torch.randn(1, 4, 8), head_tokens(ids, 2), return_states=True)
    loss, _ = speculator_loss(states, list(spec.head), torch.full_like(ids, -100))
    assert loss.item() == 0.0
    loss.backward()


def test_targets_stop_at_the_row_end_and_at_a_packed_sample_boundary():
    labels = torch.tensor([[-100, 5, 6, 7, -100, 9, 10, 11]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])  # two packed samples of 4 tokens
    assert head_targets(labels, 0).tolist() == [[6, 7, -100, 9, 10, 11]]  # every t < L - 2
    assert head_targets(labels, 2).tolist() == [[-100, 9, 10, 11, -100, -100]]  # none past the row
    assert head_targets(labels, 0, positions).tolist() == [[6, 7, -100, -100, 10, 11]]
    assert head_targets(labels, 2, positions).tolist() == [[-100] * 6]  # each target in the next sample
    assert trainable_positions(labels) == 5 and trainable_positions(labels, positions) == 4
