"""What the `dpo` method changes in `arctic plan`'s estimate (`Method.plan`).

Each pair is two sequences (chosen and rejected) in one micro-batch; the policy's loss is core's
chunked log-probs (with grad: chunks checkpointed, not fused); the reference is a frozen companion
(`[ref_model]` or a second `[model]`: its weights, partitioned like the policy's under ZeRO-3), whose
forward runs without grad after the policy's (one layer's working set on top of the policy's stored
activations). With `precompute_ref_log_probs` the reference is freed before training: no term.
"""

from __future__ import annotations

import attrs

from arctic_core.plan.estimate import FORWARD, PlanSetup, Term, no_grad_layer_bytes


def _reference_shape(setup: PlanSetup) -> object:
    recipe = setup.recipe
    if getattr(recipe, "ref_model", None) is None:
        return setup.shape
    from arctic_core.plan.planner import hf_config
    from arctic_core.plan.shape import ModelShape

    return ModelShape.from_hf_config(hf_config(recipe.ref_model))


def plan(setup: PlanSetup) -> PlanSetup:
    setup = attrs.evolve(setup, sequences_per_sample=2, loss="log_probs")
    if getattr(setup.recipe, "precompute_ref_log_probs", False):
        return setup
    reference = _reference_shape(setup)
    working = setup.local_tokens * no_grad_layer_bytes(setup, reference)
    term = Term(
        name="reference forward (no grad)", bytes=working, phases=(FORWARD,), note="one layer", source="dpo"
    )
    return attrs.evolve(
        setup,
        frozen_parameters=setup.frozen_parameters + reference.parameters(),  # type: ignore[attr-defined]
        extra=(*setup.extra, term),
    )
