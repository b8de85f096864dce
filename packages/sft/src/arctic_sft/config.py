"""Recipes of the `sft` and `causal` methods: core's keys plus the loss's chunk size."""

from __future__ import annotations

import attrs

from arctic_core.config import DataConfig, TrainerConfig, at_least, setting


@attrs.frozen(kw_only=True)
class SFTConfig(TrainerConfig):
    """A supervised fine-tuning recipe."""

    type: str = setting("sft", doc="Method or registered trainer name.")
    loss_chunk_size: int = setting(
        4096,
        doc="Tokens per chunk of the output layer in the loss (bounds the logits' memory).",
        check=at_least(1),
    )


@attrs.frozen(kw_only=True)
class CausalDataConfig(DataConfig):
    """[data] for causal-LM training: every token trained, documents packed."""

    mask_inputs: bool = setting(False, doc="Train only on assistant tokens (false: on every token).")
    pack_samples: bool = setting(True, doc="Pack several samples into each row, kept apart in attention.")


@attrs.frozen(kw_only=True)
class CausalConfig(SFTConfig):
    """A causal-LM (continued pre-training) recipe on plain text."""

    type: str = setting("causal", doc="Method or registered trainer name.")
    data: CausalDataConfig = setting(factory=CausalDataConfig, doc="[data] table.")
