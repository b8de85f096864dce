"""`arctic verify --shrink`: the recipe's architecture at a toy size, with random weights.

The model's config is read (transformers `AutoConfig`, from `model.name_or_path`), and the
fields of its shape that exist in it are made small: 2 layers (or the fewest the method allows,
`Trainer.shrink_layers`, when that is more), width 64, MLP 256, 4 heads (key
and value heads 4 when the model has as many as query heads, else 2), head size 16. The change is
applied through the recipe's own `model.hf_config_kwargs` with `model.from_config = true`, so
every variant builds the same seeded random network and nothing is written to disk. The
vocabulary, tokenizer and data stay the recipe's.
"""

from __future__ import annotations

from typing import Any

from arctic_core.errors import RecipeError

LAYERS, WIDTH, MLP, HEADS, HEAD_DIM = 2, 64, 256, 4, 16
EXPERTS, EXPERTS_PER_TOKEN = 8, 2

LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")
FIELDS: dict[str, int] = {
    # Llama / Qwen2 / Mistral / Gemma names
    "num_hidden_layers": LAYERS,
    "hidden_size": WIDTH,
    "intermediate_size": MLP,
    "num_attention_heads": HEADS,
    # GPT-2 / GPT-J / OPT / T5-style names
    "n_layer": LAYERS,
    "num_layers": LAYERS,
    "n_embd": WIDTH,
    "d_model": WIDTH,
    "n_inner": MLP,
    "ffn_dim": MLP,
    "n_head": HEADS,
    # mixture-of-experts names (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, gpt-oss): 8 experts, 2 per token
    "num_experts": EXPERTS,
    "num_local_experts": EXPERTS,
    "num_experts_per_tok": EXPERTS_PER_TOKEN,
    "moe_intermediate_size": MLP // 4,
    "shared_expert_intermediate_size": MLP // 4,
}


def shrink_kwargs(hf_config: Any, *, layers: int = LAYERS) -> dict[str, Any]:
    """The `hf_config_kwargs` that shrink `hf_config` (a transformers config) to a toy size."""
    kwargs: dict[str, Any] = {
        key: layers if key in LAYER_FIELDS else value
        for key, value in FIELDS.items()
        if isinstance(getattr(hf_config, key, None), int)
    }
    if not any(key in kwargs for key in ("hidden_size", "n_embd", "d_model")):
        raise RecipeError(
            f"--shrink does not know the shape fields of model_type {getattr(hf_config, 'model_type', '?')!r}; "
            "run without --shrink",
            path="model.name_or_path",
        )
    kv = getattr(hf_config, "num_key_value_heads", None)
    heads = getattr(hf_config, "num_attention_heads", None)
    if isinstance(kv, int):
        kwargs["num_key_value_heads"] = HEADS if kv == heads else HEADS // 2
    if isinstance(getattr(hf_config, "head_dim", None), int):
        kwargs["head_dim"] = HEAD_DIM
    layer_types = getattr(hf_config, "layer_types", None)
    if isinstance(layer_types, list) and layer_types:
        kwargs["layer_types"] = list(layer_types[:layers])
    if isinstance(getattr(hf_config, "mlp_only_layers", None), list):  # Qwen MoE: every layer sparse
        kwargs["mlp_only_layers"] = []
    if isinstance(getattr(hf_config, "max_window_layers", None), int):
        kwargs["max_window_layers"] = min(hf_config.max_window_layers, layers)
    return kwargs


def load_shrink_kwargs(model: Any, *, layers: int = LAYERS) -> dict[str, Any]:
    """`shrink_kwargs` of the recipe's `[model]` (a `ModelConfig`), with at least `layers` layers."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(
            model.name_or_path, trust_remote_code=model.trust_remote_code, revision=model.revision
        )
    except (OSError, ValueError) as exc:
        raise RecipeError(
            f"--shrink cannot read the model's config: {exc}", path="model.name_or_path"
        ) from None
    return shrink_kwargs(hf_config, layers=max(LAYERS, layers))


def apply_shrink(raw: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Shrink `[model]` (and `[ref_model]` when the recipe has one) of a recipe dict."""
    for table in ("model", "ref_model"):
        section = raw.get(table)
        if table == "model" or isinstance(section, dict):
            section = raw.setdefault(table, {})
            section["hf_config_kwargs"] = {**section.get("hf_config_kwargs", {}), **kwargs}
            section["from_config"] = True
