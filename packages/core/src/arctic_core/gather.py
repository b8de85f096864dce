"""Across ranks: a differentiable all-gather of activations, ZeRO-3 parameters made whole, lockstep work.

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

Work that ranks must do in lockstep (every forward of a ZeRO-3 model gathers parameters
collectively, so every rank must run as many) goes through one helper, never a hand-written loop:
`agree_max(n)` is the largest `n` of any rank; `lockstep(items, filler=...)` yields this rank's
items, then a filler until every rank has had as many rounds; `sharded_map(fn, items, filler=...)`
applies `fn` to both and keeps the results of the items only. A rank with no items still takes
part (it runs fillers only). Sharding itself stays with the caller (`items[rank::size]`, a loader's
share); `group_rank_and_size(group)` gives the place to shard by.

Under ZeRO-3 each rank holds a slice of every parameter. `gathered_parameters` makes some whole
for the length of a block (`deepspeed.zero.GatheredParameters`; changes made on `modifier_rank`
are kept and broadcast, without it they are discarded); `gathered_state_dict` collects a module's
state one parameter at a time on rank 0 (export, PEFT merge); `init_parameters_from` copies
parameters into others (a method initialising new weights from existing ones).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from arctic_core.engine import distributed

T = TypeVar("T")
R = TypeVar("R")


def group_rank_and_size(group: Any = None) -> tuple[int, int]:
    """This process's rank in `group` (None: all ranks) and the group's size; (0, 1) without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _collective_device(group: Any) -> torch.device:
    """Where a small tensor for a collective of `group` lives: the current GPU under NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_max(value: int, group: Any = None) -> int:
    """The largest `value` any rank of `group` (None: all ranks) passes; every rank of it must call this.

    For counts that decide how often a collective runs (batches of sharded inference, loss chunks,
    MLP tiles, a stop flag). Without a process group, or in a group of one, it is `value` itself.
    The group is the one whose collectives the count paces: ZeRO-3 gathers parameters over all
    ranks, so the default (every rank, sequence-parallel peers included) is right for forwards.
    """
    if group_rank_and_size(group)[1] == 1:
        return int(value)
    agreed = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device(group))
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=group)
    return int(agreed.item())


def lockstep(
    items: Iterable[T], *, filler: Callable[[], T], count: int | None = None, group: Any = None
) -> Iterator[tuple[T, bool]]:
    """This rank's `items`, each with True; then `filler()` with False until every rank of `group` had as many.

    The number of rounds is `agree_max` of each rank's count (`count`, or `len(items)`), agreed when
    `lockstep` is called, so every rank of `group` must call it, and iterate it to the end, even one
    with no items (it gets fillers only). `filler` is called at most once, the first time this rank
    runs out, and that one object is yielded for every later round: make it a valid input (e.g. the
    dataset's first sample) whose results the caller discards. With no rank holding an item, nothing
    is yielded and `filler` is never called.
    """
    if count is None:
        if not isinstance(items, Sized):
            raise TypeError("lockstep: pass count= for items without a length (an iterator)")
        count = len(items)
    return _rounds(iter(items), filler, agree_max(count, group))


_END: Any = object()


def _rounds(mine: Iterator[T], filler: Callable[[], T], rounds: int) -> Iterator[tuple[T, bool]]:
    spare: list[T] = []
    for _ in range(rounds):
        item = next(mine, _END)
        if item is not _END:
            yield item, True
            continue
        if not spare:
            spare.append(filler())
        yield spare[0], False
    if next(mine, _END) is not _END:
        raise ValueError(f"lockstep: more items than the count given ({rounds} rounds agreed)")


def sharded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    filler: Callable[[], T],
    count: int | None = None,
    group: Any = None,
) -> list[R]:
    """`[fn(item) for item in items]`, with `fn(filler())` run as often as every rank of `group` needs.

    Every rank of `group` calls `fn` the same number of times: as many as the rank with the most
    items (see `lockstep`; every rank must call this, one with no items too). Results of fillers
    are discarded. `items` is this rank's share; combining the shares is the caller's (a sum, an
    `all_gather_detached`).
    """
    results = []
    for item, real in lockstep(items, filler=filler, count=count, group=group):
        result = fn(item)
        if real:
            results.append(result)
    return results


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
