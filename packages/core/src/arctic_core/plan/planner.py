"""From a recipe to an estimate: the model's shape, the run's settings, methods' and features' terms.

`setup_for(config, shape, hardware, micro_batch=..., sequence=...)` builds core's `PlanSetup` from
the recipe, then lets the recipe's method (`Method.plan`) and every feature the recipe turns on
(`Feature.plan`) adjust it: each is a `"module:function"` taking and returning a `PlanSetup`. They
are called again for every micro batch and sequence length the search tries, so they read
`setup.micro_batch` and `setup.sequence` (never the recipe's `data.max_length`).

Activation checkpointing left automatic is decided here, for `arctic plan` and for a running trainer
alike (`run_checkpointing`): off only when the planned peak without it fits the device's memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from arctic_core import features, plugins
from arctic_core.errors import ArcticError, RecipeError
from arctic_core.plan.estimate import Estimate, Lever, PlanSetup, estimate
from arctic_core.plan.hardware import Hardware, human
from arctic_core.plan.shape import ModelShape, lora_parameters

PlanFunction = Callable[[PlanSetup], PlanSetup]
MAX_MICRO_BATCH = 4096
MAX_SEQUENCE = 2**28
SEQUENCE_STEP = 1024
"""The longest sequence is searched in steps of this many tokens (times the sequence-parallel size)."""


def hf_config(model: Any) -> Any:
    """The transformers config of `[model]` (local folder or hub id), with `hf_config_kwargs` applied."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            model.name_or_path, trust_remote_code=model.trust_remote_code, revision=model.revision
        )
    except (OSError, ValueError) as exc:
        raise ArcticError(f"cannot read the config of model {model.name_or_path!r}: {exc}") from None
    for key, value in model.hf_config_kwargs.items():
        setattr(config, key, value)
    return config


def contributors(config: Any) -> list[tuple[str, PlanFunction]]:
    """The plan functions of the recipe's method and of every installed feature, in that order.

    A feature's function runs whether the recipe turns it on or not (off, it only offers its levers).
    """
    found: list[tuple[str, PlanFunction]] = []
    method = plugins.get(str(config.type))
    if method is not None and method.method is not None and method.method.plan:
        found.append((f"method {method.name}", plugins.load_reference(method.method.plan)))
    for name in getattr(type(config), "__arctic_features__", ()):  # on or off: an off feature offers levers
        feature = features.get(name)
        if feature is not None and feature.feature is not None and feature.feature.plan:
            found.append((f"feature {name}", plugins.load_reference(feature.feature.plan)))
    return found


def checkpointing_asked(config: Any) -> tuple[bool | None, str]:
    """(on, why) when the recipe decides activation checkpointing itself; (None, "") when it is auto."""
    disabled = config.model.disable_activation_checkpoint
    if disabled is not None:
        return not disabled, f"model.disable_activation_checkpoint = {'true' if disabled else 'false'}"
    if getattr(config, "activation_checkpoint_cpu_offload", False):  # arctic-alst's key
        return True, "activation_checkpoint_cpu_offload needs it"
    return None, ""


def choose_checkpointing(without: int, with_: int, memory: int) -> tuple[bool, str]:
    """Auto: off only when the planned peak without checkpointing fits `memory` (`arctic plan`'s rule, peak
    <= memory); else on, saying so when neither fits. `without`/`with_` are the planned peaks per device."""
    numbers = f"planned peak {human(without)} without, {human(with_)} with, of {human(memory)} per device"
    if without <= memory:
        return False, f"auto: {numbers}: fits without"
    if with_ <= memory:
        return True, f"auto: {numbers}: fits only with it"
    return True, f"auto: {numbers}: fits neither way, expect out of memory (arctic plan suggests changes)"


def core_levers(setup: PlanSetup) -> tuple[Lever, ...]:
    levers = []
    if not setup.checkpointing:
        levers.append(
            Lever(
                label="turn on activation checkpointing",
                overrides=("model.disable_activation_checkpoint=false",),
            )
        )
    if setup.zero_stage < 3:
        levers.append(Lever(label="set zero stage 3", overrides=("deepspeed.zero_optimization.stage=3",)))
    if not setup.offload_optimizer:
        offload = ("deepspeed.zero_optimization.offload_optimizer.device=cpu", "optimizer.type=cpu_adam")
        levers.append(Lever(label="offload the optimizer to the CPU", overrides=offload))
    if not setup.offload_param:
        offload = (
            "deepspeed.zero_optimization.stage=3",
            "deepspeed.zero_optimization.offload_param.device=cpu",
        )
        levers.append(Lever(label="offload the parameters to the CPU (ZeRO-3)", overrides=offload))
    return tuple(levers)


def base_setup(
    config: Any,
    shape: ModelShape,
    hardware: Hardware,
    *,
    micro_batch: int,
    sequence: int,
    checkpointing: bool = False,
    deepspeed: dict[str, Any] | None = None,
    device_overheads: bool = True,
) -> PlanSetup:
    """Core's view of the run: precision, ZeRO, offload, PEFT, with `checkpointing`; before methods and features.

    `deepspeed` is the run's DeepSpeed config (a running trainer has it); None builds it for the hardware.
    """
    from arctic_core.engine.deepspeed_config import build_deepspeed_config

    ds = deepspeed if deepspeed is not None else build_deepspeed_config(config, hardware.world_size)
    zero = ds.get("zero_optimization", {})
    parameters = shape.parameters()
    peft = config.model.peft_config
    setup = PlanSetup(
        shape=shape,
        recipe=config,
        dtype=config.model.dtype,
        world=hardware.world_size,
        micro_batch=micro_batch,
        sequence=sequence,
        zero_stage=int(zero.get("stage", 0)),
        offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") == "cpu",
        offload_param=zero.get("offload_param", {}).get("device", "none") == "cpu",
        optimizer=config.optimizer.type,
        attention=config.model.attn_implementation,
        parameters=parameters,
        trainable=lora_parameters(shape, peft) if peft else parameters,
        checkpointing=checkpointing,
        deepspeed=ds,
        device_overheads=device_overheads,
    )
    if peft:
        setup = attrs.evolve(setup, parameters=parameters + setup.trainable)
    if config.model.trainable_parameters or config.model.frozen_parameters:
        note = (
            "model.trainable_parameters/frozen_parameters are not resolved: every parameter counts as trained"
        )
        setup = attrs.evolve(setup, notes=(note,))
    return attrs.evolve(setup, levers=core_levers(setup))


def setup_for(
    config: Any,
    shape: ModelShape,
    hardware: Hardware,
    *,
    micro_batch: int,
    sequence: int,
    deepspeed: dict[str, Any] | None = None,
    device_overheads: bool = True,
    adjust: PlanFunction | None = None,
) -> PlanSetup:
    """The run's `PlanSetup` after the method's and the features' plan functions (then `adjust`).

    Activation checkpointing as the recipe asks; when it is auto, the setup of each setting is estimated
    and `choose_checkpointing` picks one against `hardware.memory`. A running trainer decides with this
    same function (`arctic_core.engine.model.apply_activation_checkpointing`): one model, one rule.
    """

    def build(checkpointing: bool) -> PlanSetup:
        setup = base_setup(
            config,
            shape,
            hardware,
            micro_batch=micro_batch,
            sequence=sequence,
            checkpointing=checkpointing,
            deepspeed=deepspeed,
            device_overheads=device_overheads,
        )
        for _, plan in contributors(config):
            setup = plan(setup)
        return adjust(setup) if adjust is not None else setup

    on, why = checkpointing_asked(config)
    if on is None:
        without, with_ = build(False), build(True)
        on, why = choose_checkpointing(estimate(without).peak, estimate(with_).peak, hardware.memory)
        setup = with_ if on else without
    else:
        setup = build(on)
    note = f"activation checkpointing {'on' if on else 'off'}: {why}"
    return attrs.evolve(setup, checkpointing_why=why, notes=(note, *setup.notes))


def run_checkpointing(
    config: Any, *, memory: int, world: int, deepspeed: dict[str, Any] | None, device_overheads: bool
) -> tuple[bool, str]:
    """(on, why): a running trainer's automatic choice, `arctic plan`'s for `world` devices of `memory` bytes.

    The model's shape is read from the recipe's `[model]` as `arctic plan` reads it. A model the planner
    cannot plan (a config without a decoder's sizes, a plan function that fails on it) leaves
    checkpointing on, and the reason says why.
    """
    hardware = Hardware(name="device", devices=world, memory=memory)
    try:
        setup = setup_for(
            config,
            ModelShape.from_hf_config(hf_config(config.model)),
            hardware,
            micro_batch=config.micro_batch_size,
            sequence=config.data.max_length,
            deepspeed=deepspeed,
            device_overheads=device_overheads,
        )
    except (ArcticError, AttributeError, KeyError, TypeError, ValueError) as exc:
        return True, f"auto: cannot plan the memory of {config.model.name_or_path!r} ({exc}), so on"
    return setup.checkpointing, setup.checkpointing_why


@attrs.frozen(kw_only=True)
class Planner:
    """One recipe on one hardware: estimates at any micro batch and sequence, searches, suggestions."""

    config: Any
    shape: ModelShape
    shape_config: Any
    hardware: Hardware
    recipe: str | None = None  # the recipe file, to try recipe changes (`with_overrides`)
    overrides: tuple[str, ...] = ()  # its --set overrides
    method: str | None = None  # the type `arctic <method> plan` fixes
    device_overheads: bool = True
    adjust: Callable[[PlanSetup], PlanSetup] | None = None  # tests: one more change after the plugins

    def setup(self, micro_batch: int | None = None, sequence: int | None = None) -> PlanSetup:
        mbs = micro_batch or self.config.micro_batch_size
        seq = sequence or self.config.data.max_length
        return setup_for(
            self.config,
            self.shape,
            self.hardware,
            micro_batch=mbs,
            sequence=seq,
            device_overheads=self.device_overheads,
            adjust=self.adjust,
        )

    def estimate(self, micro_batch: int | None = None, sequence: int | None = None) -> Estimate:
        return estimate(self.setup(micro_batch, sequence))

    def fits(self, micro_batch: int | None = None, sequence: int | None = None) -> bool:
        return self.estimate(micro_batch, sequence).peak <= self.hardware.memory

    def largest(self, fits: Callable[[int], bool], high: int) -> int:
        """The largest n in [1, high] with fits(n), assuming fits is monotone; 0 if none."""
        if not fits(1):
            return 0
        low, top = 1, 2
        while top <= high and fits(top):
            low, top = top, top * 2
        top = min(top, high + 1)
        while top - low > 1:
            middle = (low + top) // 2
            low, top = (middle, top) if fits(middle) else (low, middle)
        return low

    def max_micro_batch(self) -> int:
        return self.largest(lambda n: self.fits(micro_batch=n), MAX_MICRO_BATCH)

    def max_sequence(self) -> int:
        step = SEQUENCE_STEP * self.setup().sequence_parallel
        return step * self.largest(lambda n: self.fits(sequence=n * step), MAX_SEQUENCE // step)

    def with_overrides(self, extra: tuple[str, ...]) -> Planner | None:
        """This planner for the recipe with more `--set` overrides; None if the recipe refuses them."""
        from arctic_core.recipe import load_recipe

        if self.recipe is None:
            return None
        overrides = self.overrides + extra
        try:
            config = load_recipe(self.recipe, overrides, method=self.method).config
        except RecipeError:
            return None
        return attrs.evolve(self, config=config, overrides=overrides)
