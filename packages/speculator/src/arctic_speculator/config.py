"""Recipes of the `speculator` method.

The speculator's shape goes in `[model]`, beside the base model it drafts for, as in
ArcticTraining; the keys carry the names of the exported speculator config that vLLM and
ArcticInference read (`n_predict`, `inner_dim`, `emb_dim`, `tie_weights`, `scale_input`).
ArcticTraining's recipe spellings (`n_speculator_heads`, `speculator_width`,
`speculator_tie_weights`, `speculator_scale_input`) are not accepted yet.
"""

from __future__ import annotations

import attrs

from arctic_core.config import ModelConfig, TrainerConfig, at_least, setting


@attrs.frozen(kw_only=True)
class SpeculatorModelConfig(ModelConfig):
    """[model] for a speculator: the frozen base model (`name_or_path`...) and the speculator's shape."""

    n_predict: int = setting(
        3, doc="Speculator heads: tokens drafted after the base model's next one.", check=at_least(1)
    )
    inner_dim: int = setting(
        0,
        doc="Width of the speculator's state (ArcticTraining: speculator_width); 0: the base model's hidden size.",
        check=at_least(0),
    )
    emb_dim: int = setting(
        0,
        doc="Width of the base hidden states the speculator reads; 0: the base model's hidden size (any other value must equal it).",
        check=at_least(0),
    )
    tie_weights: bool = setting(
        False, doc="Share embedding, output layer and LayerNorm over all heads, and proj over heads >= 1."
    )
    scale_input: bool = setting(
        False, doc="Normalise the base hidden state (LayerNorm without parameters) and divide by sqrt(2)."
    )


@attrs.frozen(kw_only=True)
class SpeculatorConfig(TrainerConfig):
    """A speculator recipe: the base model frozen, only the speculator trains."""

    type: str = setting("speculator", doc="Method or registered trainer name.")
    model: SpeculatorModelConfig = setting(doc="[model] table.")
    loss_chunk_size: int = setting(
        4096,
        doc="Rows per chunk of a head's output layer in the loss (bounds the logits' memory).",
        check=at_least(1),
    )
