"""Core's verify checks: packing, accumulation, ranks, resume, precision (docs/verify.md).

The first three share one reference run: the whole verify sample set, unpacked, in one
micro-batch of one optimizer step on one rank, ZeRO stage 0, fp32. Each compares the step's
loss and the gradients (not updated parameters: AdamW's first update is about lr * sign(grad)
and would hide a wrong gradient scale) of one other way of running the same step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from arctic_core.verify.base import (
    Check,
    Row,
    Status,
    Variant,
    VariantResult,
    VerifyContext,
    compare_step,
    diff,
    failed,
)

REFERENCE = Variant(name="reference", set=("data.pack_samples=false",))
NO_ROUTER_LOSS = Variant(
    name="reference-no-router-loss", set=(*REFERENCE.set, "model.router_aux_loss_coef=0")
)
"""The reference of the checks that regroup the samples into other micro-batches, for an MoE model: its
router loss is a statistic of each micro-batch's tokens (docs/moe.md), so regrouping changes it by design."""
ROUTER_NOTE = "MoE: router loss off (it is a per-micro-batch statistic, docs/moe.md)"


def _split_reference(ctx: VerifyContext) -> Variant:
    return NO_ROUTER_LOSS if ctx.mixture_of_experts() else REFERENCE


def _split_compare(check: Check, results: Mapping[str, VariantResult], name: str, compared: str) -> Row:
    """`compare_step` of variant `name` against whichever reference ran, weights (and the MoE note) added."""
    moe = NO_ROUTER_LOSS.name in results
    reference, other = results[NO_ROUTER_LOSS.name if moe else REFERENCE.name], results[name]
    row = _with_weights(compare_step(check, reference, other, compared), other)
    return attrs.evolve(row, note=f"{row.note}; {ROUTER_NOTE}" if row.note else ROUTER_NOTE) if moe else row


PRECISION_STEPS = 2


def _with_weights(row: Row, result: VariantResult) -> Row:
    """The row with the step's micro-batch trainable tokens and weights in its note."""
    if not result.weights or not result.tokens:
        return row
    tokens, weights = result.tokens[0], result.weights[0]
    extra = "trainable tokens " + "/".join(f"{t:g}" for t in tokens)
    extra += ", weights " + "/".join(f"{w:g}" for w in weights)
    if len(set(tokens)) == 1:
        extra += " (equal token counts: a wrong weighting may not show)"
    return attrs.evolve(row, note=f"{row.note}; {extra}" if row.note else extra)


class PackingCheck(Check):
    name = "packing"
    description = "packed vs unpacked: loss + grads of one step, same samples"

    def skip_reason(self, ctx: VerifyContext) -> str | None:
        """The method's own data config may refuse packing (DPO: pairs are never packed)."""
        try:
            attrs.evolve(ctx.config.data, pack_samples=True)
        except (ValueError, TypeError) as exc:
            return f"{ctx.config.type} cannot pack its data: {exc}"
        return None

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        packed = Variant(name="packed", set=("data.pack_samples=true",), expect_packed=True)
        return [REFERENCE, packed]

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        reference, packed = results["reference"], results["packed"]
        compared = (
            f"{reference.rows} samples unpacked vs packed into {packed.rows} rows (1 step, ZeRO 0, fp32)"
        )
        if not failed(results) and packed.samples != reference.rows:
            return self.row("FAIL", compared, note=f"packed rows hold {packed.samples} samples")
        return compare_step(self, reference, packed, compared)


class AccumulationCheck(Check):
    name = "accumulation"
    description = "gradient accumulation 2 x m vs 1 x 2m: loss + grads of one step"

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        reference = _split_reference(ctx)
        return [reference, Variant(name="accumulation", set=reference.set, accumulation=2)]

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        n = (results.get(NO_ROUTER_LOSS.name) or results[REFERENCE.name]).rows
        compared = f"2 micro-batches x {n // 2} vs 1 x {n} samples (1 step, ZeRO 0, fp32)"
        return _split_compare(self, results, "accumulation", compared)


class RanksCheck(Check):
    name = "ranks"
    description = "2 ranks x m vs 1 rank x 2m: loss + grads of one step"

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        reference = _split_reference(ctx)
        return [reference, Variant(name="ranks", set=reference.set, ranks=2)]

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        n = (results.get(NO_ROUTER_LOSS.name) or results[REFERENCE.name]).rows
        compared = f"2 CPU ranks x {n // 2} vs 1 rank x {n} samples (1 step, ZeRO 0, fp32)"
        return _split_compare(self, results, "ranks", compared)


SHORT_RUN_STEPS_PER_EPOCH = 2
SHORT_RUN_ACCUMULATION = 2


def short_run(name: str, ctx: VerifyContext, steps: int, set: tuple[str, ...] = (), **fields: Any) -> Variant:
    """A run of `steps` steps with the recipe's ZeRO stage, precision and packing, no gradients recorded.

    Each epoch is 2 steps of 2 accumulated micro-batches, whose size the worker takes from the rows
    the data gives (a quarter of them; packed rows hold several samples): at least 4 rows are
    needed, else the variant cannot run and its checks are SKIPped, saying so.
    """
    return Variant(
        name=name,
        set=set,
        steps=steps,
        whole_batch=False,
        accumulation=SHORT_RUN_ACCUMULATION,
        steps_per_epoch=SHORT_RUN_STEPS_PER_EPOCH,
        comparable=False,
        grads=False,
        **fields,
    )


def kill_step(steps: int) -> int:
    """The step after whose checkpoint the resume check kills its run: odd, so mid-epoch.

    The resume variants run 2 steps per epoch (`short_run`), so after an odd step the data
    position inside the epoch matters.
    """
    return max(1, (steps // 2) | 1) if steps > 2 else 1


class ResumeCheck(Check):
    name = "resume"
    description = "N steps straight vs SIGKILL after step s's checkpoint + auto_resume: per-step losses"

    def skip_reason(self, ctx: VerifyContext) -> str | None:
        return "needs --steps 2 or more" if ctx.steps < 2 else None

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        s = kill_step(ctx.steps)
        straight = short_run("resume-straight", ctx, ctx.steps, checkpoint_every=s)
        return [
            straight,
            attrs.evolve(straight, name="resume-killed", run_name="resume-rerun", kill_after=s),
            attrs.evolve(straight, name="resume-rerun", after="resume-killed"),
        ]

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        straight, killed, rerun = (
            results["resume-straight"],
            results["resume-killed"],
            results["resume-rerun"],
        )
        n = len(straight.losses)
        compared = f"{n} steps straight vs killed (SIGKILL) after a checkpoint, rerun with auto_resume"
        problem = failed({"resume-straight": straight, "resume-rerun": rerun})
        if problem:
            return self.row("FAIL", compared, note=problem)
        if not killed.killed:
            return self.row("FAIL", compared, note=killed.error or "the run was not killed")
        s = len(killed.losses)
        compared = f"{n} steps straight vs killed (SIGKILL) after step {s}, rerun with auto_resume"
        if straight.rows:
            packed = f" packed from {straight.samples} samples" if straight.samples > straight.rows else ""
            compared += f" ({straight.rows} rows{packed}, 2 steps an epoch)"
        if rerun.start_step != s:
            return self.row("FAIL", compared, note=f"the rerun started at step {rerun.start_step}, not {s}")
        abs_diff, rel_diff = diff(rerun.losses, straight.losses)
        exact = rerun.losses == straight.losses
        note = f"steps {s + 1}-{n} from the checkpoint"
        if not exact:
            bad = [i + 1 for i, (a, b) in enumerate(zip(rerun.losses, straight.losses)) if a != b]
            note += (
                f"; first differing step {bad[0]}"
                if bad
                else f"; the rerun ended at step {len(rerun.losses)}"
            )
        status: Status = "PASS" if exact else "FAIL"
        return self.row(
            status, compared, max_abs=abs_diff, max_rel=rel_diff, tolerance="0 (bit-identical)", note=note
        )


class PrecisionCheck(Check):
    name = "precision"
    description = "bf16 vs fp32: loss drift over a few steps (reported, never pass/fail)"

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        return [
            short_run("precision-fp32", ctx, PRECISION_STEPS, set=('model.dtype="fp32"',)),
            short_run("precision-bf16", ctx, PRECISION_STEPS, set=('model.dtype="bf16"',)),
        ]

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        fp32, bf16 = results["precision-fp32"], results["precision-bf16"]
        compared = f"bf16 vs fp32 losses over {len(fp32.losses)} steps"
        problem = failed(results)
        if problem:
            return self.row("FAIL", compared, note=problem)
        abs_diff, rel_diff = diff(bf16.losses, fp32.losses)
        losses = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(bf16.losses, fp32.losses))
        return self.row("REPORT", compared, max_abs=abs_diff, max_rel=rel_diff, note=f"bf16/fp32 {losses}")


def core_checks() -> list[Check]:
    return [PackingCheck(), AccumulationCheck(), RanksCheck(), ResumeCheck(), PrecisionCheck()]
