"""Writing a resolved config back out as a recipe (`arctic config show`)."""

from __future__ import annotations

from typing import Any

import tomli_w
import yaml

from arctic_core.recipe.convert import unstructure


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def render(config: Any, fmt: str = "yaml") -> str:
    """The config as YAML (None as null) or TOML (None keys left out: they are the defaults)."""
    data = unstructure(config)
    if fmt == "toml":
        return tomli_w.dumps(_drop_none(data))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
