"""A decoder-only transformer's shape, read from its Hugging Face config, and its parameter count.

Counting from the config (never building weights): input embeddings V x H; output layer V x H
unless tied; per layer the attention (q: H x n_h d, k and v: H x n_kv d each, o: n_h d x H,
biases where the architecture has them), the gated MLP (gate, up: H x I, down: I x H) and two
RMSNorms (H each); one final norm (H). Tests check the count against `sum(p.numel())` of the
model transformers builds from the same config on the meta device.

Mixture-of-experts layers (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, gpt-oss; `MOE_KEYS`) replace the
MLP with a router (E x H) and E gated experts of width I_e (3 H I_e each), plus a shared expert
(3 H I_s, and its gate H) where the family has one. A token runs k of the E experts: its *active*
parameters (`active_parameters`) count k experts instead of E, which is what its FLOPs follow.
"""

from __future__ import annotations

from typing import Any

import attrs

_QKV_BIAS = ("qwen2", "qwen2_moe")
"""Architectures whose q/k/v projections have a bias though their config has no `attention_bias`."""


@attrs.frozen(kw_only=True)
class ModelShape:
    """The numbers the planner needs from a model's config."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    attention_extra: int = 0
    """Per-layer attention parameters beyond q/k/v/o: q/k norms (Qwen3, OLMoE), sinks (gpt-oss)."""
    experts: int = 0
    """Routed experts per MoE layer (0: a dense model)."""
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0
    """Width of the shared expert every token also runs (Qwen2-MoE), 0 when none."""
    moe_layers: int = 0
    """Layers whose MLP is the MoE block (the others are dense of width `intermediate`)."""
    expert_bias: bool = False

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        model_type = str(getattr(config, "model_type", ""))
        attention_bias = bool(getattr(config, "attention_bias", False))
        moe = moe_fields(config, model_type)
        return cls(
            model_type=model_type,
            hidden=hidden,
            layers=int(config.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
            intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            vocab=int(config.vocab_size),
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=attention_bias or model_type in _QKV_BIAS,
            o_bias=attention_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            **moe,
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def attention_params(self) -> int:
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return h * (q + 2 * kv) + q * h + bias + (h if self.o_bias else 0)

    def mlp_params(self) -> int:
        h, i = self.hidden, self.intermediate
        return 3 * h * i + ((2 * i + h) if self.mlp_bias else 0)

    def router_params(self) -> int:
        return self.experts * self.hidden + (self.experts if self.expert_bias else 0)

    def expert_params(self) -> int:
        """One routed expert (gate, up, down; biases for gpt-oss)."""
        h, i = self.hidden, self.expert_intermediate
        return 3 * h * i + ((2 * i + h) if self.expert_bias else 0)

    def shared_params(self) -> int:
        return 3 * self.hidden * self.shared_intermediate + (self.hidden if self.shared_intermediate else 0)

    def moe_params(self, experts: int) -> int:
        """An MoE block with `experts` experts counted: router, those experts, the shared expert."""
        return self.router_params() + experts * self.expert_params() + self.shared_params()

    def layer_params(self) -> int:
        """A dense layer (an MoE model's dense layers, if any, too)."""
        return self.attention_params() + self.mlp_params() + 2 * self.hidden + self.attention_extra

    def layers_params(self, experts: int | None = None) -> int:
        """Every decoder layer; MoE layers with `experts` experts each (None: all E)."""
        dense = self.layers - self.moe_layers
        per_moe = self.attention_params() + 2 * self.hidden + self.attention_extra
        per_moe += self.moe_params(self.experts if experts is None else experts)
        return dense * self.layer_params() + self.moe_layers * per_moe

    def largest_layer_params(self) -> int:
        """The largest decoder layer: an MoE layer with every expert (ZeRO-3 gathers its block whole)."""
        if not self.moe_layers:
            return self.layer_params()
        return (
            self.attention_params() + 2 * self.hidden + self.attention_extra + self.moe_params(self.experts)
        )

    @property
    def active_intermediate(self) -> int:
        """The MLP width one token runs through: k expert widths plus the shared one (MoE), else I."""
        if not self.experts:
            return self.intermediate
        return self.experts_per_token * self.expert_intermediate + self.shared_intermediate

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    def parameters(self) -> int:
        """Every parameter of the model (a tied output layer counted once)."""
        return self.embedding_params() + self.head_params() + self.layers_params() + self.hidden

    def active_parameters(self) -> int:
        """Parameters one token runs through: every expert layer with its k routed experts only."""
        return (
            self.embedding_params()
            + self.head_params()
            + self.layers_params(self.experts_per_token)
            + self.hidden
        )

    def expert_parameters(self) -> int:
        """The routed experts' parameters over every layer (what ZeRO shards like any other weight)."""
        return self.moe_layers * self.experts * self.expert_params()


MOE_KEYS = {
    "qwen3_moe": ("num_experts", "moe_intermediate_size"),
    "qwen2_moe": ("num_experts", "moe_intermediate_size"),
    "mixtral": ("num_local_experts", "intermediate_size"),
    "olmoe": ("num_experts", "intermediate_size"),
    "gpt_oss": ("num_local_experts", "intermediate_size"),
}
"""MoE families the count knows: config keys of (experts, expert width)."""


def moe_fields(config: Any, model_type: str) -> dict[str, Any]:
    """`ModelShape`'s MoE and q/k-norm fields from a transformers config (empty for a dense model)."""
    fields: dict[str, Any] = {}
    if model_type in ("qwen3", "qwen3_moe"):
        fields["attention_extra"] = 2 * int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
    if model_type == "olmoe":
        heads = int(config.num_attention_heads)
        head_dim = int(config.hidden_size) // heads
        fields["attention_extra"] = head_dim * (
            heads + int(getattr(config, "num_key_value_heads", None) or heads)
        )
    if model_type == "gpt_oss":
        fields["attention_extra"] = int(config.num_attention_heads)  # attention sinks
    if model_type not in MOE_KEYS:
        return fields
    count_key, width_key = MOE_KEYS[model_type]
    layers = int(config.num_hidden_layers)
    moe_layers = layers
    if model_type in ("qwen3_moe", "qwen2_moe"):
        step, dense = (
            int(getattr(config, "decoder_sparse_step", 1) or 1),
            set(getattr(config, "mlp_only_layers", []) or []),
        )
        moe_layers = sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return {
        **fields,
        "experts": int(getattr(config, count_key)),
        "experts_per_token": int(config.num_experts_per_tok),
        "expert_intermediate": int(getattr(config, width_key)),
        "shared_intermediate": int(getattr(config, "shared_expert_intermediate_size", 0) or 0),
        "moe_layers": moe_layers,
        "expert_bias": model_type == "gpt_oss",
    }


def active_parameters(config: Any) -> int:
    """Parameters a token runs through, from a transformers config: all of them for a dense model,
    the k routed experts (not all E) of each MoE layer for a mixture of experts. FLOPs per token
    follow this count (about 6 x active parameters per trained token)."""
    return ModelShape.from_hf_config(config).active_parameters()


LORA_TARGETS = {
    "q_proj": ("hidden", "q_dim"),
    "k_proj": ("hidden", "kv_dim"),
    "v_proj": ("hidden", "kv_dim"),
    "o_proj": ("q_dim", "hidden"),
    "gate_proj": ("hidden", "intermediate"),
    "up_proj": ("hidden", "intermediate"),
    "down_proj": ("intermediate", "hidden"),
}
"""The decoder's linear layers: (in features, out features) as `ModelShape` attribute names."""


def lora_parameters(shape: ModelShape, peft_config: dict[str, Any]) -> int:
    """Trainable parameters of LoRA adapters (r x (in + out) per targeted linear of every layer).

    `target_modules` as peft reads it: a list of module names, `"all-linear"` (every linear but the
    output layer), or unset (peft's default for Llama-style models: q_proj and v_proj).
    """
    rank = int(peft_config.get("r", 8))
    targets = peft_config.get("target_modules") or ["q_proj", "v_proj"]
    names = list(LORA_TARGETS) if targets == "all-linear" else [str(t) for t in targets]
    per_layer = 0
    for name in names:
        if name in LORA_TARGETS:
            fan_in, fan_out = (getattr(shape, attr) for attr in LORA_TARGETS[name])
            per_layer += rank * (int(fan_in) + int(fan_out))
    return per_layer * shape.layers + expert_lora_parameters(shape, peft_config)


EXPERT_TARGETS = {"gate_up_proj": ("hidden", 2), "down_proj": ("hidden", 1)}
"""An MoE layer's 3-D expert tensors [E, out, in] that `target_parameters` may name: peft adapts each
with lora_A (r·E x in) and lora_B (out x r·E), so r·E·(H + width x I_e) per layer."""


def expert_lora_parameters(shape: ModelShape, peft_config: dict[str, Any]) -> int:
    """Trainable parameters of LoRA on expert tensors (`target_parameters`, peft's ParamWrapper)."""
    rank = int(peft_config.get("r", 8))
    per_layer = 0
    for name in peft_config.get("target_parameters") or []:
        key = str(name).rsplit(".", 1)[-1]
        if shape.experts and key in EXPERT_TARGETS:
            widths = EXPERT_TARGETS[key][1]
            per_layer += rank * shape.experts * (shape.hidden + widths * shape.expert_intermediate)
    return per_layer * shape.moe_layers
