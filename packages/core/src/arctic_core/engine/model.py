"""The model factory: a Hugging Face model from pretrained weights or from a config, ready for DeepSpeed.

- `model.name_or_path` is a local folder or a hub id. Weights load with `from_pretrained`,
  unless `model.from_config = true` or `model.hf_config_kwargs` changes the network's shape
  (layers, widths, heads, vocabulary): then the network is built from the config with random
  weights (seeded by the recipe's `seed`), as ArcticTraining does.
- Under ZeRO-3 the parameters are partitioned while the model is built: Arctic registers
  the DeepSpeed config with transformers (`set_hf_deepspeed_config`), which then wraps
  construction in `deepspeed.zero.Init` and loads weights shard by shard.
- Activation checkpointing (non-reentrant): `model.disable_activation_checkpoint` true turns it off,
  false turns it on; unset (the default) is *auto*: the trainer leaves it off only when `arctic plan`'s
  peak per device without it fits the device's memory (`apply_activation_checkpointing`, which asks
  `arctic_core.plan`), and logs the choice with the planned peaks of both settings.
- `select_trainable` applies `model.trainable_parameters` / `model.frozen_parameters` globs.
- PEFT adapters (`model.peft_config`) are added by the trainer after `transform_model`
  (`arctic_core.engine.peft`), not here.
"""

from __future__ import annotations

import fnmatch
import logging
import os
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


def available_bytes(device: torch.device, *, world: int = 1) -> int:
    """Memory one rank may plan a step with, as `arctic plan` counts a device's memory.

    On a GPU: its total memory less what other processes hold, i.e. the free memory plus what this
    process already holds (PyTorch's reserved memory and the plan's fixed costs: CUDA context, NCCL),
    at most the total. On CPU: the machine's available RAM shared by the ranks on it.
    """
    if device.type == "cuda":
        from arctic_core.plan.estimate import fixed_costs

        free, total = torch.cuda.mem_get_info(device)
        return int(min(total, free + torch.cuda.memory_reserved(device) + fixed_costs(world)))
    import psutil

    ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return int(psutil.virtual_memory().available) // ranks


def agreed_bytes(memory: int, device: torch.device) -> int:
    """The smallest `memory` over the ranks (one collective), so that every rank makes the same choice."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return memory
    value = torch.tensor([memory], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def apply_activation_checkpointing(
    model: Any, config: Any, *, device: torch.device, world: int, deepspeed: dict[str, Any] | None = None
) -> tuple[bool, str]:
    """Decide activation checkpointing for the trained `model` of recipe `config`, turn it on if chosen.

    The recipe asks with `model.disable_activation_checkpoint` (false: on, true: off) or with a key
    that needs checkpoints (`activation_checkpoint_cpu_offload`). Otherwise (auto) `arctic plan`'s
    estimate decides (`arctic_core.plan.planner.run_checkpointing`): the planned peak per device of a
    micro-batch of `micro_batch_size` x `data.max_length` tokens without and with checkpointing, for
    `world` ranks with the run's DeepSpeed config `deepspeed`, against `available_bytes` (the smallest
    over the ranks); off only when off fits. Every rank calls it (a collective). Returns (on, why).
    """
    from arctic_core.plan.planner import checkpointing_asked, run_checkpointing

    on, why = checkpointing_asked(config)
    if on is None:
        memory = agreed_bytes(available_bytes(device, world=world), device)
        on, why = run_checkpointing(
            config, memory=memory, world=world, deepspeed=deepspeed, device_overheads=device.type == "cuda"
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
