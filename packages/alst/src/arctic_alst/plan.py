"""What the alst feature changes in `arctic plan`'s estimate (`Feature.plan`).

- `sequence_parallel_size` S: each rank holds 1/S of every sequence, plus Ulysses' all-to-all: q, k
  and v staged (contiguous) for the exchange while the exchanged copies exist, and the output after
  the exchange back, one more saved tensor per layer (o_proj keeps it, the attention keeps its own).
- `tiled_mlp_compute`: the MLP's [tokens, intermediate] tensors exist for one tile of ~hidden_size
  tokens at a time (ceil(tokens / hidden_size) tiles, ArcticTraining's choice).
- `activation_checkpoint_cpu_offload`: checkpointing on, and the checkpointed layer inputs in host memory.
"""

from __future__ import annotations

import attrs

from arctic_core.plan.estimate import BACKWARD, BACKWARD_START, FORWARD, Lever, PlanSetup, Term


def _ulysses_terms(setup: PlanSetup) -> list[Term]:
    s, w, tokens = setup.shape, setup.weight_bytes, setup.local_tokens
    kv = max(s.kv_heads, setup.sequence_parallel) * s.head_dim  # KV heads repeated up to S
    buffers = tokens * (s.q_dim + 2 * kv) * w
    note = f"q, k, v staged for the exchange, alive with what it returns (S = {setup.sequence_parallel})"
    layers = 1 if setup.checkpointing else s.layers
    phases = BACKWARD if setup.checkpointing else (FORWARD, BACKWARD_START)
    saved = layers * tokens * s.q_dim * w
    return [
        Term(
            name="Ulysses all-to-all buffers",
            bytes=buffers,
            phases=(FORWARD, *BACKWARD),
            note=note,
            source="alst",
        ),
        Term(
            name="Ulysses exchanged output",
            bytes=saved,
            phases=phases,
            note=f"{layers} layer(s)",
            source="alst",
        ),
    ]


def _levers(setup: PlanSetup, sp: int, tiled: bool, offload: bool) -> tuple[Lever, ...]:
    levers = []
    if not offload:
        levers.append(
            Lever(
                label="activation_checkpoint_cpu_offload",
                overrides=("activation_checkpoint_cpu_offload=true",),
            )
        )
    if not tiled:
        levers.append(Lever(label="tiled_mlp_compute", overrides=("tiled_mlp_compute=true",)))
    sizes = [n for n in range(setup.world, sp, -1) if setup.world % n == 0 and setup.shape.heads % n == 0]
    if sizes:
        levers.append(
            Lever(
                label=f"sequence_parallel_size {sizes[0]}", overrides=(f"sequence_parallel_size={sizes[0]}",)
            )
        )
    return tuple(levers)


def plan(setup: PlanSetup) -> PlanSetup:
    recipe = setup.recipe
    sp = int(getattr(recipe, "sequence_parallel_size", 1))
    tiled = bool(getattr(recipe, "tiled_mlp_compute", False))
    offload = bool(getattr(recipe, "activation_checkpoint_cpu_offload", False))
    changes: dict[str, object] = {"sequence_parallel": sp}
    if tiled:
        changes["mlp_tile_tokens"] = min(setup.shape.hidden, setup.micro_batch * -(-setup.sequence // sp))
    if offload:
        changes.update(checkpointing=True, checkpoint_offload=True)
    setup = attrs.evolve(setup, **changes)  # type: ignore[arg-type]
    extra = _ulysses_terms(setup) if sp > 1 else []
    return attrs.evolve(
        setup, extra=(*setup.extra, *extra), levers=(*setup.levers, *_levers(setup, sp, tiled, offload))
    )
