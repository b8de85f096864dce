"""What the `speculator` method changes in `arctic plan`'s estimate (`Method.plan`).

The trained model is the speculator (its parameters counted on the meta device, from the base model's
hidden and vocabulary sizes and the recipe's settings); the base model is a frozen companion whose
forward runs without grad (one layer's working set) and hands over its last hidden states. The
speculator's own activations are rough: per head, a few [tokens, width] tensors, and a chunked
cross-entropy over the vocabulary per head. Not calibrated against a measured run.
"""

from __future__ import annotations

from functools import cache

import attrs

from arctic_core.plan.estimate import BACKWARD, FORWARD, PlanSetup, Term, no_grad_layer_bytes


@cache
def speculator_parameters(hidden: int, vocab: int, settings: tuple[tuple[str, object], ...]) -> int:
    import torch

    from arctic_speculator.modeling import build_speculator

    with torch.device("meta"):
        model = build_speculator(hidden, vocab, dict(settings))
    return sum(p.numel() for p in model.parameters())


def plan(setup: PlanSetup) -> PlanSetup:
    s, w, tokens = setup.shape, setup.weight_bytes, setup.local_tokens
    model = setup.recipe.model
    settings = tuple(sorted(model.speculator_settings().items()))
    trained = speculator_parameters(s.hidden, s.vocab, settings)
    heads = int(model.n_predict)
    width = max(int(str(model.inner_dim).split(".")[0] or 0), s.hidden)
    chunk = min(int(setup.recipe.loss_chunk_size), tokens) * s.vocab * (w + 3 * 4)
    terms = (
        Term(
            name="base model forward (no grad)",
            bytes=tokens * no_grad_layer_bytes(setup),
            phases=(FORWARD,),
            source="speculator",
            note="one layer",
        ),
        Term(
            name="base hidden states",
            bytes=tokens * s.hidden * w,
            phases=(FORWARD, *BACKWARD),
            source="speculator",
        ),
        Term(
            name="speculator activations",
            bytes=heads * tokens * 4 * width * w,
            phases=(FORWARD, *BACKWARD),
            source="speculator",
            note=f"{heads} heads, rough",
        ),
        Term(
            name="speculator loss chunk",
            bytes=chunk,
            phases=BACKWARD,
            source="speculator",
            note="one head's chunk",
        ),
    )
    return attrs.evolve(
        setup,
        parameters=trained,
        trainable=trained,
        frozen_parameters=setup.frozen_parameters + s.parameters(),
        grad_layers=0,
        loss="none",
        extra=(*setup.extra, *terms),
    )
