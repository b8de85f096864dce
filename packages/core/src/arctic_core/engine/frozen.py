"""Frozen companion models: a model beside the trained one that is only ever run forward.

DPO's reference, a distillation teacher, a speculator's base model, an embedding teacher for
mining: each is built from a `[model]`-shaped table and is

- frozen (`requires_grad=False`), in eval mode, without activation checkpointing or adapters;
- given no optimizer and so no optimizer state;
- under ZeRO-3, partitioned like the trained model (built inside `deepspeed.zero.Init` and
  wrapped by `deepspeed.initialize` without an optimizer, so its forward gathers parameters
  collectively: every rank must run as many forwards of it); under stages 0-2, a plain
  module on the device (nothing to partition: stages 1-2 shard optimizer state and gradients,
  which a frozen model has none of);
- never part of a checkpoint: checkpoints save the trained engine only.

`FrozenModel` is called like the module (`frozen(**inputs)`); `.module` is the network itself.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from arctic_core.config import ModelConfig

SHARED_KEYS = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "bf16",
    "fp16",
)


def frozen_ds_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The trained model's precision and ZeRO-3 partitioning (stages 0-2: none), without optimizer settings."""
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    zero = dict(ds_config.get("zero_optimization", {})) if stage == 3 else {"stage": 0}
    zero.pop("offload_optimizer", None)
    return {
        **{k: ds_config[k] for k in SHARED_KEYS if k in ds_config},
        "zero_optimization": zero,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


class FrozenModel:
    """A frozen network and the callable that runs it (its DeepSpeed engine under ZeRO-3)."""

    def __init__(self, module: torch.nn.Module, engine: Any = None):
        self.module = module
        self.engine = engine

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return (self.engine or self.module)(*args, **kwargs)

    @property
    def config(self) -> Any:
        return getattr(self.module, "config", None)


def prepare_frozen(
    module: torch.nn.Module, ds_config: dict[str, Any], device: torch.device, mpu: Any = None
) -> FrozenModel:
    """Freeze a built module and place it: a DeepSpeed engine without optimizer under ZeRO-3, else on `device`.

    `ds_config` is the frozen config (`frozen_ds_config`): under ZeRO-3 build the module inside
    `arctic_core.engine.model.zero3_construction(ds_config)` so it is partitioned as it is made.
    """
    module.requires_grad_(False)
    engine = None
    if int(ds_config["zero_optimization"].get("stage", 0)) == 3:
        import deepspeed

        engine, *_ = deepspeed.initialize(model=module, config=ds_config, mpu=mpu, dist_init_required=False)
        module = engine.module
    else:
        module.to(device)
    module.eval()
    return FrozenModel(module, engine)


def build_frozen(
    config: ModelConfig,
    ds_config: dict[str, Any],
    device: torch.device,
    *,
    seed: int,
    auto_class: Any = None,
    mpu: Any = None,
) -> FrozenModel:
    """A frozen model from a `[model]` table (weights as the trained model loads them; seeded if random)."""
    from arctic_core.engine.model import build_model
    from arctic_core.engine.moe import mark_leaf_modules

    source = attrs.evolve(config, disable_activation_checkpoint=True, peft_config=None)
    frozen_ds = frozen_ds_config(ds_config)
    module = build_model(source, frozen_ds, seed=seed, auto_class=auto_class)
    mark_leaf_modules(
        module, config.moe_leaf_modules
    )  # an MoE companion's sparse blocks, as the trained model's
    return prepare_frozen(module, frozen_ds, device, mpu)
