"""Supervised fine-tuning and causal-LM training.

SFT minimises the mean next-token cross-entropy over the trainable tokens of each batch:
the assistant turns (with their end-of-turn token) that the data pipeline labels, or every
token for causal-LM training on plain text. Everything else (accumulation, the global
token weighting across micro-batches and ranks, schedules, checkpoints) is core's loop;
this method only supplies the loss, computed without materialising the full logits
(`arctic_core.losses`).

A custom trainer subclasses `SFTTrainer` (`SFTTrainer[ItsConfig]` for a config of its own), sets
`name`, and overrides `loss(batch)`.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch

from arctic_core.losses import causal_lm_loss
from arctic_core.trainer import LossOutput, Trainer
from arctic_sft.config import CausalConfig, SFTConfig

SFTConfigT = TypeVar("SFTConfigT", bound=SFTConfig)


class SFTTrainer(Trainer[SFTConfigT]):
    name = "sft"
    config_class = SFTConfig

    def loss(self, batch: dict[str, Any]) -> torch.Tensor | LossOutput:
        """Mean cross-entropy over the batch's trainable tokens, the output layer run in chunks."""
        return causal_lm_loss(
            self.model,
            batch,
            chunk_size=self.config.loss_chunk_size,
            call=self.engine,
            kernels=self.config.kernels,
        )


class CausalTrainer(SFTTrainer[CausalConfig]):
    name = "causal"
    config_class: ClassVar[type[SFTConfig]] = CausalConfig
