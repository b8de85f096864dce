"""The model factory: a Hugging Face model from pretrained weights or from a config, ready for DeepSpeed.

- `model.name_or_path` is a local folder or a hub id. Weights load with `from_pretrained`,
  unless `model.from_config = true` or `model.hf_config_kwargs` changes the network's shape
  (layers, widths, heads, vocabulary): then the network is built from the config with random
  weights (seeded by the recipe's `seed`), as ArcticTraining does.
- Under ZeRO-3 the parameters are partitioned while the model is built: Arctic registers
  the DeepSpeed config with transformers (`set_hf_deepspeed_config`), which then wraps
  construction in `deepspeed.zero.Init` and loads weights shard by shard.
- Activation checkpointing (non-reentrant) is on unless `model.disable_activation_checkpoint`.
- `select_trainable` applies `model.trainable_parameters` / `model.frozen_parameters` globs.
- PEFT adapters (`model.peft_config`) are added by the trainer after `transform_model`
  (`arctic_core.engine.peft`), not here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from arctic_core.config import ModelConfig
from arctic_core.errors import ArcticError, RecipeError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

SHAPE_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "n_layer",
    "n_embd",
    "n_head",
    "num_experts",
    "moe_intermediate_size",
)


class ZeroConfigHandle:
    """What transformers' DeepSpeed integration reads while building a model (`.config`, `.is_zero3()`)."""

    def __init__(self, ds_config: dict[str, Any]):
        self.config = ds_config

    def is_zero3(self) -> bool:
        return int(self.config.get("zero_optimization", {}).get("stage", 0)) == 3


@contextmanager
def zero3_construction(ds_config: dict[str, Any]) -> Iterator[None]:
    """While active (and the config is ZeRO-3), transformers partitions parameters as it builds a model."""
    from transformers.integrations import deepspeed as hf_ds

    handle = ZeroConfigHandle(ds_config)
    if not handle.is_zero3():
        yield
        return
    hf_ds.set_hf_deepspeed_config(handle)
    try:
        yield
    finally:
        hf_ds.unset_hf_deepspeed_config()


def load_hf_config(config: ModelConfig) -> tuple[Any, bool]:
    """The model's config with `hf_config_kwargs` applied, and whether they changed its shape."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(
            config.name_or_path, trust_remote_code=config.trust_remote_code, revision=config.revision
        )
    except OSError as exc:
        raise ArcticError(
            f"model.name_or_path {config.name_or_path!r}: cannot load its config: {exc}"
        ) from None
    reshaped = False
    for key, value in config.hf_config_kwargs.items():
        if key in SHAPE_KEYS and getattr(hf_config, key, None) != value:
            reshaped = True
        setattr(hf_config, key, value)
    return hf_config, reshaped


def build_model(
    config: ModelConfig, ds_config: dict[str, Any], *, seed: int, auto_class: Any = None
) -> torch.nn.Module:
    """Build the model of `[model]` (partitioned under ZeRO-3), with activation checkpointing as configured."""
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    hf_config, reshaped = load_hf_config(config)
    hf_config.use_cache = False
    common = {
        "dtype": TORCH_DTYPES[config.dtype],
        "attn_implementation": config.attn_implementation,
        "trust_remote_code": config.trust_remote_code,
    }
    with zero3_construction(ds_config), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.from_config or reshaped:
            model = auto_class.from_config(hf_config, **common)
        else:
            model = auto_class.from_pretrained(
                config.name_or_path, config=hf_config, revision=config.revision, **common
            )
    if not config.disable_activation_checkpoint:
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing of every layer (transformers 5 name, else the 4.x one)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def select_trainable(model: torch.nn.Module, trainable: Sequence[str], frozen: Sequence[str]) -> list[str]:
    """Set `requires_grad` from glob patterns on parameter names; returns the trainable names.

    Empty `trainable` keeps every parameter's current flag; `frozen` then freezes matches.
    """
    for name, param in model.named_parameters():
        if trainable:
            param.requires_grad_(_matches(name, trainable))
        if frozen and _matches(name, frozen):
            param.requires_grad_(False)
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    if not names:
        path = "model.trainable_parameters" if trainable else "model.frozen_parameters"
        raise RecipeError("no parameter is left to train; check the glob patterns", path=path)
    return names
