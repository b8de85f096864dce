"""Token losses that never hold the full fp32 logits of a batch: cross-entropy, log-probs, distillation KL.

The plain loss builds fp32 logits of shape `[rows, length, vocab]`: at 8K tokens and a 128K
vocabulary that is 4 GiB per row, usually the largest tensor of the step. Here every loss takes
final hidden states `h` `[N, H]` (one row per scored token) and an output layer (`head`, called
as a module), and runs the head over `chunk_size` rows at a time, each chunk under non-reentrant
activation checkpointing: at most one chunk's `[chunk_size, vocab]` logits (and the few tensors
derived from them) exist at a time, in the forward pass and again in the backward pass.

With z = head(h) in fp32, then z·s (s = `config.logit_scale`, Cohere) and c·tanh(z/c)
(c = `config.final_logit_softcapping`, Gemma 2) where the architecture has them:

    chunked_cross_entropy_sum:  sum_i −log softmax(z_i)[y_i]
    token_log_probs:            log softmax(z_i)[y_i] for each row i
    distillation_kl_sum:        T² · sum_i KL(p_i ‖ q_i),  p = softmax(z_teacher/T), q = softmax(z_student/T)
                                (forward KL, teacher first; T² keeps the gradient's size independent of T,
                                as in Hinton et al. 2015)

For a transformers causal LM, `causal_lm_loss` and `sequence_log_probs` get `h` from the model's
own (root) forward, which DeepSpeed ZeRO-3 needs in order to fetch, release and reduce parameters
correctly (calling the backbone alone loses gradients there), with `logits_to_keep=1` so it
projects a single position; a forward hook on the backbone captures the final hidden states.
Only positions whose shifted label is trainable (labels != -100) reach the head: prompt tokens,
padding and masked turns never do. The head is called as a module (not through its weight), so
ZeRO-3 gathers its weight as usual, tied to the input embeddings or not.

Cross-entropy with a plain linear head (`torch.nn.Linear`, tied or not) is *fused*
(`fused_linear_cross_entropy`): each chunk's logits are made, turned into the loss and, in place, into
the gradient wrt the logits (kernel `core.cross_entropy`, picked by the recipe's `kernels` key), then reduced to
the chunk's gradients wrt the hidden states, the weight and the bias, all in the forward pass. Backward
only scales the saved gradients: three matmuls per chunk instead of four (no recompute), no autograd
graph over vocabulary-wide tensors, and one chunk of logits alive at a time. Such a loss must be
backpropagated at most once per forward (a second backward raises); without grad (evaluation, a
frozen reference) only the values are computed. Log-probs that carry a gradient (`token_log_probs`,
DPO's policy) keep the checkpointed chunks: their per-row gradient weights are known only in backward,
so the weight's gradient cannot be formed in the forward pass without keeping every chunk's softmax.

Two ZeRO-3 rules (`zero3_head`): every call of a partitioned head is a collective, so all ranks run
the same number of chunks (the count is all-reduced; a rank with fewer rows runs empty chunks), and a
frozen partitioned head is called through `_FrozenHead`, which saves nothing for backward and gathers
its weight there itself (checkpointing would otherwise save the parameter, which ZeRO-3 releases
after the recompute's forward, and refuse the recompute). The fused path gathers a frozen
partitioned weight once per call, around all its chunks (`arctic_core.gather.gathered_parameters`),
and needs nothing of it in backward; a trainable one runs the fused loss as the head module's own
call, so that ZeRO-3's module hooks gather the weight for the forward and again when its saved
gradient is accumulated (`_fused_as_module_call`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from arctic_core.gather import agree_max
from arctic_core.kernels import select

IGNORE_INDEX = -100
CROSS_ENTROPY = "core.cross_entropy"
"""The registry name of the per-chunk cross-entropy kernel (`arctic_core.kernels`)."""
MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")
DEFAULT_CHUNK_SIZE = 4096

LogitTransform = tuple[float | None, float | None]
ChunkKL = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
"""(student logits, teacher logits, T) of one chunk -> T² · sum of its rows' KL (e.g. a fused kernel)."""


def backbone_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and the output layer of a transformers causal LM (inside a PEFT wrapper too)."""
    if callable(getattr(model, "get_base_model", None)):  # a PeftModel: its attributes reach the
        model = model.get_base_model()  # wrapped model's, and `model.model` would be the whole LM
    base = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, base, None) if base else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if backbone is None or head is None:
        raise TypeError(f"{type(model).__name__} is not a transformers causal LM (no backbone/output layer)")
    return backbone, head


def logit_transform(config: Any) -> LogitTransform:
    """(scale, soft-cap) that some architectures apply to logits (Cohere, Gemma 2); None where absent."""
    return getattr(config, "logit_scale", None), getattr(config, "final_logit_softcapping", None)


def zero3_head(*heads: torch.nn.Module) -> bool:
    """Whether any of `heads` has ZeRO-3 partitioned parameters (so every call of it is a collective)."""
    return any(hasattr(p, "ds_id") for head in heads for p in head.parameters())


class _FrozenHead(torch.autograd.Function):
    """`head(hidden)` for a frozen ZeRO-3 linear head: saves nothing; backward gathers the weight itself.

    A linear op saves its weight, the partitioned parameter itself, whose data ZeRO-3 releases when the
    head's forward ends; in a recompute nothing fetches it again before the backward that needs it.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
        ctx.head = head
        with torch.no_grad():
            return head(hidden)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        from arctic_core.gather import gathered_parameters

        weight = ctx.head.weight
        with gathered_parameters([weight], enabled=True):
            return grad.to(weight.dtype) @ weight, None


def _call_head(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    frozen = not any(p.requires_grad for p in head.parameters())
    if frozen and isinstance(head, torch.nn.Linear) and zero3_head(head):
        return _FrozenHead.apply(hidden, head)
    return head(hidden)


def chunk_starts(rows: int, chunk_size: int, *heads: torch.nn.Module) -> range:
    """Start rows of the chunks; under ZeRO-3 on several ranks, as many chunks as the busiest rank has.

    A rank's extra chunks start past its last row (empty slices), so every rank calls the head, a
    collective, the same number of times. Every rank must call this (it all-reduces then).
    """
    count = -(-rows // chunk_size)
    if zero3_head(*heads):
        count = agree_max(count)  # over every rank: the group the partitioned head gathers over
    return range(0, count * chunk_size, chunk_size)


def output_logits(
    head: torch.nn.Module, hidden: torch.Tensor, scale: float | None, cap: float | None
) -> torch.Tensor:
    """fp32 logits of `hidden` rows, scaled and soft-capped as the architecture does."""
    logits = _call_head(head, hidden).float()
    if scale is not None:
        logits = logits * scale
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def final_hidden_states(
    model: torch.nn.Module, backbone: torch.nn.Module, batch: dict[str, torch.Tensor], call: Any = None
) -> torch.Tensor:
    """The backbone's output `[B, L, H]` from one root forward that projects only the last position."""
    captured: list[torch.Tensor] = []

    def keep(_: torch.nn.Module, __: Any, output: Any) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = backbone.register_forward_hook(keep)
    try:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        (call or model)(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1]


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(u(h_i·Wᵀ + b), y_i) whose gradients wrt h, W and b are formed in the forward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        options: dict[str, Any],
    ) -> torch.Tensor:
        need = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        losses, ctx.grads = _linear_ce_chunks(hidden, weight, bias, targets, need=need, **options)
        return losses.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = getattr(ctx, "grads", None)
        if grads is None:
            raise RuntimeError(
                "fused_linear_cross_entropy: its gradient (formed in the forward pass) was already used; "
                "backpropagate each loss at most once"
            )
        del ctx.grads  # frees the saved gradients with this backward, and refuses a second one
        if grad_output.device.type == "cpu" and float(grad_output) == 1.0:
            return grads[0], grads[1], grads[2], None, None  # the common case: no pass over [V, H]
        scaled = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads]
        return scaled[0], scaled[1], scaled[2], None, None


def _linear_ce_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    need: tuple[bool, bool, bool],
    chunk_size: int,
    scale: float | None,
    softcap: float | None,
    ignore_index: int,
    kernels: str,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Per-row CE `[N]` fp32, and the gradients of their sum wrt (hidden, weight, bias) where `need` asks."""
    ce_value_and_grad_ = select(CROSS_ENTROPY, kernels, hidden.device)
    need_h, need_w, need_b = need
    rows = hidden.shape[0]
    losses = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_h else None
    grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    grad_b = (
        torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        if need_b and bias is not None
        else None
    )
    for start in range(0, rows, chunk_size):
        part = slice(start, start + chunk_size)
        h = hidden[part]
        logits = F.linear(h, weight, bias).float()  # fp32 (a copy unless already fp32, which is then reused)
        losses[part] = ce_value_and_grad_(
            logits, targets[part], scale=scale, softcap=softcap, ignore_index=ignore_index, grad=any(need)
        )
        grad_z = logits.to(weight.dtype)  # now d loss / d logits
        if grad_h is not None:
            torch.mm(grad_z, weight, out=grad_h[part])
        if grad_w is not None:
            if start == 0 and weight.dtype == torch.float32:
                torch.mm(grad_z.t(), h, out=grad_w)  # the first chunk writes: no zero-filled [V, H] pass
            elif start == 0:
                grad_w.copy_(grad_z.t() @ h.to(weight.dtype))
            elif weight.dtype == torch.float32:
                grad_w.addmm_(grad_z.t(), h)
            else:
                grad_w += grad_z.t() @ h.to(weight.dtype)
        if grad_b is not None:
            grad_b += logits.sum(dim=0)
    if grad_w is not None:
        grad_w = (grad_w.zero_() if rows == 0 else grad_w).to(weight.dtype)
    if grad_b is not None and bias is not None:
        grad_b = grad_b.to(bias.dtype)
    return losses, [grad_h, grad_w, grad_b]


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    kernels: str = "auto",
) -> torch.Tensor:
    """sum_i CE(u_i, y_i) with u = c·tanh(s·(h·Wᵀ + b)/c), fp32; gradients formed in the forward pass.

    `hidden` `[N, H]`, `weight` `[V, H]` (whole: gather a ZeRO-3 weight first, as
    `chunked_cross_entropy_sum` does), `targets` `[N]` (`ignore_index` rows count 0). `scale` s and
    `softcap` c are optional. At most one `[chunk_size, V]` fp32 logits buffer exists at a time. When
    grad is enabled and an input requires it, the result must be backpropagated at most once; without
    grad only the loss is computed. `kernels` is the recipe's kernel switch (auto, torch, triton).
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        options = {
            "chunk_size": chunk_size,
            "scale": scale,
            "softcap": softcap,
            "ignore_index": ignore_index,
            "kernels": kernels,
        }
        result: torch.Tensor = _FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, options)
        return result
    return linear_cross_entropy_rows(
        hidden,
        weight,
        targets,
        bias,
        chunk_size=chunk_size,
        scale=scale,
        softcap=softcap,
        ignore_index=ignore_index,
        kernels=kernels,
    ).sum()


def linear_cross_entropy_rows(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    kernels: str = "auto",
) -> torch.Tensor:
    """Per-row CE `[N]` of the fused path without any gradient (evaluation, frozen references)."""
    with torch.no_grad():
        losses, _ = _linear_ce_chunks(
            hidden,
            weight,
            bias,
            targets,
            need=(False, False, False),
            chunk_size=chunk_size,
            scale=scale,
            softcap=softcap,
            ignore_index=ignore_index,
            kernels=kernels,
        )
    return losses


def fusable_head(head: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    """Whether the fused path serves `head`: a plain linear layer (partitioned by ZeRO-3 or not)."""
    return isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward


def _fused_as_module_call(
    head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, **options: Any
) -> Any:
    """The fused loss run as the head's own forward, for a *trainable* ZeRO-3 partitioned head.

    ZeRO-3 accumulates a parameter's gradient only while its module's hooks hold it gathered: its
    pre-forward hook gathers the weight for the fused forward, and the backward hook it puts on the
    module's output (here the loss) gathers it again before the saved weight gradient is handed to
    it, then reduce-scatters it. A gradient handed to the released parameter from outside the
    module would fail autograd's accumulation (shape 0 against V x H).
    """

    def forward(rows: torch.Tensor) -> torch.Tensor:
        return fused_linear_cross_entropy(rows, head.weight, targets, head.bias, **options)

    head.forward = forward  # type: ignore[method-assign,assignment]
    try:
        return head(hidden)
    finally:
        del head.forward


@contextmanager
def whole_head(head: torch.nn.Linear) -> Iterator[None]:
    """The head's weight (and bias) whole for the block: gathered once under ZeRO-3 (every rank must enter)."""
    from arctic_core.gather import gathered_parameters

    params = [p for p in (head.weight, head.bias) if isinstance(p, torch.nn.Parameter)]
    with gathered_parameters(params, enabled=zero3_head(head)):
        yield


def _chunk_loss_sum(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float | None, cap: float | None
) -> torch.Tensor:
    return F.cross_entropy(output_logits(head, hidden, scale, cap), targets, reduction="sum")


def chunked_cross_entropy_sum(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    config: Any = None,
    kernels: str = "auto",
) -> torch.Tensor:
    """Sum of CE over `hidden` `[N, H]` rows against `targets` `[N]`, `chunk_size` rows at a time (fp32).

    A plain linear head takes the fused path (`fused_linear_cross_entropy`: backpropagate the result at
    most once; `kernels` picks its kernel); any other head runs each chunk under activation checkpointing.
    """
    scale, cap = logit_transform(config)
    if fusable_head(head):
        options: dict[str, Any] = {
            "chunk_size": chunk_size,
            "scale": scale,
            "softcap": cap,
            "kernels": kernels,
        }
        if zero3_head(head) and torch.is_grad_enabled() and any(p.requires_grad for p in head.parameters()):
            return _fused_as_module_call(head, hidden, targets, **options)  # type: ignore[no-any-return]
        with whole_head(head):
            return fused_linear_cross_entropy(hidden, head.weight, targets, head.bias, **options)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in chunk_starts(hidden.shape[0], chunk_size, head):
        part = slice(start, start + chunk_size)
        total = total + checkpoint(
            _chunk_loss_sum, head, hidden[part], targets[part], scale, cap, use_reentrant=False
        )
    return total


def _chunk_log_probs(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float | None, cap: float | None
) -> torch.Tensor:
    return -F.cross_entropy(output_logits(head, hidden, scale, cap), targets, reduction="none")


def token_log_probs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    config: Any = None,
    kernels: str = "auto",
) -> torch.Tensor:
    """log p(target) `[N]` fp32 for each row of `hidden` `[N, H]`, `chunk_size` rows at a time.

    Chunks are checkpointed when grad is enabled; under no_grad they simply run one after another
    (through the fused kernel, picked by `kernels`, for a plain linear head).
    """
    scale, cap = logit_transform(config)
    if not torch.is_grad_enabled() and fusable_head(head):
        with whole_head(head):
            return -linear_cross_entropy_rows(
                hidden,
                head.weight,
                targets,
                head.bias,
                chunk_size=chunk_size,
                scale=scale,
                softcap=cap,
                kernels=kernels,
            )
    parts = []
    for start in chunk_starts(hidden.shape[0], chunk_size, head):
        part = slice(start, start + chunk_size)
        if torch.is_grad_enabled():
            parts.append(
                checkpoint(
                    _chunk_log_probs, head, hidden[part], targets[part], scale, cap, use_reentrant=False
                )
            )
        else:
            parts.append(_chunk_log_probs(head, hidden[part], targets[part], scale, cap))
    return torch.cat(parts) if parts else hidden.new_zeros((0,), dtype=torch.float32)


def _chunk_kl_sum(
    student_head: torch.nn.Module,
    student_hidden: torch.Tensor,
    teacher_head: torch.nn.Module,
    teacher_hidden: torch.Tensor,
    student_transform: LogitTransform,
    teacher_transform: LogitTransform,
    temperature: float,
    chunk_kl: ChunkKL | None,
) -> torch.Tensor:
    # The teacher's chunk is computed here (and again on recompute), never passed in: a tensor
    # passed to a checkpointed function is kept for the backward pass, every chunk of it.
    with torch.no_grad():
        teacher = output_logits(teacher_head, teacher_hidden, *teacher_transform)
    student = output_logits(student_head, student_hidden, *student_transform)
    return (chunk_kl or kl_sum)(student, teacher, temperature)


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · sum over rows of KL(softmax(teacher/T) ‖ softmax(student/T)), logits `[N, V]` fp32."""
    teacher_logp = torch.log_softmax(teacher.detach() / temperature, dim=-1)
    student_logp = torch.log_softmax(student / temperature, dim=-1)
    kl = F.kl_div(student_logp, teacher_logp, reduction="sum", log_target=True)
    return kl * temperature**2


def distillation_kl_sum(
    student_head: torch.nn.Module,
    student_hidden: torch.Tensor,
    teacher_head: torch.nn.Module,
    teacher_hidden: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    config: Any = None,
    teacher_config: Any = None,
    chunk_kl: ChunkKL | None = None,
) -> torch.Tensor:
    """T² · sum over rows of KL(softmax(z_t/T) ‖ softmax(z_s/T)), `chunk_size` rows at a time (fp32).

    z_s = student_head(student_hidden) `[N, H_s]`, z_t = teacher_head(teacher_hidden) `[N, H_t]`; row i
    of each is the same token. The teacher side runs without grad. The heads may be the same module
    (SwiftKV: one model's head over its teacher and student hidden states) or two. `config` gives the
    student's logit scale / soft-cap, `teacher_config` the teacher's (default: `config`). `chunk_kl`
    replaces the chunk's KL formula (`kl_sum`), e.g. by a fused kernel with its own backward.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(f"student has {student_hidden.shape[0]} rows, teacher {teacher_hidden.shape[0]}")
    student_transform = logit_transform(config)
    teacher_transform = logit_transform(config if teacher_config is None else teacher_config)
    teacher_hidden = teacher_hidden.detach()
    total = student_hidden.new_zeros((), dtype=torch.float32)
    starts = chunk_starts(student_hidden.shape[0], chunk_size, student_head, teacher_head)
    for start in starts:
        part = slice(start, start + chunk_size)
        total = total + checkpoint(
            _chunk_kl_sum,
            student_head,
            student_hidden[part],
            teacher_head,
            teacher_hidden[part],
            student_transform,
            teacher_transform,
            temperature,
            chunk_kl,
            use_reentrant=False,
        )
    return total


def distillation_kl(
    student_head: torch.nn.Module,
    student_hidden: torch.Tensor,
    teacher_head: torch.nn.Module,
    teacher_hidden: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    config: Any = None,
    teacher_config: Any = None,
    chunk_kl: ChunkKL | None = None,
) -> torch.Tensor:
    """`distillation_kl_sum` divided by the number of rows; 0 (still connected to the student) without rows."""
    rows = student_hidden.shape[0]
    summed = distillation_kl_sum(
        student_head,
        student_hidden,
        teacher_head,
        teacher_hidden,
        temperature=temperature,
        chunk_size=chunk_size,
        config=config,
        teacher_config=teacher_config,
        chunk_kl=chunk_kl,
    )
    if rows == 0:  # no chunks (or, under ZeRO-3 on several ranks, empty ones that keep collectives in step)
        return summed + student_hidden.sum() * 0.0
    return summed / rows


def causal_lm_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    call: Any = None,
    kernels: str = "auto",
) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's trainable tokens (labels unshifted).

    `call` runs the root forward (the DeepSpeed engine in training); default: `model` itself.
    `kernels` is the recipe's kernel switch (auto, torch, triton).
    With no trainable token the loss is 0, still connected to every parameter.
    """
    backbone, head = backbone_and_head(model)
    hidden = final_hidden_states(model, backbone, batch, call)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    summed = chunked_cross_entropy_sum(
        head,
        hidden[:, :-1][keep],
        targets[keep],
        chunk_size=chunk_size,
        config=getattr(model, "config", None),
        kernels=kernels,
    )
    if count == 0:
        return summed + hidden.sum() * 0.0  # keeps the graph (and every rank's collectives) intact
    return summed / count


def sequence_log_probs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    call: Any = None,
    kernels: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the batch: (sum of its trainable tokens' log-probs `[R]` fp32, their count `[R]`).

    `call` runs the root forward (a DeepSpeed engine, which ZeRO-3 needs); default: `model` itself.
    `kernels` is the recipe's kernel switch (auto, torch, triton).
    """
    backbone, head = backbone_and_head(model)
    hidden = final_hidden_states(model, backbone, batch, call)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[keep]
    logps = token_log_probs(
        head,
        hidden[:, :-1][keep],
        targets[keep],
        chunk_size=chunk_size,
        config=getattr(model, "config", None),
        kernels=kernels,
    )
    sums = torch.zeros(targets.shape[0], dtype=torch.float32, device=hidden.device).index_add(0, rows, logps)
    sums = sums + hidden.sum() * 0.0  # keeps every parameter in the graph, even without answer tokens
    return sums, keep.sum(dim=1)
