"""A decoder-only transformer's shape, read from its Hugging Face config, and its parameter count.

Counting from the config (never building weights): input embeddings V x H; output layer V x H
unless tied; per layer the attention (q: H x n_h d, k and v: H x n_kv d each, o: n_h d x H,
biases where the architecture has them), the gated MLP (gate, up: H x I, down: I x H) and two
RMSNorms (H each); one final norm (H). Tests check the count against `sum(p.numel())` of the
model transformers builds from the same config on the meta device.
"""

from __future__ import annotations

from typing import Any

import attrs

_QKV_BIAS = ("qwen2",)
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

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        model_type = str(getattr(config, "model_type", ""))
        attention_bias = bool(getattr(config, "attention_bias", False))
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

    def layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + 2 * self.hidden

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    def parameters(self) -> int:
        """Every parameter of the model (a tied output layer counted once)."""
        return self.embedding_params() + self.head_params() + self.layers * self.layer_params() + self.hidden


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
    return per_layer * shape.layers
