"""The chunked InfoNCE against the dense autograd formula and an explicit per-row loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arctic_embed.loss import build_targets, info_nce, info_nce_reference, mrl_loss


def _relations(queries: int, documents: int, seed: int):
    """Random labels: every query 1-3 positives, 0-3 known negatives, the rest unknown."""
    g = torch.Generator().manual_seed(seed)
    rq, rc, rv = [], [], []
    for i in range(queries):
        cols = torch.randperm(documents, generator=g)[:6].tolist()
        positives = 1 + int(torch.randint(3, (1,), generator=g))
        negatives = int(torch.randint(4, (1,), generator=g))
        for j, col in enumerate(cols[: positives + negatives]):
            rq.append(i)
            rc.append(col)
            rv.append(1 if j < positives else -1)
    return torch.tensor(rq), torch.tensor(rc), torch.tensor(rv, dtype=torch.int8)


def _embeddings(queries: int, documents: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(queries, dim, generator=g), dim=-1).requires_grad_()
    d = F.normalize(torch.randn(documents, dim, generator=g), dim=-1).requires_grad_()
    return q, d


def _loop_loss(q, d, rq, rc, rv, temperature, in_batch):
    """The definition, one row per (query, positive), written out with Python loops."""
    labels = {}
    for a, b, v in zip(rq.tolist(), rc.tolist(), rv.tolist()):
        labels[(a, b)] = v
    losses = []
    for i in range(q.shape[0]):
        for t in [c for c in range(d.shape[0]) if labels.get((i, c)) == 1]:
            candidates = [
                c
                for c in range(d.shape[0])
                if c == t or labels.get((i, c)) == -1 or (in_batch and (i, c) not in labels)
            ]
            scores = torch.stack([q[i] @ d[c] for c in candidates]) / temperature
            losses.append(torch.logsumexp(scores, 0) - (q[i] @ d[t]) / temperature)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_info_nce_equals_the_dense_formula_and_the_definition(in_batch, chunk):
    q, d = _embeddings(9, 23, 16, seed=1)
    rq, rc, rv = _relations(9, 23, seed=2)
    targets = build_targets(rq, rc, rv, num_columns=23, in_batch_negatives=in_batch)
    assert targets.rows > 9  # several positives were expanded
    chunked = info_nce(q, d, targets, 0.05, chunk_size=chunk)
    gq, gd = torch.autograd.grad(chunked, (q, d))
    dense = info_nce_reference(q, d, targets, 0.05)
    rq_, rd_ = torch.autograd.grad(dense, (q, d))
    loop = _loop_loss(q, d, rq, rc, rv, 0.05, in_batch)
    lq, ld = torch.autograd.grad(loop, (q, d))
    assert chunked.item() == pytest.approx(loop.item(), rel=1e-5)
    assert dense.item() == pytest.approx(loop.item(), rel=1e-5)
    for got, ref in ((gq, lq), (gd, ld), (rq_, lq), (rd_, ld)):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_in_batch_negatives_change_the_loss_and_unknown_pairs_are_ignored_without_them():
    q, d = _embeddings(4, 8, 8, seed=3)
    rq, rc, rv = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]), torch.ones(4, dtype=torch.int8)
    off = info_nce(q, d, build_targets(rq, rc, rv, num_columns=8, in_batch_negatives=False), 0.1)
    on = info_nce(q, d, build_targets(rq, rc, rv, num_columns=8, in_batch_negatives=True), 0.1)
    assert off.item() == pytest.approx(0.0, abs=1e-7)  # only the positive is a candidate
    manual = F.cross_entropy((q @ d.T) / 0.1, torch.arange(4))
    assert on.item() == pytest.approx(manual.item(), rel=1e-6)


def test_other_positives_of_a_query_are_never_its_negatives():
    q = F.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    d = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    targets = build_targets(
        torch.tensor([0, 0]),
        torch.tensor([0, 1]),
        torch.tensor([1, 1], dtype=torch.int8),
        num_columns=3,
        in_batch_negatives=True,
    )
    assert targets.rows == 2
    loss = info_nce(q, d, targets, 1.0)
    s = (q @ d.T)[0]
    row0 = torch.logsumexp(torch.stack([s[0], s[2]]), 0) - s[0]
    row1 = torch.logsumexp(torch.stack([s[1], s[2]]), 0) - s[1]
    assert loss.item() == pytest.approx(((row0 + row1) / 2).item(), rel=1e-6)


def test_mrl_loss_mixes_the_full_and_truncated_losses():
    g = torch.Generator().manual_seed(0)
    q_raw, d_raw = torch.randn(5, 12, generator=g), torch.randn(7, 12, generator=g)
    targets = build_targets(
        torch.arange(5),
        torch.arange(5),
        torch.ones(5, dtype=torch.int8),
        num_columns=7,
        in_batch_negatives=True,
    )
    loss, metrics = mrl_loss(q_raw, d_raw, targets, 0.05, mrl_dim=4, mrl_weight=0.3)
    full = info_nce_reference(F.normalize(q_raw, dim=-1), F.normalize(d_raw, dim=-1), targets, 0.05)
    cut = info_nce_reference(
        F.normalize(q_raw[:, :4], dim=-1), F.normalize(d_raw[:, :4], dim=-1), targets, 0.05
    )
    assert loss.item() == pytest.approx((0.7 * full + 0.3 * cut).item(), rel=1e-6)
    assert metrics["loss_mrl"].item() == pytest.approx(cut.item(), rel=1e-6)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_empty_rows_give_a_connected_zero():
    q, d = _embeddings(2, 3, 4, seed=0)
    targets = build_targets(
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.int8),
        num_columns=3,
        in_batch_negatives=True,
    )
    loss = info_nce(q, d, targets, 0.1)
    loss.backward()
    assert loss.item() == 0.0 and q.grad is not None and not math.isnan(float(q.grad.sum()))
