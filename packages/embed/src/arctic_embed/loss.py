"""InfoNCE over the global batch, with relevance labels, Matryoshka truncation and a memory bound.

Relevance of (query i, document j): +1 positive, -1 known negative, 0 unknown. A query with k
positives gives k rows (ArcticTraining's expansion), each with one target column; the row's
candidates are its target and its known negatives, plus every unknown document when in-batch
negatives are on. The query's other positives are never candidates. With s = q·d over
L2-normalised embeddings and temperature τ:

    loss = mean over rows r of [ logsumexp_{j in C(r)} s_rj / τ  -  s_r,t(r) / τ ]
    ∂loss/∂s_rj = (softmax_{C(r)}(s_r / τ)_j - [j = t(r)]) / (τ · rows)

Each rank scores its own queries against the documents of every rank (gathered with
`arctic_core.gather.all_gather_with_grad`, whose backward sums each slice's gradient back to the
rank that embedded it); the loop weights each rank's mean by its rows, so the sum over ranks is
the one-rank loss of the global batch, at every ZeRO stage.

`info_nce` computes this `chunk_size` rows at a time in a custom autograd function that keeps
only the embeddings and one logsumexp per row between forward and backward, and recomputes each
chunk's scores in the backward pass (the analytic gradient above): the `[rows, documents]`
score matrix never exists whole. Each chunk is one block of kernel `embed.infonce` (`arctic_embed.kernels`:
PyTorch, or a Triton kernel that also never holds a whole row of scores; the `kernels` key picks). `info_nce_reference` is the plain dense autograd formula, the
independent reference the tests compare it with. Matryoshka (`mrl_loss`): (1 - w) L(full) +
w L(first mrl_dim coordinates, re-normalised).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from arctic_core.kernels import select
from arctic_embed.kernels import INFONCE


@dataclass
class Targets:
    """The rows of one micro-batch's loss and the relevance labels of its queries (all on one device).

    `row_query` (sorted) and `row_target` give each row's local query and target column;
    `rel_query`, `rel_column`, `rel_value` are the labelled pairs with their column in the
    gathered documents.
    """

    row_query: torch.Tensor
    row_target: torch.Tensor
    rel_query: torch.Tensor
    rel_column: torch.Tensor
    rel_value: torch.Tensor
    num_columns: int
    in_batch_negatives: bool

    @property
    def rows(self) -> int:
        return int(self.row_query.shape[0])

    def allowed(self, start: int, end: int) -> torch.Tensor:
        """Boolean `[end - start, num_columns]`: the candidate columns of rows start..end."""
        queries = self.row_query[start:end]
        first, last = int(queries.min()), int(queries.max())
        chosen = (self.rel_query >= first) & (self.rel_query <= last)
        dense = torch.zeros(last - first + 1, self.num_columns, dtype=torch.int8, device=queries.device)
        dense[self.rel_query[chosen] - first, self.rel_column[chosen]] = self.rel_value[chosen].to(torch.int8)
        labels = dense[queries - first]
        allowed = labels != 1 if self.in_batch_negatives else labels == -1
        allowed[torch.arange(end - start, device=queries.device), self.row_target[start:end]] = True
        return allowed


def build_targets(
    rel_query: torch.Tensor,
    rel_column: torch.Tensor,
    rel_value: torch.Tensor,
    *,
    num_columns: int,
    in_batch_negatives: bool,
) -> Targets:
    """One row per positive pair, ordered by query then column."""
    order = torch.argsort(rel_query * (num_columns + 1) + rel_column, stable=True)
    rel_query, rel_column, rel_value = rel_query[order], rel_column[order], rel_value[order]
    positive = rel_value == 1
    return Targets(
        row_query=rel_query[positive],
        row_target=rel_column[positive],
        rel_query=rel_query,
        rel_column=rel_column,
        rel_value=rel_value,
        num_columns=num_columns,
        in_batch_negatives=in_batch_negatives,
    )


def _chunk_scores(
    q: torch.Tensor, d: torch.Tensor, targets: Targets, start: int, end: int, temperature: float
) -> torch.Tensor:
    """Scaled scores of rows start..end, -inf outside their candidates."""
    scores = (q[targets.row_query[start:end]] @ d.T) / temperature
    return scores.masked_fill(~targets.allowed(start, end), float("-inf"))


class _ChunkedInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        d: torch.Tensor,
        targets: Targets,
        temperature: float,
        chunk: int,
        kernel: tuple[Any, Any],
    ) -> torch.Tensor:
        block_forward = kernel[0]
        rows = targets.rows
        lse = torch.empty(rows, dtype=q.dtype, device=q.device)
        total = torch.zeros((), dtype=torch.float64, device=q.device)
        for start in range(0, rows, chunk):
            end = min(start + chunk, rows)
            q_rows = q[targets.row_query[start:end]]
            allowed, target = targets.allowed(start, end), targets.row_target[start:end]
            lse[start:end], picked = block_forward(q_rows, d, allowed, target, temperature)
            total += (lse[start:end] - picked).double().sum()
        ctx.save_for_backward(q, d, lse)
        ctx.targets, ctx.temperature, ctx.chunk, ctx.kernel = targets, temperature, chunk, kernel
        return (total / rows).to(q.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        q, d, lse = ctx.saved_tensors
        targets, temperature = ctx.targets, ctx.temperature
        block_backward = ctx.kernel[1]
        dq, dd = torch.zeros_like(q), torch.zeros_like(d)
        scale = grad / (temperature * targets.rows)
        for start in range(0, targets.rows, ctx.chunk):
            end = min(start + ctx.chunk, targets.rows)
            query_rows = targets.row_query[start:end]
            allowed, target = targets.allowed(start, end), targets.row_target[start:end]
            dq_rows, dd_block = block_backward(
                q[query_rows], d, allowed, target, lse[start:end], temperature, scale
            )
            dq.index_add_(0, query_rows, dq_rows)
            dd += dd_block
        return dq, dd, None, None, None, None


def info_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    targets: Targets,
    temperature: float,
    *,
    chunk_size: int = 1024,
    kernels: str = "auto",
) -> torch.Tensor:
    """Mean InfoNCE over the rows of `targets` (q, d already normalised), `chunk_size` rows at a time.

    `kernels` (the recipe's switch: auto, torch, triton) picks the block that computes each chunk.
    """
    kernel = select(INFONCE, kernels, q.device)
    if targets.rows == 0:
        return (q.sum() + d.sum()) * 0.0  # connected, so every rank still runs the same backward
    result: torch.Tensor = _ChunkedInfoNCE.apply(q, d, targets, temperature, chunk_size, kernel)
    return result


def info_nce_reference(
    q: torch.Tensor, d: torch.Tensor, targets: Targets, temperature: float
) -> torch.Tensor:
    """The dense formula with autograd: the reference `info_nce` is tested against."""
    scores = (q[targets.row_query] @ d.T) / temperature
    scores = scores.masked_fill(~targets.allowed(0, targets.rows), float("-inf"))
    return F.cross_entropy(scores, targets.row_target)


def row_accuracy(
    q: torch.Tensor, d: torch.Tensor, targets: Targets, *, chunk_size: int = 1024
) -> torch.Tensor:
    """Fraction of rows whose target scores highest among their candidates."""
    if targets.rows == 0:
        return torch.zeros((), device=q.device)
    hits = 0
    with torch.no_grad():
        for start in range(0, targets.rows, chunk_size):
            end = min(start + chunk_size, targets.rows)
            scores = _chunk_scores(q, d, targets, start, end, 1.0)
            hits += int((scores.argmax(dim=-1) == targets.row_target[start:end]).sum())
    return torch.tensor(hits / targets.rows, device=q.device)


LossFn = Callable[[torch.Tensor, torch.Tensor, Targets, float], torch.Tensor]


def mrl_loss(
    q_raw: torch.Tensor,
    d_raw: torch.Tensor,
    targets: Targets,
    temperature: float,
    *,
    mrl_dim: int | None = None,
    mrl_weight: float = 0.5,
    loss_fn: LossFn | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InfoNCE of the normalised pooled embeddings, plus the Matryoshka term when `mrl_dim` is set.

    Returns the loss and metrics (`loss_full`, `loss_mrl`, `accuracy`).
    """
    loss_fn = loss_fn or info_nce
    q, d = F.normalize(q_raw.float(), dim=-1), F.normalize(d_raw.float(), dim=-1)
    full = loss_fn(q, d, targets, temperature)
    metrics = {"loss_full": full.detach(), "accuracy": row_accuracy(q.detach(), d.detach(), targets)}
    if mrl_dim is None or mrl_dim >= q_raw.shape[1]:
        return full, metrics
    qt = F.normalize(q_raw[:, :mrl_dim].float(), dim=-1)
    dt = F.normalize(d_raw[:, :mrl_dim].float(), dim=-1)
    truncated = loss_fn(qt, dt, targets, temperature)
    metrics["loss_mrl"] = truncated.detach()
    return (1.0 - mrl_weight) * full + mrl_weight * truncated, metrics
