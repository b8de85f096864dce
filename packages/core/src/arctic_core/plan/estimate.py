"""Per-device memory of one training step, term by term, from the model's shape and the recipe's settings.

Every term belongs to one or more *phases* of a step; a term in `always` lives for the whole step.
The peak is `always + max(phase)` over the five phases (then allocator fragmentation and the fixed
cost of the CUDA context and NCCL on top, on a GPU):

- forward:          stored activations + the loss's buffers (the fused loss forms the gradients of the
                    output layer and of the final hidden states in its forward pass)
- backward (start): stored activations + one layer recomputed + gradients in flight + output-layer gradient
- backward (attention): the same, once the layer's MLP part is freed, with the attention's backward buffers
- backward (end):   every local gradient + one layer recomputed + gradients in flight
- step:             every local gradient + optimizer-step buffers

Gradients grow while stored activations shrink during the backward pass, and their sum is linear in the
layer reached, so its maximum is at one end: hence the two backward phases. `docs/plan.md` gives every
formula and where the numbers come from.
"""

from __future__ import annotations

from typing import Any

import attrs

ALWAYS = "always"
FORWARD = "forward"
BACKWARD_START = "backward (start)"
BACKWARD_ATTENTION = "backward (attention)"
BACKWARD_END = "backward (end)"
STEP = "step"
PHASES = (FORWARD, BACKWARD_START, BACKWARD_ATTENTION, BACKWARD_END, STEP)
BACKWARD = (BACKWARD_START, BACKWARD_ATTENTION, BACKWARD_END)

GIB = 2**30
CUDA_CONTEXT = int(0.6 * GIB)
"""CUDA context, PyTorch's kernels and cuBLAS workspaces per process (rule of thumb: 0.5-0.7 GiB on
Hopper with lazy module loading, as `nvidia-smi` shows for a process that allocated nothing)."""
NCCL_ONE_RANK = int(0.25 * GIB)
NCCL_PER_PROCESS = int(1.0 * GIB)
"""NCCL communicators and their buffers (one rank still creates one; several ranks, several groups)."""
FRAGMENTATION = 0.05
"""Share of the allocated peak the caching allocator holds in fragments (PyTorch's docs; 5% is typical
with `expandable_segments:True`, which ALST's recipes set, and can reach 10-20% without it)."""

DEEPSPEED_DEFAULTS = {
    "reduce_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
}
"""DeepSpeed's defaults (elements) for the ZeRO buffers the estimate counts."""


@attrs.frozen(kw_only=True)
class Term:
    """One line of the estimate: `bytes` on each device, alive in `phases`."""

    name: str
    bytes: int
    phases: tuple[str, ...] = (ALWAYS,)
    note: str = ""
    source: str = "core"


@attrs.frozen(kw_only=True)
class Lever:
    """A recipe change the planner may suggest: a label and the `--set` overrides that make it."""

    label: str
    overrides: tuple[str, ...]


@attrs.frozen(kw_only=True)
class PlanSetup:
    """What the estimate knows about one run; methods and features adjust it (`Method.plan`, `Feature.plan`)."""

    shape: Any  # arctic_core.plan.shape.ModelShape
    recipe: Any = None  # the TrainerConfig the setup was made from
    dtype: str = "bf16"
    world: int = 1
    sequence_parallel: int = 1
    micro_batch: int = 1
    sequence: int = 2048
    sequences_per_sample: int = 1  # DPO: chosen + rejected
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    optimizer: str = "adamw"
    checkpointing: bool = False
    checkpointing_why: str = ""  # why checkpointing is on or off (the recipe, or the automatic choice)
    checkpoint_offload: bool = False  # checkpointed layer inputs kept in host memory
    mlp_tile_tokens: int | None = None  # tiled MLP: tokens per tile (None: not tiled)
    attention: str = "sdpa"
    parameters: int = 0  # every parameter of the trained model
    trainable: int = 0  # those that train (LoRA: the adapters)
    frozen_parameters: int = 0  # frozen companion models (DPO's reference, a speculator's base model)
    grad_layers: int | None = None  # decoder layers that keep activations for backward (None: all)
    loss: str = "fused"  # core's losses: fused (chunked CE), log_probs (chunked, checkpointed), full_logits
    # ([tokens, vocab] logits, transformers' own loss), or none (the method adds its loss's terms)
    chunk_size: int = 4096
    deepspeed: dict[str, Any] = attrs.field(factory=dict)
    device_overheads: bool = True  # CUDA context, NCCL and fragmentation (False: CPU)
    extra: tuple[Term, ...] = ()  # terms methods and features add
    levers: tuple[Lever, ...] = ()  # recipe changes the planner may try
    notes: tuple[str, ...] = ()

    @property
    def weight_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else 2

    @property
    def local_tokens(self) -> int:
        """Tokens one rank holds in one micro-batch (a sequence split over the sequence-parallel group)."""
        per_sequence = -(-self.sequence // self.sequence_parallel)
        return self.micro_batch * self.sequences_per_sample * per_sequence

    def zero(self, key: str) -> int:
        return int(float(self.deepspeed.get("zero_optimization", {}).get(key, DEEPSPEED_DEFAULTS[key])))


@attrs.frozen(kw_only=True)
class Estimate:
    """The terms and the peak per device."""

    setup: PlanSetup
    terms: tuple[Term, ...]
    peak: int
    peak_phase: str

    def phase_total(self, phase: str) -> int:
        return sum(t.bytes for t in self.terms if phase in t.phases)


# --- activations ---------------------------------------------------------------------------------


def attention_block_bytes(setup: PlanSetup) -> int:
    """Bytes the input norm and the attention of one decoder layer save for backward, per token.

    RMSNorm: its input upcast to fp32 (4 B; the input itself in fp32), the normalised value and the
    output (w each). Attention: rotated q and k, v (kv heads; repeated to all heads under eager), the
    output, under sdpa/eager the contiguous copy o_proj gets, the log-sum-exp (4 B per head); eager
    also keeps the probabilities (heads x sequence, fp32 and w).
    """
    s, w = setup.shape, setup.weight_bytes
    kv = s.q_dim if setup.attention == "eager" else s.kv_dim
    attention = w * (2 * s.q_dim + 2 * kv) + 4 * s.heads
    if setup.attention in ("sdpa", "eager"):
        attention += w * s.q_dim
    if setup.attention == "eager":
        attention += s.heads * setup.sequence * (4 + w)
    return (4 + 2 * w) * s.hidden + attention


def mlp_block_bytes(setup: PlanSetup) -> int:
    """The post-attention norm and the gated MLP (gate, its activation, up, their product; none when tiled).

    An MoE layer (averaged over the layers): the same for each of the token's k experts (and the shared
    one), plus its router's logits and fp32 probabilities (E each) and the k copies of its hidden state
    the experts gather (`moe_router_bytes`).
    """
    s, w = setup.shape, setup.weight_bytes
    mlp = 0 if setup.mlp_tile_tokens is not None else 4 * w * s.active_intermediate
    return (4 + 2 * w) * s.hidden + mlp + moe_router_bytes(setup)


def moe_router_bytes(setup: PlanSetup) -> int:
    """Per token, averaged over the layers: an MoE layer's router logits (w), probabilities (fp32) and the
    k gathered copies of the hidden state its experts save (0 for a dense model)."""
    s, w = setup.shape, setup.weight_bytes
    if not s.experts:
        return 0
    return s.moe_layers * ((w + 4) * s.experts + w * s.experts_per_token * s.hidden) // s.layers


def layer_activation_bytes(setup: PlanSetup) -> int:
    """Bytes one decoder layer (a Llama-shaped block) saves for its backward pass, per token."""
    return attention_block_bytes(setup) + mlp_block_bytes(setup)


def no_grad_layer_bytes(setup: PlanSetup, shape: Any = None) -> int:
    """Per token, the most a decoder layer holds at once in a forward without grad (a frozen model's pass):
    its input, the norm's fp32 copy, q, k and v, the attention output, and the MLP's gate, up and activation."""
    s, w = shape or setup.shape, setup.weight_bytes
    return w * s.hidden + 4 * s.hidden + w * (2 * s.q_dim + 2 * s.kv_dim) + 3 * w * s.active_intermediate


def attention_workspace_bytes(setup: PlanSetup) -> int:
    """Per token, what the attention's backward allocates: dq, dk, dv; FlashAttention-2 also an fp32 dq
    accumulator and, with fewer KV heads than heads, dk and dv at every head before summing them."""
    s, w = setup.shape, setup.weight_bytes
    grads = w * (s.q_dim + 2 * s.kv_dim) + 4 * s.heads
    if setup.attention.startswith("flash"):
        grads += 4 * s.q_dim + (2 * w * s.q_dim if s.kv_heads < s.heads else 0)
    if setup.attention == "eager":
        grads += s.heads * setup.sequence * 4
    return grads


def activation_terms(setup: PlanSetup) -> list[Term]:
    w, tokens = setup.weight_bytes, setup.local_tokens
    s = setup.shape if setup.grad_layers is None else attrs.evolve(setup.shape, layers=setup.grad_layers)
    stored_phases = (FORWARD, BACKWARD_START, BACKWARD_ATTENTION)
    inputs = tokens * (3 * 8 + 2 * s.head_dim * w)  # ids, positions, labels; rotary cos and sin
    terms = [
        Term(name="inputs and rotary tables", bytes=inputs, phases=(FORWARD, *BACKWARD)),
    ]
    if s.layers == 0:  # no decoder layer keeps activations (a method counts its own)
        return terms
    # the final norm's backward runs (and frees what it saved) before any layer's
    terms.append(Term(name="final norm (stored)", bytes=tokens * (4 + 2 * w) * s.hidden, phases=(FORWARD,)))
    if not setup.checkpointing:
        total = s.layers * tokens * layer_activation_bytes(setup)
        note = f"{s.layers} layers x {tokens:,} tokens x {layer_activation_bytes(setup):,} B"
        terms.append(Term(name="activations (stored)", bytes=total, phases=stored_phases, note=note))
        last = tokens * layer_activation_bytes(setup)  # the first layer's, freed only by its own backward
        terms.append(
            Term(name="activations (layer in backward)", bytes=last, phases=(BACKWARD_END,), note="one layer")
        )
    else:
        kept = 0 if setup.checkpoint_offload else s.layers * tokens * s.hidden * w
        where = "in host memory" if setup.checkpoint_offload else f"{s.layers} layer inputs"
        terms.append(Term(name="activation checkpoints", bytes=kept, phases=stored_phases, note=where))
        if setup.checkpoint_offload:
            back = tokens * s.hidden * w
            terms.append(
                Term(name="checkpoint back from host", bytes=back, phases=BACKWARD, note="one layer input")
            )
        attention, mlp = attention_block_bytes(setup), mlp_block_bytes(setup)
        note = f"{tokens:,} tokens x {attention:,} B"
        terms.append(
            Term(name="recomputed: norm + attention", bytes=tokens * attention, phases=BACKWARD, note=note)
        )
        phases = (BACKWARD_START, BACKWARD_END)  # freed by the time the attention's backward runs
        note = f"{tokens:,} tokens x {mlp:,} B"
        terms.append(Term(name="recomputed: norm + MLP", bytes=tokens * mlp, phases=phases, note=note))
    workspace = tokens * attention_workspace_bytes(setup)
    terms.append(
        Term(name="attention backward", bytes=workspace, phases=(BACKWARD_ATTENTION,), note=setup.attention)
    )
    # wrt the layer's output and the residual stream; the MLP's own gradients take the place of the
    # saved tensors its backward frees (measured: adding them overestimates the peak)
    grads = 2 * tokens * s.hidden * w
    terms.append(
        Term(name="hidden-state gradients", bytes=grads, phases=BACKWARD, note="output and residual")
    )
    if setup.mlp_tile_tokens is not None:
        tile = tokens * s.hidden * w + setup.mlp_tile_tokens * 6 * s.intermediate * w
        note = f"input gradient + one {setup.mlp_tile_tokens:,}-token tile"
        terms.append(
            Term(name="tiled MLP backward", bytes=tile, phases=(BACKWARD_START, BACKWARD_END), note=note)
        )
    return terms


def loss_terms(setup: PlanSetup) -> list[Term]:
    s, w, rows = setup.shape, setup.weight_bytes, setup.local_tokens
    if setup.loss == "none":
        return []
    if setup.loss == "full_logits":
        logits = rows * s.vocab * (w + 3 * 4)
        note = "[tokens, vocab]: logits, fp32 copy, log-softmax and its gradient"
        return [Term(name="loss (full logits)", bytes=logits, phases=(FORWARD, BACKWARD_START), note=note)]
    if setup.loss == "log_probs":  # core's token_log_probs with grad: checkpointed chunks
        chunk = min(setup.chunk_size, rows) * s.vocab * (w + 3 * 4)
        note = f"chunked log-probs: rows kept, one {setup.chunk_size}-row chunk recomputed"
        return [
            Term(name="loss (log-probs, rows)", bytes=rows * s.hidden * w, phases=(FORWARD, BACKWARD_START)),
            Term(
                name="loss (log-probs, chunk)",
                bytes=chunk + rows * s.hidden * w,
                phases=(BACKWARD_START,),
                note=note,
            ),
        ]
    head_grad = s.vocab * s.hidden * (4 + (w if w != 4 else 0))
    chunk = min(setup.chunk_size, rows) * s.vocab * (4 + (2 * w if w != 4 else 0))  # fp32; w in and out
    hidden = 2 * rows * s.hidden * w  # trained rows gathered, and their gradient
    note = f"fused chunked CE: output-layer gradient (fp32), {setup.chunk_size}-row logits chunks"
    return [
        Term(name="loss (fused, chunked)", bytes=head_grad + chunk + hidden, phases=(FORWARD,), note=note)
    ]


# --- training state --------------------------------------------------------------------------------


def state_terms(setup: PlanSetup) -> list[Term]:
    w, stage, world = setup.weight_bytes, setup.zero_stage, setup.world
    shard3 = world if stage >= 3 else 1
    params = 0 if (stage >= 3 and setup.offload_param) else setup.parameters * w // shard3
    frozen = 0 if (stage >= 3 and setup.offload_param) else setup.frozen_parameters * w // shard3
    master = w != 4 or stage >= 1  # DeepSpeed's ZeRO optimizers copy the partition to fp32 even from fp32
    per_param = 8 + (4 if master else 0)
    optimizer = 0 if setup.offload_optimizer else setup.trainable * per_param // (world if stage >= 1 else 1)
    where = (
        "host memory (offloaded)" if setup.offload_optimizer else f"Adam {'+ fp32 master ' if master else ''}"
    )
    terms = [
        Term(
            name="parameters",
            bytes=params,
            note=f"{setup.parameters:,} x {w} B" + (f" / {world}" if shard3 > 1 else ""),
        ),
        Term(name="optimizer state", bytes=optimizer, note=where.strip()),
    ]
    if setup.frozen_parameters:
        terms.append(Term(name="frozen models", bytes=frozen, note=f"{setup.frozen_parameters:,} x {w} B"))
    terms += gradient_terms(setup)
    return terms


def gradient_terms(setup: PlanSetup) -> list[Term]:
    """ZeRO-2/3: a partition of the gradients (kept all step); ZeRO-0/1: every gradient, from the backward on."""
    w, stage, world, trainable = setup.weight_bytes, setup.zero_stage, setup.world, setup.trainable
    head = min(setup.shape.vocab * setup.shape.hidden, trainable) * w
    if stage >= 2:
        local = 0 if setup.offload_optimizer else trainable * w // world
        terms = [Term(name="gradients (partition)", bytes=local, note=f"1/{world} of {trainable:,}")]
    else:
        every = f"{trainable:,} x {w} B"
        terms = [
            Term(name="gradients", bytes=trainable * w, phases=(BACKWARD_END, STEP), note=every),
            Term(
                name="gradients (output layer)",
                bytes=head,
                phases=(BACKWARD_START,),
                note="formed by the loss",
            ),
        ]
    if (w != 4 or stage >= 1) and not setup.offload_optimizer:  # the fp32 step's gradients
        shards = world if stage >= 1 else 1
        phases = (ALWAYS,) if stage == 0 else (STEP,)
        note = "bf16 optimizer's accumulator" if stage == 0 else "partition, for the fp32 step"
        terms.append(Term(name="fp32 gradients", bytes=trainable * 4 // shards, phases=phases, note=note))
    return terms


def zero_buffer_terms(setup: PlanSetup) -> list[Term]:
    """ZeRO's gradient reduce bucket (allocated whole, whatever the model's size), ZeRO-3's gathered parameters."""
    s, w, stage = setup.shape, setup.weight_bytes, setup.zero_stage
    terms: list[Term] = []
    if stage >= 1 and setup.trainable:
        zero = setup.deepspeed.get("zero_optimization", {})
        double = 2 if stage < 3 and zero.get("overlap_comm", False) else 1
        element = 4 if stage == 1 else w  # ZeRO-1 stages an fp32 accumulator
        size = setup.zero("reduce_bucket_size")
        note = f"reduce_bucket_size {size:,}" + (" x 2 (overlap_comm)" if double > 1 else "")
        terms.append(Term(name="ZeRO reduce bucket", bytes=size * element * double, note=note))
    if stage >= 3:
        layer = s.largest_layer_params()  # an MoE layer with all its experts: its block is a ZeRO-3 leaf
        gathered = (layer + min(layer, setup.zero("stage3_prefetch_bucket_size"))) * w
        note = "current + prefetched" + (" (every expert of a layer)" if s.experts else "")
        terms.append(Term(name="ZeRO-3 gathered layers", bytes=gathered, phases=PHASES[:3], note=note))
        head = s.vocab * s.hidden * w
        terms.append(
            Term(name="ZeRO-3 gathered output layer", bytes=head, phases=(FORWARD,), note="for the loss")
        )
    return terms


# --- the estimate ------------------------------------------------------------------------------------


def fixed_costs(world: int) -> int:
    """What a GPU process holds outside PyTorch's tensors: the CUDA context and NCCL's communicators."""
    return CUDA_CONTEXT + (NCCL_PER_PROCESS if world > 1 else NCCL_ONE_RANK)


def estimate(setup: PlanSetup) -> Estimate:
    """Every term of `setup` and the peak per device."""
    terms = state_terms(setup) + zero_buffer_terms(setup) + activation_terms(setup) + loss_terms(setup)
    terms += list(setup.extra)
    always = sum(t.bytes for t in terms if ALWAYS in t.phases)
    totals = {phase: sum(t.bytes for t in terms if phase in t.phases) for phase in PHASES}
    phase = max(PHASES, key=lambda p: totals[p])
    peak = always + totals[phase]
    if setup.device_overheads:
        fragmentation = int(FRAGMENTATION * peak)
        terms += [
            Term(
                name="allocator fragmentation", bytes=fragmentation, note=f"{FRAGMENTATION:.0%} of the peak"
            ),
            Term(name="CUDA context + NCCL", bytes=fixed_costs(setup.world), note="fixed per process"),
        ]
        peak += fragmentation + fixed_costs(setup.world)
    return Estimate(setup=setup, terms=tuple(terms), peak=peak, peak_phase=phase)
