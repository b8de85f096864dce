"""Gathering across ranks: a differentiable all-gather of activations, and ZeRO-3 parameters made whole.

`all_gather_with_grad(x)` returns `[x_0; x_1; ...; x_{R-1}]`, every rank's tensor concatenated
along dim 0 (first dims may differ between ranks). Its backward hands each rank the gradient of
its own slice summed over all ranks: with G_r the gradient of rank r's loss L_r wrt the gathered
tensor, rank s receives (sum_r G_r)[slice s]. So sum_r L_r backpropagates exactly as if one rank
held the whole gathered tensor, and with the per-rank weights w_r of the global mean
(L = sum_r w_r·L_r, e.g. w_r = q_r/Q for q_r local queries out of Q), the sum over ranks of each
rank's parameter gradient is the one-rank gradient of L on the global batch. DeepSpeed averages
gradients over ranks, so a trainer scales each rank's loss by w_r·R (see docs/losses.md).
`all_reduce_sum_with_grad(x, group)` sums partial results over a group (forward and backward: an
all-reduce), e.g. per-sequence log-probs over a sequence-parallel group.

Under ZeRO-3 each rank holds a slice of every parameter. `gathered_parameters` makes some whole
for the length of a block (`deepspeed.zero.GatheredParameters`; changes made on `modifier_rank`
are kept and broadcast, without it they are discarded); `gathered_state_dict` collects a module's
state one parameter at a time on rank 0 (export, PEFT merge); `init_parameters_from` copies
parameters into others (a method initialising new weights from existing ones).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from arctic_core.engine import distributed


def group_rank_and_size(group: Any) -> tuple[int, int]:
    """This process's rank in `group` and the group's size; (0, 1) when torch.distributed is not started."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_padded(tensor: torch.Tensor, group: Any) -> tuple[torch.Tensor, list[int]]:
    """Every rank's `tensor` concatenated along dim 0, and each rank's first-dim size."""
    _, size = group_rank_and_size(group)
    local = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(local) for _ in range(size)]
    dist.all_gather(sizes, local, group=group)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:count] for part, count in zip(parts, counts)]), counts


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        gathered, counts = _gather_padded(tensor.detach(), group)
        rank, _ = group_rank_and_size(group)
        ctx.group = group
        ctx.start = sum(counts[:rank])
        ctx.count = counts[rank]
        return gathered

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)  # gloo has no reduce_scatter
        return total[ctx.start : ctx.start + ctx.count], None


def all_gather_with_grad(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """`[x_0; ...; x_{R-1}]` along dim 0 over the group's ranks; backward: own slice of the summed gradient.

    Every rank of the group must call it (and, when it is differentiated, run backward). First dims may
    differ between ranks; the other dims must match. One rank or no process group: `tensor` itself.
    """
    _, size = group_rank_and_size(group)
    if size == 1:
        return tensor
    result: torch.Tensor = _AllGatherWithGrad.apply(tensor, group)
    return result


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.detach().clone().contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def all_reduce_sum_with_grad(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """`x_0 + ... + x_{R-1}` over the group's ranks, on every rank; backward: the summed gradient.

    For partial sums spread over ranks (a sequence's log-prob when each rank of a sequence-parallel
    group holds a slice of it). Backward hands each rank the sum over all ranks of the gradients wrt
    the result (the adjoint of the all-reduce), so sum_r L_r(sum) backpropagates exactly as on one
    rank. When every rank computes the same loss L from the sum with the same weight w (so the
    loop's weights count the group's S ranks: N includes S·w), the gradients summed over the group
    are S·(w/N)·dL = (w/(N/S))·dL: the one-rank gradient. Without grad (or without a group of more
    than one rank) it is a plain sum (the tensor itself on one rank). Every rank of the group must
    call it, and run backward when it is differentiated.
    """
    _, size = group_rank_and_size(group)
    if size == 1:
        return tensor
    if not (torch.is_grad_enabled() and tensor.requires_grad):
        total = tensor.detach().clone().contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total
    result: torch.Tensor = _AllReduceSumWithGrad.apply(tensor, group)
    return result


def all_gather_detached(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """`[x_0; ...; x_{R-1}]` along dim 0, outside the graph (first dims may differ between ranks)."""
    _, size = group_rank_and_size(group)
    if size == 1:
        return tensor.detach()
    with torch.no_grad():
        return _gather_padded(tensor.detach(), group)[0]


@contextmanager
def gathered_parameters(
    params: Iterable[torch.nn.Parameter], *, enabled: bool, modifier_rank: int | None = None
) -> Iterator[None]:
    """Inside the block, ZeRO-3 `params` are whole on every rank (a no-op when not `enabled`).

    Every rank must enter it. Changes are kept only with `modifier_rank`: that rank's values are
    broadcast to all on exit; with None (read-only) they are discarded.
    """
    if not enabled:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank):
        yield


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def gathered_state_dict(
    module: torch.nn.Module, zero3: bool, keep: Callable[[str], bool] | None = None
) -> dict[str, torch.Tensor]:
    """The state dict entries whose names `keep` accepts (default all), whole, as CPU copies on rank 0.

    Other ranks get an empty dict. Under ZeRO-3 each parameter is gathered on its own (every rank
    takes part), so at most one parameter is whole at a time; tied parameters appear under each name.
    """
    accept = keep or (lambda _: True)
    leader = distributed.rank() == 0
    state: dict[str, torch.Tensor] = {}
    param_names = set()
    for name, param in module.named_parameters(remove_duplicate=False):
        param_names.add(name)
        if not accept(name):
            continue
        with gathered_parameters([param], enabled=zero3):
            if leader:
                state[name] = _cpu_copy(param)
    if leader:
        for name, tensor in module.state_dict().items():
            if name not in param_names and accept(name):
                state[name] = _cpu_copy(tensor)
    return state


def init_parameters_from(
    dst: Iterable[torch.nn.Parameter], src: Iterable[torch.nn.Parameter], *, zero3: bool
) -> None:
    """Copy each `src` parameter's values into the `dst` parameter at the same position (same shapes).

    Under ZeRO-3 every rank must call it; each pair is gathered in turn and rank 0's copy is kept
    (broadcast to every rank), so at most one pair is whole at a time.
    """
    targets, sources = list(dst), list(src)
    if len(targets) != len(sources):
        raise ValueError(
            f"init_parameters_from: {len(targets)} destination and {len(sources)} source parameters"
        )
    for index, (target, source) in enumerate(zip(targets, sources)):
        with gathered_parameters([target, source], enabled=zero3, modifier_rank=0), torch.no_grad():
            if target.shape != source.shape:
                raise ValueError(
                    f"init_parameters_from: pair {index} has shapes {tuple(target.shape)} and {tuple(source.shape)}"
                )
            target.copy_(source)
