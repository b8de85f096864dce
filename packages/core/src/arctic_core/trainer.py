"""The trainer: one training loop for every method.

A method subclasses `Trainer` (or another method's trainer), sets `name` and
`config_class`, and overrides a hook or two. Setting `name` registers the class, which is
how a recipe's `type` (and the seed README's custom trainers) select it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from arctic_core.config import TrainerConfig
from arctic_core.registry import register_trainer


class Trainer:
    name: ClassVar[str]
    config_class: ClassVar[type[TrainerConfig]] = TrainerConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            register_trainer(cls)

    def __init__(self, config: TrainerConfig):
        self.config = config
