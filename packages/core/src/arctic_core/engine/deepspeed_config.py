"""The DeepSpeed config of a run: computed defaults, the recipe's `[deepspeed]` table over them, checks.

Computed defaults (the recipe's `[deepspeed]` table wins wherever it sets a key):

- `train_micro_batch_size_per_gpu` = `micro_batch_size`
- `gradient_accumulation_steps` = `gradient_accumulation_steps`
- `train_batch_size` = micro batch x accumulation x data-parallel ranks
- `gradient_clipping` = 1.0
- `bf16.enabled` / `fp16.enabled` from `model.dtype` (bf16 keeps fp32 master weights and optimizer state)
- `zero_optimization.stage` = 2 with several ranks (as ArcticTraining), 0 with one (there is
  nothing to partition, and stage 2's gradient buckets only cost time); 0 to 3 are supported
- `zero_allow_untested_optimizer` = true (Arctic's default optimizer is torch's AdamW)

Settings that contradict the recipe are a `RecipeError` naming both keys (also: optimizer
offload to the CPU without `optimizer.type = "cpu_adam"`). `arctic_core.recipe.checks` runs
these checks, with the others that need no weights, before anything is built.
"""

from __future__ import annotations

import copy
from typing import Any

from arctic_core.config import TrainerConfig
from arctic_core.errors import RecipeError

DEFAULT_ZERO_STAGE = 2
DEFAULT_GRADIENT_CLIPPING = 1.0


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, recursively for nested tables; neither input is changed."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def computed_defaults(config: TrainerConfig, world_size: int) -> dict[str, Any]:
    mbs, gas = config.micro_batch_size, config.gradient_accumulation_steps
    return {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gas,
        "train_batch_size": mbs * gas * world_size,
        "gradient_clipping": DEFAULT_GRADIENT_CLIPPING,
        "bf16": {"enabled": config.model.dtype == "bf16"},
        "fp16": {"enabled": config.model.dtype == "fp16"},
        "zero_optimization": {"stage": DEFAULT_ZERO_STAGE if world_size > 1 else 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def _check_batch(ds: dict[str, Any], config: TrainerConfig, world_size: int) -> None:
    mbs, gas = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    if mbs != config.micro_batch_size:
        raise RecipeError(
            f"is {mbs} but micro_batch_size is {config.micro_batch_size}; set only micro_batch_size",
            path="deepspeed.train_micro_batch_size_per_gpu",
        )
    if gas != config.gradient_accumulation_steps:
        raise RecipeError(
            f"is {gas} but gradient_accumulation_steps is {config.gradient_accumulation_steps}; "
            "set only gradient_accumulation_steps",
            path="deepspeed.gradient_accumulation_steps",
        )
    if ds["train_batch_size"] != mbs * gas * world_size:
        raise RecipeError(
            f"is {ds['train_batch_size']} but micro_batch_size x gradient_accumulation_steps x ranks is "
            f"{mbs} x {gas} x {world_size} = {mbs * gas * world_size}",
            path="deepspeed.train_batch_size",
        )


def _check_precision_tables(ds: dict[str, Any], dtype: str) -> None:
    for table, wanted in (("bf16", "bf16"), ("fp16", "fp16")):
        enabled = bool(ds.get(table, {}).get("enabled", False))
        if enabled != (dtype == wanted):
            state = "enabled" if enabled else "disabled"
            raise RecipeError(
                f"{table} is {state} in [deepspeed] but model.dtype is {dtype!r}; set the precision with model.dtype",
                path=f"deepspeed.{table}.enabled",
            )


def build_deepspeed_config(config: TrainerConfig, world_size: int) -> dict[str, Any]:
    """Computed defaults with the recipe's `[deepspeed]` table over them, checked against the recipe."""
    ds = deep_merge(computed_defaults(config, world_size), config.deepspeed)
    _check_batch(ds, config, world_size)
    _check_precision_tables(ds, config.model.dtype)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise RecipeError(f"must be 0, 1, 2 or 3, got {stage!r}", path="deepspeed.zero_optimization.stage")
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if offload == "cpu" and config.optimizer.type != "cpu_adam":
        raise RecipeError(
            f"zero_optimization.offload_optimizer puts the optimizer on the CPU; set optimizer.type = "
            f"'cpu_adam' (it is {config.optimizer.type!r})",
            path="optimizer.type",
        )
    if "optimizer" in ds or "scheduler" in ds:
        key = "optimizer" if "optimizer" in ds else "scheduler"
        raise RecipeError(
            f"set the {key} in the recipe's [{key}] table, not in [deepspeed]", path=f"deepspeed.{key}"
        )
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
