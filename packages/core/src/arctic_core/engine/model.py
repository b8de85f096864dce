"""The model factory: a Hugging Face model from pretrained weights or from a config, ready for DeepSpeed.

- `model.name_or_path` is a local folder or a hub id. Weights load with `from_pretrained`,
  unless `model.from_config = true` or `model.hf_config_kwargs` changes the network's shape
  (layers, widths, heads, vocabulary): then the network is built from the config with random
  weights (seeded by the recipe's `seed`), as ArcticTraining does.
- Under ZeRO-3 the parameters are partitioned while the model is built: Arctic registers
  the DeepSpeed config with transformers (`set_hf_deepspeed_config`), which then wraps
  construction in `deepspeed.zero.Init` and loads weights shard by shard.
- Activation checkpointing (non-reentrant): `model.disable_activation_checkpoint` true turns it off,
  false turns it on; unset (the default) is *auto*: the trainer turns it on only when the estimated
  activations of one micro-batch, with the training state, would not fit the device's available memory
  (`choose_activation_checkpointing`), and logs the choice with the estimate.
- `select_trainable` applies `model.trainable_parameters` / `model.frozen_parameters` globs.
- PEFT adapters (`model.peft_config`) are added by the trainer after `transform_model`
  (`arctic_core.engine.peft`), not here.
"""

from __future__ import annotations

import fnmatch
import logging
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
    if config.type == "liger":
        from arctic_core.compat.liger import apply_liger
        from arctic_core.engine.distributed import has_cuda

        apply_liger(model, cuda=has_cuda(), log=logging.getLogger("arctic"))
    if config.disable_activation_checkpoint is False:  # asked for; auto (None) is decided by the trainer
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model: Any) -> bool:
    """Non-reentrant activation checkpointing of every layer (transformers 5 name, else the 4.x one).

    Returns whether the model supports it (and so has it on now).
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return True


BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
HEADROOM = 0.8
"""Activations plus training state must fit in this share of the available memory to leave checkpointing off."""


def activation_bytes(
    hf_config: Any, tokens: int, *, sequence: int, dtype: str, attn_implementation: str = "sdpa"
) -> int:
    """Estimated memory autograd keeps for one micro-batch of `tokens` tokens without checkpointing.

    Per token and decoder layer (a Llama-shaped block), the tensors saved for backward: the two norms'
    inputs and outputs (4 H), q/k/v before and after rotary embedding (2 (q + 2 kv)), the attention
    output (q), the gated MLP's gate, up, activation and product (4 I); with eager attention also its
    probabilities (heads x `sequence`). The loss keeps no logits (chunked). An estimate: real
    models save a little more (norm statistics, masks, dropout).
    """
    hidden = int(getattr(hf_config, "hidden_size", 0) or 0)
    layers = int(getattr(hf_config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(hf_config, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(hf_config, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(hf_config, "head_dim", 0) or hidden // heads)
    inter = int(getattr(hf_config, "intermediate_size", 0) or 4 * hidden)
    q, kv = heads * head_dim, kv_heads * head_dim
    per_token = 4 * hidden + 2 * (q + 2 * kv) + q + 4 * inter
    if attn_implementation == "eager":
        per_token += heads * sequence
    return layers * tokens * per_token * BYTES.get(dtype, 4) + tokens * hidden * 4 * 4


def training_state_bytes(params: int, *, dtype: str, zero_stage: int, dp_size: int) -> int:
    """Weights, gradients and AdamW state of `params` parameters on one rank (fp32 master copy in bf16/fp16)."""
    weight = grad = BYTES.get(dtype, 4)
    optimizer = 8 + (4 if weight != 4 else 0)
    shards = max(dp_size, 1)
    return int(
        params
        * (
            weight / (shards if zero_stage >= 3 else 1)
            + grad / (shards if zero_stage >= 2 else 1)
            + optimizer / (shards if zero_stage >= 1 else 1)
        )
    )


def available_bytes(device: torch.device) -> int:
    """Free memory of `device`: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def choose_activation_checkpointing(
    asked: bool | None, *, activations: int, state: int, available: int
) -> tuple[bool, str]:
    """(on, why): `asked` True/False wins; None (auto) turns it on when activations + state > 80% available."""
    gib = 2**30
    estimate = (
        f"estimated activations {activations / gib:.2f} GiB + training state {state / gib:.2f} GiB, "
        f"{available / gib:.2f} GiB available"
    )
    if asked is not None:
        return (
            asked,
            f"the recipe asks for it ({estimate})" if asked else "model.disable_activation_checkpoint",
        )
    if activations + state > HEADROOM * available:
        return True, f"auto: {estimate}, would not fit"
    return False, f"auto: {estimate}, fits"


def apply_activation_checkpointing(
    model: Any, config: Any, *, device: torch.device, zero_stage: int, dp_size: int
) -> tuple[bool, str]:
    """Decide activation checkpointing for the trained `model` of recipe `config`, turn it on if chosen.

    The recipe asks with `model.disable_activation_checkpoint` (false: on, true: off) or with a key
    that needs checkpoints (`activation_checkpoint_cpu_offload`); otherwise the estimate decides for a
    micro-batch of `micro_batch_size` x `data.max_length` tokens. Returns (on, why) for the log.
    """
    disabled = config.model.disable_activation_checkpoint
    asked = None if disabled is None else not disabled
    if getattr(config, "activation_checkpoint_cpu_offload", False) and asked is None:
        asked = True  # offloading checkpoints needs them
    hf_config = getattr(model, "config", None)
    activations = activation_bytes(
        hf_config,
        config.micro_batch_size * config.data.max_length,
        sequence=config.data.max_length,
        dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation,
    )
    params = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
    state = training_state_bytes(params, dtype=config.model.dtype, zero_stage=zero_stage, dp_size=dp_size)
    on, why = choose_activation_checkpointing(
        asked, activations=activations, state=state, available=available_bytes(device)
    )
    if on and not enable_activation_checkpointing(model):
        return False, f"{why}; but {type(model).__name__} does not support it"
    return on, why


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
