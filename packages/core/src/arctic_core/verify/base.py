"""What a verify check is: variants of the recipe to run, and how to compare their results.

A `Check` names the short runs it needs (`Variant`s: recipe overrides, ranks, steps, what to
record) and turns their results (`VariantResult`s) into one table `Row`. Core's checks live in
`arctic_core.verify.checks`; a method or feature package contributes more through the `verify`
field of its `Method` / `Feature` (a `"module:function"` returning a list of checks).

Light imports only: this module is what a plugin's verify module imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

Status = Literal["PASS", "FAIL", "SKIP", "REPORT"]

COMPARE_RTOL = 1e-5
"""Relative tolerance of the comparison checks (packing, accumulation, ranks; docs/verify.md)."""

LOSS_SCALE = "loss_scale"
"""A step metric a method logs when its loss is a sum of terms that cancel (GRPO: advantages summing
to zero per group): the same aggregate over the terms' absolute values. Verify then compares the
loss relative to max(|loss|, loss_scale), the size of what was summed, instead of relative to a
value that is zero by construction (docs/verify.md, "The checks")."""


@attrs.frozen(kw_only=True)
class Variant:
    """One short run of the recipe, described so that a worker process can run it.

    `whole_batch`: the step holds the whole verify sample set (after packing), split over the
    data-parallel ranks and `accumulation` micro-batches. `steps_per_epoch`: the micro-batch size is
    chosen from the rows the data gives (packed or not) so that an epoch is exactly that many
    steps of `accumulation` micro-batches (rows beyond are dropped); `steps` steps run, the sample
    set repeated. With neither, the recipe's own batch settings (or `set`'s) are kept.
    `comparable` forces ZeRO stage 0 and fp32 so gradients are plain, complete `.grad`s.
    """

    name: str
    set: tuple[str, ...] = ()  # extra recipe overrides, `key.path=value` (TOML values)
    ranks: int = 1
    steps: int = 1
    whole_batch: bool = True
    accumulation: int = 1
    steps_per_epoch: int = 0  # >0: micro-batches sized from the data's rows (see above)
    comparable: bool = True
    grads: bool = True  # record the flattened gradients of the last step
    expect_packed: bool = False  # stop early (result `skipped`) when the data is not packed
    checkpoint_every: int = 0  # a deepspeed checkpoint (auto_resume) every N steps
    kill_after: int = 0  # SIGKILL this process once the checkpoint of this step is complete
    run_name: str | None = None  # run folder name (default: `name`); two variants may share one
    after: str | None = None  # run only once this variant has finished


class CannotRun(Exception):
    """This check cannot run on this recipe (not a failure): its row is SKIP, with this message.

    Raised by a check's `variants` or `compare`, or by a variant's worker (the data gives too few
    rows, it does not pack, ...): the worker reports it as the variant's `skipped`, and every
    check using that variant is SKIPped with the reason.
    """


def micro_batch_size_for(variant: Variant, rows: int, dp_size: int, samples: int = 0) -> int:
    """The micro-batch size that makes the variant's step(s) out of `rows` training rows.

    `whole_batch`: one step holds every row, so the rows must split evenly over `dp_size` ranks x
    `accumulation` micro-batches. `steps_per_epoch`: as large as the rows allow for that many
    steps per epoch. Raises `CannotRun` (naming the rows and what was needed) when the rows cannot.
    """
    per_step = dp_size * variant.accumulation
    steps = 1 if variant.whole_batch else max(1, variant.steps_per_epoch)
    what = f"the data gives {rows} training row(s)"
    if samples > rows:
        what += f" ({samples} samples packed)"
    layout = f"{steps} step(s) x {variant.accumulation} micro-batch(es) x {dp_size} rank(s)"
    if rows < per_step * steps:
        raise CannotRun(
            f"{what}; {variant.name} needs at least {per_step * steps} ({layout}): raise --samples"
        )
    if variant.whole_batch and rows % per_step:
        raise CannotRun(f"{what}, which cannot be split into {per_step} equal micro-batches ({layout})")
    return rows // (per_step * steps)


@attrs.frozen(kw_only=True)
class VariantResult:
    """What a variant's worker reported (read from its `result.json`)."""

    name: str
    losses: list[float] = attrs.field(factory=list)  # per step, as the run's metrics.jsonl has them
    loss_scales: list[float | None] = attrs.field(
        factory=list
    )  # per step, the `LOSS_SCALE` metric (None: not logged)
    weights: list[list[float]] = attrs.field(factory=list)  # micro-batch weights (all ranks), per step
    tokens: list[list[float]] = attrs.field(factory=list)  # their trainable tokens, per step
    rows: int = 0  # training rows (samples, or packed rows) in the step
    samples: int = 0  # samples before packing (0: unknown)
    start_step: int = 0  # the step the run started at (above 0: it resumed)
    grads_path: str | None = None
    killed: bool = False
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def grads(self) -> Any:
        import torch

        assert self.grads_path is not None, f"{self.name} recorded no gradients"
        return torch.load(self.grads_path, weights_only=True)

    @classmethod
    def read(cls, path: Path, name: str) -> VariantResult:
        import json

        if not path.is_file():
            return cls(name=name, error="the worker wrote no result (see its log)")
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in attrs.fields_dict(cls)})


@attrs.frozen(kw_only=True)
class Row:
    """One line of the verify table."""

    check: str
    compared: str
    status: Status
    max_abs: float | None = None
    max_rel: float | None = None
    tolerance: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class VerifyContext:
    """What checks may look at when choosing their variants."""

    config: Any  # the recipe's TrainerConfig (after --set and --shrink)
    trainer_class: type
    samples: int  # size of the verify sample set
    steps: int  # N for the multi-step checks (resume, precision)
    shrink: dict[str, Any] | None = None  # the model's `hf_config_kwargs` under --shrink

    def hidden_size(self) -> int:
        """The width of the model the variants train (shrunk or not)."""
        if self.shrink and "hidden_size" in self.shrink:
            return int(self.shrink["hidden_size"])
        from arctic_core.engine.model import load_hf_config

        hf_config, _ = load_hf_config(self.config.model)
        return int(hf_config.hidden_size)

    def mixture_of_experts(self) -> bool:
        """Whether the model is an MoE family Arctic adds a router loss to (`arctic_core.engine.moe`)."""
        from arctic_core.engine.model import load_hf_config
        from arctic_core.engine.moe import FAMILIES

        hf_config, _ = load_hf_config(self.config.model)
        return getattr(hf_config, "model_type", "") in FAMILIES


class Check:
    """A verify check: override `variants` and `compare` (and set `name`, `description`)."""

    name: str = ""
    description: str = ""

    def skip_reason(self, ctx: VerifyContext) -> str | None:
        """Why this check cannot run on this recipe (None: it can)."""
        return None

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        raise NotImplementedError

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        raise NotImplementedError

    def row(self, status: Status, compared: str = "", **fields: Any) -> Row:
        return Row(check=self.name, compared=compared or self.description, status=status, **fields)


def diff(a: Sequence[float] | Any, b: Sequence[float] | Any) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|): the largest difference, absolute and relative to b's scale."""
    import torch

    ta = torch.as_tensor(a, dtype=torch.float64).flatten()
    tb = torch.as_tensor(b, dtype=torch.float64).flatten()
    if ta.shape != tb.shape:
        return math.inf, math.inf
    if ta.numel() == 0:
        return 0.0, 0.0
    if not (torch.isfinite(ta).all() and torch.isfinite(tb).all()):
        return math.inf, math.inf
    abs_diff = float((ta - tb).abs().max())
    scale = float(tb.abs().max())
    return abs_diff, abs_diff / scale if scale > 0 else (0.0 if abs_diff == 0 else math.inf)


def failed(results: Mapping[str, VariantResult]) -> str | None:
    """The first variant error (or skip) among `results`, as a note; None when all ran."""
    for result in results.values():
        if result.error:
            return f"{result.name}: {result.error}"
    return None


def compare_step(
    check: Check, reference: VariantResult, other: VariantResult, compared: str, rtol: float = COMPARE_RTOL
) -> Row:
    """Loss and gradients of one step: PASS when both agree within `rtol` of the reference's scale."""
    problem = failed({reference.name: reference, other.name: other})
    if problem:
        return check.row("FAIL", compared, note=problem)
    reference_grads = reference.grads()
    if not bool(reference_grads.any()):
        note = "the reference step's gradients are all zero: there is nothing to compare (a model that does not train?)"
        return check.row("FAIL", compared, note=note)
    loss_abs, loss_rel = diff(other.losses[-1:], reference.losses[-1:])
    scale = reference.loss_scales[-1] if reference.loss_scales else None
    if scale is not None and reference.losses and math.isfinite(loss_abs):
        scale = max(abs(reference.losses[-1]), scale)
        loss_rel = loss_abs / scale if scale > 0 else (0.0 if loss_abs == 0 else math.inf)
    grad_abs, grad_rel = diff(other.grads(), reference_grads)
    worst_abs, worst_rel = max(loss_abs, grad_abs), max(loss_rel, grad_rel)
    status: Status = "PASS" if worst_rel <= rtol else "FAIL"
    note = (
        f"loss rel {loss_rel:.1e}{' (of loss_scale)' if scale is not None else ''}, grads rel {grad_rel:.1e}"
    )
    return check.row(
        status, compared, max_abs=worst_abs, max_rel=worst_rel, tolerance=f"rel {rtol:g}", note=note
    )
