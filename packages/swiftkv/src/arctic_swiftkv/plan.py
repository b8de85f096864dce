"""What the `swiftkv` method changes in `arctic plan`'s estimate (`Method.plan`).

Parameters: the model plus SwiftKV's projections (`q_proj_swiftkv` on each of the L - L_kv layers after
L_kv, one `k_proj_swiftkv`/`v_proj_swiftkv` pair per group of G of them, `norm_swiftkv`), and only
those train. Activations: nothing below layer L_kv requires grad, so only the L - L_kv later layers keep
activations. The teacher pass (the same weights, SwiftKV off, no grad) runs first and returns all L + 1
hidden states, which stay alive through the student's forward; the loss keeps two of them (the final
one and the MSE's layer). The loss (KL over chunks under checkpointing, plus the MSE) keeps the student's
and teacher's rows and recomputes one chunk of both logits (fp32, with their softmaxes) in backward.
"""

from __future__ import annotations

import attrs

from arctic_core.plan.estimate import BACKWARD, BACKWARD_START, FORWARD, PlanSetup, Term


def swiftkv_parameters(setup: PlanSetup) -> int:
    s, model = setup.shape, setup.recipe.model
    later = s.layers - int(model.num_key_value_layers)
    groups = -(-later // int(model.key_value_group_size))
    bias = s.qkv_bias
    q = s.hidden * s.q_dim + (s.q_dim if bias else 0)
    kv = 2 * (s.hidden * s.kv_dim + (s.kv_dim if bias else 0))
    return later * q + groups * kv + s.hidden


def plan(setup: PlanSetup) -> PlanSetup:
    s, w, tokens = setup.shape, setup.weight_bytes, setup.local_tokens
    added = swiftkv_parameters(setup)
    later = s.layers - int(setup.recipe.model.num_key_value_layers)
    chunk = (
        min(int(setup.recipe.loss_chunk_size), tokens) * s.vocab * 4 * 5
    )  # 2 logits, 2 softmaxes, a gradient
    terms = (
        Term(
            name="teacher hidden states",
            bytes=(s.layers + 1) * tokens * s.hidden * w,
            phases=(FORWARD,),
            source="swiftkv",
            note=f"{s.layers + 1} layers' outputs",
        ),
        Term(
            name="distillation rows",
            bytes=4 * tokens * s.hidden * w,
            phases=(FORWARD, *BACKWARD),
            source="swiftkv",
            note="student + teacher: final and MSE layer",
        ),
        Term(
            name="distillation chunk",
            bytes=chunk,
            phases=(BACKWARD_START,),
            source="swiftkv",
            note="one chunk recomputed",
        ),
    )
    return attrs.evolve(
        setup,
        parameters=setup.parameters + added,
        trainable=added,
        grad_layers=later,
        loss="none",
        extra=(*setup.extra, *terms),
    )
