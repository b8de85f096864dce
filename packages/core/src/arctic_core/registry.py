"""Trainer registry: a trainer class with a `name` is registered when its class statement runs.

This is the seed README's convention (`class MyTrainer(SFTTrainer): name = "my_trainer"`),
kept explicit: only a class that sets `name` in its own body registers, and two different
classes claiming one name is an error naming both.
"""

from __future__ import annotations

_TRAINERS: dict[str, type] = {}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_trainer(cls: type) -> type:
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{_qualname(cls)} must set a non-empty string `name` to be registered")
    existing = _TRAINERS.get(name)
    if existing is not None and _qualname(existing) != _qualname(cls):
        raise ValueError(f"trainer name {name!r} is used by both {_qualname(existing)} and {_qualname(cls)}")
    _TRAINERS[name] = cls
    return cls


def get_trainer(name: str) -> type | None:
    return _TRAINERS.get(name)


def trainer_names() -> list[str]:
    return sorted(_TRAINERS)
