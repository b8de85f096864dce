"""The distillation loss against the plain full-logits formula, and its memory bound."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from arctic_swiftkv.loss import distillation_loss, trainable_positions

VOCAB, HIDDEN = 97, 16


def states(seed: int, batch: int = 3, length: int = 11, layers: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, HIDDEN, generator=g) for _ in range(layers))


def plain_loss(head, student, teacher, labels, temperature, mult, layer):
    """Full logits, written out: T^2 KL over positions t with labels[t+1] != -100, plus the MSE there."""
    keep = labels[:, 1:] != -100
    zs, zt = head(student[-1][:, :-1]), head(teacher[-1][:, :-1])
    p = torch.softmax(zt / temperature, -1)
    kl = (p * (torch.log_softmax(zt / temperature, -1) - torch.log_softmax(zs / temperature, -1))).sum(-1)
    n = keep.sum()
    kl = (kl * keep).sum() / n * temperature**2
    mse = (((student[layer] - teacher[layer])[:, :-1] ** 2).mean(-1) * keep).sum() / n
    return kl + mult * mse


@pytest.mark.parametrize(("temperature", "mult", "layer", "chunk"), [(2.0, 1.0, -2, 5), (1.0, 0.5, 1, 64)])
def test_matches_the_plain_formula_in_value_and_gradient(temperature, mult, layer, chunk):
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    torch.nn.init.normal_(head.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    teacher = states(2)
    labels = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(3))
    labels[:, :4] = -100
    labels[1, 6:] = -100
    results = []
    for fn in ("ours", "plain"):
        student = tuple(s.clone().requires_grad_(True) for s in states(4))
        if fn == "ours":
            out = distillation_loss(
                head,
                student,
                teacher,
                labels,
                temperature=temperature,
                hidden_loss_mult=mult,
                hidden_loss_layer=layer,
                chunk_size=chunk,
            )
            loss = out.loss
        else:
            loss = plain_loss(head, student, teacher, labels, temperature, mult, layer)
        grads = torch.autograd.grad(loss, [student[-1], student[layer]])
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_positions_follow_the_shifted_labels():
    labels = torch.tensor([[-100, -100, 5, 6, -100]])
    assert trainable_positions(labels).tolist() == [[False, True, True, False, False]]


class LiveLogits(TorchDispatchMode):
    """Elements of vocabulary-wide tensors (last dim = vocab) alive at once, and their peak."""

    def __init__(self, vocab: int, skip: tuple[int, ...]):
        super().__init__()
        self.vocab, self.skip, self.live, self.peak = vocab, skip, 0, 0

    def _freed(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if (
                isinstance(t, torch.Tensor)
                and t.dim()
                and t.shape[-1] == self.vocab
                and tuple(t.shape) != self.skip
            ):
                self.live += t.numel()
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._freed, t.numel())
        return out


def test_full_logits_of_neither_model_ever_exist():
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    teacher = states(5, batch=4, length=60)
    student = tuple(s.requires_grad_(True) for s in states(6, batch=4, length=60))
    labels = torch.randint(0, VOCAB, (4, 60), generator=torch.Generator().manual_seed(7))
    chunk, rows = 8, 4 * 59
    with LiveLogits(VOCAB, skip=(VOCAB, HIDDEN)) as seen:
        out = distillation_loss(
            head,
            student,
            teacher,
            labels,
            temperature=2.0,
            hidden_loss_mult=1.0,
            hidden_loss_layer=-2,
            chunk_size=chunk,
        )
        between = seen.live
        out.loss.backward()
    assert between == 0
    assert seen.peak <= 12 * chunk * VOCAB < 2 * rows * VOCAB
