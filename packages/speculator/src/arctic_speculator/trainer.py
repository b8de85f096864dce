"""Training a speculator on core's loop: the base model frozen, only the speculator's heads train.

The trained module (`build_model`) is the speculator itself (`MLPSpeculator` or `LSTMSpeculator`); the base model is a frozen
companion (`build_frozen_model`: no gradients, no optimizer state, never checkpointed). For each
micro-batch the base model's last hidden states are computed under no-grad, then the speculator's
heads run on them with the batch's own tokens (teacher forcing) and the loss is
`arctic_speculator.loss.speculator_loss`: the sum over heads of the cross-entropy of head i on token
t+2+i, per trainable position, with per-head loss and accuracy in every metrics line and in eval.
Which (t, i) pairs train depends on each sample alone (not on the micro-batch's padded length).
Data: core's SFT pipeline: chat data, or the pre-tokenized dataset `arctic speculator generate`
writes (`process = false`); the targets are the dataset's own tokens. ZeRO-3 partitions the base
model and the speculator alike; `arctic_speculator.export`'s `speculator` checkpoint writes the
layout vLLM and ArcticInference load. ArcticTraining's recipe types are aliases:
`arctic-lstm-speculator` (method sum_rnn by default) and `spec-decode`.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

import arctic_speculator.export  # noqa: F401  (registers the `speculator` checkpoint type)
from arctic_core.trainer import LossOutput, Trainer
from arctic_speculator.config import ArcticLSTMSpeculatorConfig, SpeculatorConfig


class SpeculatorTrainer(Trainer[SpeculatorConfig]):
    name = "speculator"
    config_class = SpeculatorConfig
    reports_perplexity = False  # a sum of per-head cross-entropies, not one NLL

    def build_model(self) -> torch.nn.Module:
        """The frozen base model (kept as `self.base`) and a fresh speculator sized from it."""
        from arctic_core.errors import RecipeError
        from arctic_speculator.modeling import build_speculator

        cfg = self.config.model
        self.base = self.build_frozen_model()
        vocab_size, hidden_size = base_shape(self.base.module)
        if cfg.method == "mlp" and int(cfg.emb_dim) not in (0, hidden_size):
            raise RecipeError(
                f"is {cfg.emb_dim}, but the base model's hidden size is {hidden_size} (0 takes it)",
                path="model.emb_dim",
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            try:
                speculator = build_speculator(hidden_size, vocab_size, cfg.speculator_settings())
            except ValueError as exc:
                raise RecipeError(str(exc), path="model") from None
        speculator.use_kernels(self.config.kernels)
        dtype = next(self.base.module.parameters()).dtype
        return speculator.to(dtype)

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        """Trainable positions: those whose head-0 target (token t+2, in t's sample) is trained on."""
        from arctic_speculator.loss import trainable_positions

        return float(trainable_positions(batch["labels"], batch.get("position_ids")))

    @functools.cached_property
    def base_flops_counter(self) -> Any:
        """Core's `FlopsCounter` for the frozen base model, without its output layer (never run)."""
        from arctic_core.engine.flops import FlopsCounter, pad_id_or_none

        config = self.base.module.config
        return FlopsCounter.from_config(config, head="none", pad_id=pad_id_or_none(self.tokenizer))

    def step_flops(self, micro_batch: dict[str, Any]) -> int | None:
        """The frozen base model's forward (1 x, hidden states only) at each sample's real length, plus
        the heads' forward and backward (3 x forward): every head's step at each position whose head-0
        target lies in its sample, the output layers at each scored (position, head) pair."""
        from arctic_core.engine.flops import sample_lengths
        from arctic_speculator.loss import IGNORE_INDEX, head_targets, num_positions

        base = self.base_flops_counter
        lengths = sample_lengths(micro_batch, base.pad_id)
        labels, position_ids = micro_batch["labels"], micro_batch.get("position_ids")
        speculator: Any = getattr(self.model, "module", self.model)
        scored = sum(
            int((head_targets(labels, i, position_ids) != IGNORE_INDEX).sum())
            for i in range(speculator.n_predict)
        )
        positions = sum(num_positions(n) for n in lengths)
        return base.forward(lengths, head_rows=0) + 3 * speculator.forward_flops(positions, scored)

    def base_hidden_states(self, batch: dict[str, Any]) -> torch.Tensor:
        """The frozen base model's last hidden states `[B, L, H]` (after its final norm), no grad."""
        from arctic_core.losses import backbone_and_head, final_hidden_states

        backbone = backbone_and_head(self.base.module)[0]
        with torch.no_grad():
            return final_hidden_states(self.base.module, backbone, batch, call=self.base)

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        """Every position whose head-0 target is in the row; heads whose target lies past it score nothing."""
        from arctic_speculator.loss import head_tokens, num_positions, speculator_loss

        input_ids = batch["input_ids"]
        hidden = self.base_hidden_states(batch)[:, : num_positions(input_ids.shape[1])]
        tokens = head_tokens(input_ids, self.config.model.n_predict)
        states = self.engine(hidden, tokens, return_states=True)
        module: Any = self.engine.module
        loss, metrics = speculator_loss(
            states,
            list(module.head),
            batch["labels"],
            position_ids=batch.get("position_ids"),
            chunk_size=self.config.loss_chunk_size,
            kernels=self.config.kernels,
        )
        return LossOutput(loss, metrics=metrics)


def base_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(vocabulary size, hidden size) of a causal LM, from its config (whole even under ZeRO-3)."""
    config: Any = model.config
    return int(config.vocab_size), int(config.hidden_size)


class ArcticLSTMSpeculatorTrainer(SpeculatorTrainer):
    """ArcticTraining's `type: arctic-lstm-speculator`: the same method, method sum_rnn by default."""

    name = "arctic-lstm-speculator"
    config_class: ClassVar[type[SpeculatorConfig]] = ArcticLSTMSpeculatorConfig


class SpecDecodeTrainer(SpeculatorTrainer):
    """ArcticTraining's older `type: spec-decode` (the MLP speculator)."""

    name = "spec-decode"
