"""SwiftKV (arXiv 2410.03960) for Llama and Qwen2, as real `PreTrainedModel`s, with a prefill that skips layers.

With L layers, `num_key_value_layers` = L_kv and `key_value_group_size` = G, the SwiftKV forward is:

1. layers 0..L_kv-1 run unchanged; h is the input of layer L_kv, and h' = norm_swiftkv(h);
2. every later layer j takes its keys and values from h' alone (SingleInputKV): the layers of one
   group of G consecutive layers share the projections `k_proj_swiftkv`/`v_proj_swiftkv` of the group's
   first layer o = L_kv + G·⌊(j - L_kv)/G⌋ (AcrossKV), with RoPE applied as usual;
3. its queries come from its own input through `q_proj_swiftkv`; o_proj, MLP and norms are unchanged.

With `config.swiftkv` off, the network is exactly the base model (the new parameters are unused).

**The prefill skip.** Keys and values of layers ≥ L_kv depend on h' only, so for a prompt run with a
KV cache where only the last position's logits are wanted (`logits_to_keep = 1`, as `generate()`
asks), the prompt runs layers 0..L_kv-1, the caches of the later groups are filled from h', and only
the last position continues through layers L_kv..L-1. Every other prompt position never enters the
last L - L_kv layers: that is the saving, realised here in plain transformers. Decode steps (one
token) run every layer. The cache keeps one entry per group (at layer o): with G > 1 the other layers
of a group store nothing, so KV memory falls as AcrossKV promises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama as llama
from transformers.models.qwen2 import modeling_qwen2 as qwen2

from arctic_swiftkv.configuration import LlamaSwiftKVConfig, Qwen2SwiftKVConfig


def kv_owner(config: Any, layer_idx: int) -> int:
    """The first layer of `layer_idx`'s AcrossKV group (the one holding its k/v projections and cache)."""
    offset = layer_idx - config.num_key_value_layers
    return config.num_key_value_layers + config.key_value_group_size * (offset // config.key_value_group_size)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on `[B, heads, T, D]` with cos/sin `[B, T, D]` (the same formula Llama and Qwen2 use)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def add_swiftkv_projections(attn: nn.Module, config: Any, layer_idx: int, bias: bool) -> None:
    """`q_proj_swiftkv` on every layer ≥ L_kv; `k_proj_swiftkv`/`v_proj_swiftkv` on each group's first layer."""
    if layer_idx < config.num_key_value_layers:
        return
    hidden, head_dim = config.hidden_size, attn.head_dim
    attn.q_proj_swiftkv = nn.Linear(hidden, config.num_attention_heads * head_dim, bias=bias)
    if kv_owner(config, layer_idx) == layer_idx:
        attn.k_proj_swiftkv = nn.Linear(hidden, config.num_key_value_heads * head_dim, bias=bias)
        attn.v_proj_swiftkv = nn.Linear(hidden, config.num_key_value_heads * head_dim, bias=bias)


class SwiftKVAttentionMixin:
    """Attention that, given `swiftkv_kv`, takes keys/values from it and queries from `q_proj_swiftkv`."""

    def forward(  # type: ignore[no-untyped-def]
        self,
        hidden_states,
        position_embeddings=None,
        attention_mask=None,
        cache=None,
        swiftkv_kv=None,
        **kwargs,
    ):
        if swiftkv_kv is None:
            return super().forward(  # type: ignore[misc]
                hidden_states, position_embeddings, attention_mask, cache=cache, **kwargs
            )
        attn: Any = self
        shape = (*hidden_states.shape[:-1], -1, attn.head_dim)
        query = attn.q_proj_swiftkv(hidden_states).view(shape).transpose(1, 2)
        query = apply_rope(query, *position_embeddings)
        key, value = swiftkv_kv
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            attn.config._attn_implementation, llama.eager_attention_forward
        )
        extra = {"sliding_window": attn.sliding_window} if getattr(attn, "sliding_window", None) else {}
        out, weights = interface(
            attn,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not attn.training else attn.attention_dropout,
            scaling=attn.scaling,
            **extra,
            **kwargs,
        )
        return attn.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


class LlamaSwiftKVAttention(SwiftKVAttentionMixin, llama.LlamaAttention):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__(config, layer_idx)
        add_swiftkv_projections(self, config, layer_idx, bias=config.attention_bias)


class Qwen2SwiftKVAttention(SwiftKVAttentionMixin, qwen2.Qwen2Attention):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__(config, layer_idx)
        add_swiftkv_projections(self, config, layer_idx, bias=True)


class SwiftKVDecoderLayer(GradientCheckpointingLayer):
    """A pre-norm decoder layer (same parameter names as Llama's/Qwen2's) that passes `swiftkv_kv` on."""

    attention_class: Any = None
    mlp_class: Any = None
    norm_class: Any = None

    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = self.attention_class(config=config, layer_idx=layer_idx)
        self.mlp = self.mlp_class(config)
        self.input_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)

    def forward(  # type: ignore[no-untyped-def]
        self,
        hidden_states,
        attention_mask=None,
        position_embeddings=None,
        cache=None,
        swiftkv_kv=None,
        **kwargs,
    ):
        kwargs.pop("use_cache", None)
        kwargs.pop("position_ids", None)
        attended, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            swiftkv_kv=swiftkv_kv,
            **kwargs,
        )
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class LlamaSwiftKVDecoderLayer(SwiftKVDecoderLayer):
    attention_class, mlp_class, norm_class = LlamaSwiftKVAttention, llama.LlamaMLP, llama.LlamaRMSNorm


class Qwen2SwiftKVDecoderLayer(SwiftKVDecoderLayer):
    attention_class, mlp_class, norm_class = Qwen2SwiftKVAttention, qwen2.Qwen2MLP, qwen2.Qwen2RMSNorm


def _last_query(mask: Any) -> Any:
    """The attention mask of the last query position only (4-D masks sliced; None and 2-D ones kept)."""
    if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
        return mask
    return mask[:, :, -1:, :]


def _sliceable(mask: Any) -> bool:
    return mask is None or (isinstance(mask, torch.Tensor) and mask.dim() in (2, 4))


class SwiftKVBackbone:
    """The decoder stack's forward (mixed into the Llama/Qwen2 backbones): steps 1-3 and the prefill skip."""

    def _init_stack(self, config: Any, layer_class: Any, norm_class: Any, rotary_class: Any) -> None:
        module: Any = self
        module.padding_idx = config.pad_token_id
        module.vocab_size = config.vocab_size
        module.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, module.padding_idx)
        module.layers = nn.ModuleList([layer_class(config, i) for i in range(config.num_hidden_layers)])
        module.norm = norm_class(config.hidden_size, eps=config.rms_norm_eps)
        module.norm_swiftkv = norm_class(config.hidden_size, eps=config.rms_norm_eps)
        module.rotary_emb = rotary_class(config=config)
        module.gradient_checkpointing = False

    def _masks(
        self, embeds: torch.Tensor, attention_mask: Any, cache: Any, position_ids: Any
    ) -> dict[str, Any]:
        config: Any = self.config  # type: ignore[attr-defined]
        common = {
            "config": config,
            "inputs_embeds": embeds,
            "attention_mask": attention_mask,
            "cache": cache,
            "position_ids": position_ids,
        }
        masks = {"full_attention": create_causal_mask(**common)}
        if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**common)
        return masks

    def _swiftkv_kv(
        self, layer_idx: int, h_kv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (with RoPE) and values of layer `layer_idx`'s group from h', appended to its cache entry."""
        attn: Any = self.layers[layer_idx].self_attn  # type: ignore[attr-defined]
        shape = (*h_kv.shape[:-1], -1, attn.head_dim)
        key = apply_rope(attn.k_proj_swiftkv(h_kv).view(shape).transpose(1, 2), *rope)
        value = attn.v_proj_swiftkv(h_kv).view(shape).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, layer_idx)
        return key, value

    def forward(  # type: ignore[no-untyped-def]
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        swiftkv_keep=0,
        past_key_values=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`swiftkv_keep = 1` (with a cache, SwiftKV on): only the last position runs layers ≥ L_kv."""
        config: Any = self.config  # type: ignore[attr-defined]
        module: Any = self
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        use_cache = config.use_cache if use_cache is None else use_cache
        embeds = module.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        if position_ids is None:
            seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(embeds.shape[1], device=embeds.device) + seen).unsqueeze(0)
        masks = self._masks(embeds, attention_mask, cache, position_ids)
        rope = module.rotary_emb(embeds, position_ids=position_ids)
        types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        n_kv, swift = config.num_key_value_layers, bool(config.swiftkv)
        skip = (
            swift
            and cache is not None
            and swiftkv_keep == 1
            and embeds.shape[1] > 1
            and all(_sliceable(m) for m in masks.values())
        )
        hidden, states = embeds, []
        h_kv, kv, q_rope, q_masks = None, None, rope, masks
        for i, layer in enumerate(module.layers):
            if output_hidden_states:
                states.append(hidden)
            if not swift or i < n_kv:
                hidden = layer(
                    hidden, attention_mask=masks[types[i]], position_embeddings=rope, cache=cache, **kwargs
                )
                continue
            if i == n_kv:
                h_kv = module.norm_swiftkv(hidden)
                if skip:
                    hidden = hidden[:, -1:]
                    q_rope = (rope[0][:, -1:], rope[1][:, -1:])
                    q_masks = {name: _last_query(m) for name, m in masks.items()}
            if kv_owner(config, i) == i:
                kv = self._swiftkv_kv(i, h_kv, rope, cache)  # type: ignore[arg-type]
            hidden = layer(
                hidden, attention_mask=q_masks[types[i]], position_embeddings=q_rope, swiftkv_kv=kv, **kwargs
            )
        hidden = module.norm(hidden)
        if output_hidden_states:
            states.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=tuple(states) if output_hidden_states else None,
        )


class SwiftKVCausalLM:
    """The causal-LM head over a SwiftKV backbone; `swiftkv(on)` switches the student path on or off."""

    def swiftkv(self, on: bool = True) -> SwiftKVCausalLM:
        self.config.swiftkv = on  # type: ignore[attr-defined]
        return self

    def forward(  # type: ignore[no-untyped-def]
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        past_key_values=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        module: Any = self
        out = module.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            swiftkv_keep=logits_to_keep if isinstance(logits_to_keep, int) else 0,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = module.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = module.loss_function(logits=logits, labels=labels, vocab_size=module.config.vocab_size)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states
        )


class LlamaSwiftKVModel(SwiftKVBackbone, llama.LlamaPreTrainedModel):
    config_class = LlamaSwiftKVConfig
    _no_split_modules = ["LlamaSwiftKVDecoderLayer"]
    _can_record_outputs: dict[str, Any] = {}

    def __init__(self, config: LlamaSwiftKVConfig):
        super().__init__(config)
        self._init_stack(config, LlamaSwiftKVDecoderLayer, llama.LlamaRMSNorm, llama.LlamaRotaryEmbedding)
        self.post_init()


class Qwen2SwiftKVModel(SwiftKVBackbone, qwen2.Qwen2PreTrainedModel):
    config_class = Qwen2SwiftKVConfig
    _no_split_modules = ["Qwen2SwiftKVDecoderLayer"]
    _can_record_outputs: dict[str, Any] = {}

    def __init__(self, config: Qwen2SwiftKVConfig):
        super().__init__(config)
        self._init_stack(config, Qwen2SwiftKVDecoderLayer, qwen2.Qwen2RMSNorm, qwen2.Qwen2RotaryEmbedding)
        self.post_init()


class LlamaSwiftKVForCausalLM(SwiftKVCausalLM, llama.LlamaPreTrainedModel, GenerationMixin):
    config_class = LlamaSwiftKVConfig
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _can_record_outputs: dict[str, Any] = {}

    def __init__(self, config: LlamaSwiftKVConfig):
        super().__init__(config)
        self.model = LlamaSwiftKVModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class Qwen2SwiftKVForCausalLM(SwiftKVCausalLM, qwen2.Qwen2PreTrainedModel, GenerationMixin):
    config_class = Qwen2SwiftKVConfig
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _can_record_outputs: dict[str, Any] = {}

    def __init__(self, config: Qwen2SwiftKVConfig):
        super().__init__(config)
        self.model = Qwen2SwiftKVModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


MODEL_CLASSES: dict[str, tuple[Any, Any, Any]] = {
    "llama_swiftkv": (LlamaSwiftKVConfig, LlamaSwiftKVModel, LlamaSwiftKVForCausalLM),
    "qwen2_swiftkv": (Qwen2SwiftKVConfig, Qwen2SwiftKVModel, Qwen2SwiftKVForCausalLM),
}


def register() -> None:
    """Register the SwiftKV configs and models with AutoConfig, AutoModel and AutoModelForCausalLM (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    for model_type, (config_class, model_class, lm_class) in MODEL_CLASSES.items():
        AutoConfig.register(model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, lm_class, exist_ok=True)


__all__ = [
    "LlamaSwiftKVForCausalLM",
    "LlamaSwiftKVModel",
    "Qwen2SwiftKVForCausalLM",
    "Qwen2SwiftKVModel",
    "kv_owner",
    "register",
]
