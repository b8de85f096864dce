"""SwiftKV distillation (arXiv 2410.03960): the model learns to skip its own prefill.

The model is the teacher checkpoint turned into its SwiftKV variant (`arctic_swiftkv.modeling`):
every layer after L_kv takes its keys and values from one normalised hidden state. Its new
parameters start from the teacher's own (`arctic_swiftkv.init`) and are the only ones that train.
Each micro-batch runs the same network twice: with SwiftKV off and no gradient (the teacher, i.e. the
unchanged model), then with SwiftKV on (the student), and the loss is

    T^2 KL(teacher || student) over trainable positions + hidden_loss_mult x hidden-state MSE

(`arctic_swiftkv.loss`, whose docstring says how the mean is taken). Everything else (accumulation,
weighting across micro-batches and ranks, ZeRO, checkpoints) is core's one loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from arctic_core.trainer import LossOutput, Trainer
from arctic_swiftkv.config import SwiftKVConfig


@contextmanager
def swiftkv_off(model: Any) -> Iterator[None]:
    """Run `model` as its teacher (SwiftKV off) inside the block; the previous setting comes back after."""
    before = model.config.swiftkv
    model.config.swiftkv = False
    try:
        yield
    finally:
        model.config.swiftkv = before


class SwiftKVLoader:
    """The Auto class core's `build_model` calls: any Llama/Qwen2 (or SwiftKV) config becomes SwiftKV."""

    def __init__(self, num_key_value_layers: int, key_value_group_size: int):
        self.shape = (num_key_value_layers, key_value_group_size)
        self.source_type: str | None = None

    def _convert(self, hf_config: Any) -> Any:
        from arctic_swiftkv.configuration import to_swiftkv_config

        self.source_type = hf_config.model_type
        return to_swiftkv_config(hf_config, *self.shape)

    def from_config(self, hf_config: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(self._convert(hf_config), **kwargs)

    def from_pretrained(self, name: str, *, config: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(name, config=self._convert(config), **kwargs)


class SwiftKVTrainer(Trainer[SwiftKVConfig]):
    name = "swiftkv"
    config_class = SwiftKVConfig
    reports_perplexity = False

    @classmethod
    def shrink_layers(cls, config: Any) -> int:
        """L_kv layers with their own KV, then two groups of G layers that take theirs from layer L_kv's input.

        One group would not do: the first layer after L_kv, its KV projection initialised from its
        own, computes what the teacher computes, so a model with one such layer has nothing to learn.
        """
        return int(config.model.num_key_value_layers) + 2 * int(config.model.key_value_group_size)

    def build_model(self) -> torch.nn.Module:
        """The teacher checkpoint as a SwiftKV model, its new parameters copied from the teacher's."""
        import arctic_swiftkv.models  # noqa: F401  (registers the SwiftKV classes)
        from arctic_core.engine.model import build_model
        from arctic_core.errors import RecipeError
        from arctic_swiftkv.init import initialise_swiftkv

        cfg = self.config.model
        loader = SwiftKVLoader(cfg.num_key_value_layers, cfg.key_value_group_size)
        try:
            model: Any = build_model(cfg, self.ds_config, seed=self.config.seed, auto_class=loader)
        except ValueError as exc:
            if "num_key_value_layers" in str(exc) or "key_value_group_size" in str(exc):
                raise RecipeError(str(exc), path="model.num_key_value_layers") from None
            raise
        layers = model.config.num_hidden_layers
        if model.config.num_key_value_layers >= layers:
            raise RecipeError(
                f"is {model.config.num_key_value_layers}, but the model has {layers} layers: SwiftKV needs at "
                f"least one layer after the key-value layers (typically {layers // 2})",
                path="model.num_key_value_layers",
            )
        if not str(loader.source_type).endswith("_swiftkv"):
            initialise_swiftkv(model, zero3=self.zero_stage == 3)
            self.log.info("SwiftKV parameters initialised from the teacher's weights")
        return model.swiftkv(True)

    def select_trainable(self, model: torch.nn.Module) -> list[str]:
        """Only SwiftKV's new parameters (`*_swiftkv.*`) train, unless the recipe names others."""
        from arctic_core.engine.model import select_trainable
        from arctic_swiftkv.init import SWIFTKV_PARAMETERS

        cfg = self.config.model
        return select_trainable(model, cfg.trainable_parameters or SWIFTKV_PARAMETERS, cfg.frozen_parameters)

    def hidden_states(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """All hidden states of one root forward (logits kept for one position only)."""
        from arctic_core.engine.loop import model_inputs

        out = self.engine(**model_inputs(batch), use_cache=False, logits_to_keep=1, output_hidden_states=True)
        return tuple(out.hidden_states)

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        from arctic_swiftkv.loss import distillation_loss

        module: Any = self.engine.module
        with torch.no_grad(), swiftkv_off(module):
            teacher = self.hidden_states(batch)
        student = self.hidden_states(batch)
        return distillation_loss(
            module.get_output_embeddings(),  # ZeRO-3: called as a module, gathered per chunk
            student,
            teacher,
            batch["labels"],
            temperature=self.config.logits_loss_temp,
            hidden_loss_mult=self.config.hidden_loss_mult,
            hidden_loss_layer=self.config.hidden_loss_layer,
            chunk_size=self.config.loss_chunk_size,
            config=module.config,
            kernels=self.config.kernels,
        )
