"""Recipes of the `swiftkv` method: ArcticTraining's swiftkv keys, with their names and meaning.

`[model]` gains `num_key_value_layers` (L_kv) and `key_value_group_size` (G), as in ArcticTraining's
`SwiftKVModelConfig`; the distillation keys `logits_loss_temp`, `hidden_loss_mult` and
`hidden_loss_layer` stay top-level, as in its `SwiftKVTrainerConfig`. `(L - L_kv) % G == 0` needs the
model's layer count: `check_model_shape` checks it against a local model's config.json in `arctic
config check`, and the trainer again when it reads the model config (before any weight loads).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from arctic_core.config import ModelConfig, TrainerConfig, at_least, greater_than, setting


@attrs.frozen(kw_only=True)
class SwiftKVModelConfig(ModelConfig):
    """[model] for SwiftKV: the teacher checkpoint (Llama or Qwen2) and the SwiftKV shape."""

    num_key_value_layers: int = setting(
        doc="L_kv: layers, from the first, that keep their own KV; later layers take KV from layer L_kv's input.",
        check=at_least(1),
    )
    key_value_group_size: int = setting(
        1,
        doc="G: consecutive layers after L_kv that share one KV projection and cache (AcrossKV).",
        check=at_least(1),
    )


@attrs.frozen(kw_only=True)
class SwiftKVConfig(TrainerConfig):
    """A SwiftKV distillation recipe: student = SwiftKV on, teacher = the same weights with SwiftKV off."""

    type: str = setting("swiftkv", doc="Method or registered trainer name.")
    model: SwiftKVModelConfig = setting(doc="[model] table.")
    logits_loss_temp: float = setting(
        2.0, doc="Temperature T of the logits KL (the KL is multiplied by T^2).", check=greater_than(0.0)
    )
    hidden_loss_mult: float = setting(
        1.0, doc="Weight of the hidden-state MSE: loss = KL + hidden_loss_mult * MSE.", check=at_least(0.0)
    )
    hidden_loss_layer: int = setting(
        -2, doc="Index into the hidden states (embeddings, layer outputs..., final norm) for the MSE."
    )
    loss_chunk_size: int = setting(
        4096,
        doc="Tokens per chunk of the output layer in the KL (bounds the logits' memory).",
        check=at_least(1),
    )

    def check_model_shape(self, shape: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        """L_kv below the model's layer count L (the student must skip at least one layer's KV), and
        the L - L_kv layers after it in whole groups of G."""
        layers = shape.get("num_hidden_layers")
        if not isinstance(layers, int):
            return
        kv, group, where = self.model.num_key_value_layers, self.model.key_value_group_size, shape["_path"]
        if kv >= layers:
            yield (
                "model.num_key_value_layers",
                f"is {kv}, but the model has {layers} layers ({where}): SwiftKV needs fewer, so that "
                "the layers after L_kv take their KV from layer L_kv's input (else there is nothing to distil)",
            )
        elif (layers - kv) % group:
            yield (
                "model.key_value_group_size",
                f"is {group}, which does not divide the {layers - kv} layers after num_key_value_layers "
                f"= {kv} (the model has {layers}; {where})",
            )
