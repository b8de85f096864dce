"""`arctic plan`: the estimate of a recipe on some hardware, as a table or JSON, with what would make it fit."""

from __future__ import annotations

from typing import Any

import attrs

from arctic_core.plan.estimate import (
    ALWAYS,
    BACKWARD,
    BACKWARD_ATTENTION,
    BACKWARD_END,
    BACKWARD_START,
    FORWARD,
    STEP,
    Estimate,
    Lever,
    Term,
)
from arctic_core.plan.hardware import Hardware, human
from arctic_core.plan.planner import Planner, hf_config
from arctic_core.plan.shape import ModelShape


@attrs.frozen(kw_only=True)
class Suggestion:
    """Recipe changes that make the run fit, and the estimate with them."""

    levers: tuple[Lever, ...]
    estimate: Estimate | None  # None: nothing tried fits

    @property
    def label(self) -> str:
        return " + ".join(lever.label for lever in self.levers)


@attrs.frozen(kw_only=True)
class PlanReport:
    planner: Planner
    estimate: Estimate
    max_micro_batch: int
    max_sequence: int
    suggestion: Suggestion | None

    @property
    def fits(self) -> bool:
        return self.estimate.peak <= self.planner.hardware.memory


def make_planner(
    recipe: str, overrides: tuple[str, ...], hardware: Hardware, *, method: str | None = None
) -> Planner:
    from arctic_core.recipe import load_recipe

    config = load_recipe(recipe, overrides, method=method).config
    shape_config = hf_config(config.model)
    return Planner(
        config=config,
        shape=ModelShape.from_hf_config(shape_config),
        shape_config=shape_config,
        hardware=hardware,
        recipe=recipe,
        overrides=overrides,
        method=method,
    )


def _levers(planner: Planner) -> list[Lever]:
    setup = planner.setup()
    levers = list(setup.levers)
    if setup.micro_batch > 1:
        best = max(1, planner.max_micro_batch())
        if best < setup.micro_batch:
            levers.insert(1, Lever(label=f"micro_batch_size {best}", overrides=(f"micro_batch_size={best}",)))
    return levers


def suggest(planner: Planner) -> Suggestion | None:
    """None if the run fits; else the first single change that fits, else changes added one by one in
    order until one fits, else all of them and the longest `data.max_length` that fits with them."""
    if planner.fits():
        return None
    levers = _levers(planner)
    for lever in levers:
        changed = planner.with_overrides(lever.overrides)
        if changed is not None and changed.fits():
            return Suggestion(levers=(lever,), estimate=changed.estimate())
    current, applied = planner, list[Lever]()
    for lever in levers:
        changed = current.with_overrides(lever.overrides)
        if changed is None:
            continue
        current, applied = changed, [*applied, lever]
        if current.fits():
            return Suggestion(levers=tuple(applied), estimate=current.estimate())
    longest = current.max_sequence()  # with every change: how long a sequence fits
    if longest:
        lever = Lever(label=f"data.max_length {longest:,}", overrides=(f"data.max_length={longest}",))
        changed = current.with_overrides(lever.overrides)
        if changed is not None and changed.fits():
            return Suggestion(levers=(*applied, lever), estimate=changed.estimate())
    return Suggestion(levers=tuple(applied), estimate=None)


def plan(
    recipe: str, overrides: tuple[str, ...], hardware: Hardware, *, method: str | None = None
) -> PlanReport:
    planner = make_planner(recipe, overrides, hardware, method=method)
    return PlanReport(
        planner=planner,
        estimate=planner.estimate(),
        max_micro_batch=planner.max_micro_batch(),
        max_sequence=planner.max_sequence(),
        suggestion=suggest(planner),
    )


def _header(report: PlanReport) -> list[str]:
    setup, s = report.estimate.setup, report.planner.shape
    sp = f", sequence parallel {setup.sequence_parallel}" if setup.sequence_parallel > 1 else ""
    return [
        f"arctic plan: {report.planner.recipe} on {report.planner.hardware.describe()}",
        f"model: {s.model_type or '?'} hidden {s.hidden}, {s.layers} layers, {s.heads}/{s.kv_heads} heads, "
        f"{_mlp(s)}, vocab {s.vocab:,}: {setup.parameters:,} parameters, {setup.trainable:,} trained",
        *_moe_line(s),
        f"run: {setup.world} rank{'' if setup.world == 1 else 's'}{sp}, micro batch {setup.micro_batch} x {setup.sequence:,} tokens "
        f"({setup.local_tokens:,} per rank), {setup.dtype}, ZeRO stage {setup.zero_stage}"
        f"{', optimizer offload' if setup.offload_optimizer else ''}{', parameter offload' if setup.offload_param else ''}",
        *(f"note: {note}" for note in setup.notes),
        "",
    ]


def _mlp(s: Any) -> str:
    if not s.experts:
        return f"MLP {s.intermediate}"
    shared = f" + shared {s.shared_intermediate}" if s.shared_intermediate else ""
    return f"MoE in {s.moe_layers} layers: {s.experts} experts x {s.expert_intermediate} (top {s.experts_per_token}){shared}"


def _moe_line(s: Any) -> list[str]:
    """Total vs active parameters (what a token runs through; FLOPs follow it), experts' share of the weights."""
    if not s.experts:
        return []
    total = s.parameters()
    return [
        f"mixture of experts: {s.active_parameters():,} active parameters per token of {total:,}; "
        f"the experts hold {s.expert_parameters():,} ({100 * s.expert_parameters() / total:.0f}%), "
        "all of them in the memory terms (no expert parallelism)"
    ]


SHORT = {
    FORWARD: "fwd",
    BACKWARD_START: "bwd-start",
    BACKWARD_ATTENTION: "bwd-at",
    BACKWARD_END: "bwd-end",
    STEP: "step",
}


def when(term: Term) -> str:
    """The phases a term lives in, short: always, fwd, bwd (start and end), bwd-start, bwd-end, step."""
    if ALWAYS in term.phases:
        return ALWAYS
    if set(BACKWARD) <= set(term.phases):
        return "fwd+bwd" if FORWARD in term.phases else "bwd"
    return "+".join(SHORT[p] for p in term.phases)


def render(report: PlanReport) -> str:
    """The breakdown table, the verdict, the largest micro batch and sequence, the suggestion."""
    est, memory = report.estimate, report.planner.hardware.memory
    lines = _header(report)
    width = max(len(t.name) for t in est.terms) + 2
    lines.append(f"{'term':<{width}}{'per device':>12}  {'when':<22}{'source':<11}note")
    for term in est.terms:
        row = f"{term.name:<{width}}{human(term.bytes):>12}  {when(term):<22}{term.source:<11}{term.note}"
        lines.append(row.rstrip())
    verdict = "fits" if report.fits else "does NOT fit"
    lines += [
        "",
        f"peak: {human(est.peak)} ({est.peak_phase}) of {human(memory)} per device: {verdict} "
        f"({est.peak / memory:.0%})",
        f"largest micro batch at {est.setup.sequence:,} tokens: {report.max_micro_batch or 'none fits'}",
        f"longest sequence at micro batch {est.setup.micro_batch}: {report.max_sequence:,} tokens"
        if report.max_sequence
        else f"longest sequence at micro batch {est.setup.micro_batch}: none fits",
    ]
    if report.suggestion is not None:
        change = report.suggestion
        if change.estimate is not None:
            sets = " ".join(f"--set {o}" for lever in change.levers for o in lever.overrides)
            lines.append(f"to fit: {change.label}: {human(change.estimate.peak)} ({sets})")
        else:
            lines.append(f"to fit: nothing tried fits (tried {change.label}); shorten data.max_length")
    return "\n".join(lines) + "\n"


def as_json(report: PlanReport) -> dict[str, Any]:
    est, hardware = report.estimate, report.planner.hardware
    setup = est.setup
    suggestion = report.suggestion
    return {
        "recipe": report.planner.recipe,
        "hardware": {
            "name": hardware.name,
            "devices": hardware.devices,
            "nodes": hardware.nodes,
            "memory": hardware.memory,
        },
        "setup": {
            key: getattr(setup, key)
            for key in (
                "dtype",
                "world",
                "sequence_parallel",
                "micro_batch",
                "sequence",
                "local_tokens",
                "zero_stage",
                "offload_optimizer",
                "offload_param",
                "checkpointing",
                "checkpoint_offload",
                "mlp_tile_tokens",
                "attention",
                "parameters",
                "trainable",
                "frozen_parameters",
                "loss",
            )
        }
        | {"notes": list(setup.notes)}
        | {
            "active_parameters": setup.shape.active_parameters(),
            "expert_parameters": setup.shape.expert_parameters(),
        },
        "terms": [attrs.asdict(term) for term in est.terms],
        "peak": est.peak,
        "peak_phase": est.peak_phase,
        "fits": report.fits,
        "max_micro_batch": report.max_micro_batch,
        "max_sequence": report.max_sequence,
        "suggestion": None
        if suggestion is None
        else {
            "change": suggestion.label,
            "overrides": [o for lever in suggestion.levers for o in lever.overrides],
            "peak": suggestion.estimate.peak if suggestion.estimate is not None else None,
        },
    }
