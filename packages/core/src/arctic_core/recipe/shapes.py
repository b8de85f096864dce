"""The model's shape from a local `config.json`, for recipe checks that read no weights and no torch.

`arctic config check` (and every run, before it builds anything) compares the recipe's keys with
the shape of the model it names: `local_model_config` reads `<model.name_or_path>/config.json`
with `json` only (no transformers, no torch) and applies `model.hf_config_kwargs` over it. A hub
id is not read (a check never downloads): its shape is checked when the run loads it.

Each key's owner checks it: core the data length against `max_position_embeddings` (a warning:
positions past it may still work with rope scaling, but the model was not trained there); a
method through its config class's `check_model_shape` (swiftkv: `num_key_value_layers` against
the layers; speculator: its widths against the base); a feature through its hooks'
`check_model_shape` (alst: the heads against `sequence_parallel_size`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arctic_core.config import ModelConfig, TrainerConfig

Problem = tuple[str | None, str]  # (key path, message)


@cache
def _read_json(path: str, mtime_ns: int) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # unreadable: the run's own loading says why
    return data if isinstance(data, dict) else None


def local_model_config(model: ModelConfig) -> dict[str, Any] | None:
    """The local model folder's `config.json` (its text model's part for a multimodal config), with
    `model.hf_config_kwargs` applied; None for a hub id or a folder without a readable one."""
    from arctic_core.recipe.checks import looks_local

    name = model.name_or_path
    if not name or not looks_local(name):
        return None
    path = Path(name).expanduser() / "config.json"
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    data = _read_json(str(path.resolve()), mtime)
    if data is None:
        return None
    text = data.get("text_config")
    shape = dict(text) if isinstance(text, dict) and "num_attention_heads" not in data else dict(data)
    shape.update(model.hf_config_kwargs or {})
    shape["_path"] = str(path)
    return shape


def check_model_shape(config: TrainerConfig, warn: Callable[[str], None]) -> Iterator[Problem]:
    """The recipe against its local model's shape: core's own check, the method's and the features'."""
    from arctic_core import features

    shape = local_model_config(config.model)
    if shape is None:
        return
    max_length = getattr(config.data, "max_length", None)
    positions = shape.get("max_position_embeddings")
    if isinstance(max_length, int) and isinstance(positions, int) and max_length > positions:
        warn(
            f"data.max_length is {max_length}, more than the model's max_position_embeddings {positions} "
            f"({shape['_path']}): rows that long reach positions the model was not trained on"
        )
    yield from config.check_model_shape(shape)
    yield from features.active_features(config).check_model_shape(shape)


def shape_int(shape: Mapping[str, Any], key: str) -> int | None:
    """An integer field of the shape (None when absent or not an integer)."""
    value = shape.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
