"""Recipes of the `dpo` method: core's keys, the loss's chunk size, and the preference settings."""

from __future__ import annotations

import attrs

from arctic_core.config import DataConfig, ModelConfig, at_least, between, greater_than, one_of, setting
from arctic_core.errors import FieldError
from arctic_sft.config import SFTConfig


@attrs.frozen(kw_only=True)
class DPODataConfig(DataConfig):
    """[data] for preference pairs: prompt truncation on top of core's length rules."""

    max_prompt_length: int | None = setting(
        None,
        doc="Longest prompt in tokens; longer prompts are cut (unset: only max_length applies).",
        check=at_least(1),
    )
    prompt_truncation: str = setting(
        "keep_end",
        doc="Which part of a too-long prompt to keep: keep_end (the turns next to the answer) or keep_start.",
        check=one_of("keep_end", "keep_start"),
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.pack_samples:
            raise FieldError("pack_samples", "preference pairs are never packed; set it to false")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise FieldError(
                "max_prompt_length",
                f"must be below max_length ({self.max_length}) to leave room for the answer, "
                f"got {self.max_prompt_length}",
            )


@attrs.frozen(kw_only=True)
class DPOConfig(SFTConfig):
    """A preference-tuning recipe (DPO, conservative DPO, IPO)."""

    type: str = setting("dpo", doc="Method or registered trainer name.")
    data: DPODataConfig = setting(factory=DPODataConfig, doc="[data] table.")
    ref_model: ModelConfig | None = setting(
        None, doc="[ref_model] table: the reference model; unset: a frozen copy of [model]."
    )
    loss_type: str = setting(
        "sigmoid", doc="sigmoid (DPO; cDPO with label_smoothing) or ipo.", check=one_of("sigmoid", "ipo")
    )
    beta: float = setting(
        0.1, doc="Strength of the pull towards the reference model.", check=greater_than(0.0)
    )
    label_smoothing: float = setting(
        0.0,
        doc="sigmoid only: assumed probability that a pair's labels are flipped (cDPO).",
        check=between(0.0, 0.5),
    )
    precompute_ref_log_probs: bool = setting(
        False, doc="Score every sample with the reference model once before training, then free it."
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise FieldError(
                "label_smoothing", f"applies to loss_type = 'sigmoid' only, not {self.loss_type!r}"
            )
        if self.label_smoothing >= 0.5:
            raise FieldError("label_smoothing", f"must be below 0.5, got {self.label_smoothing}")
