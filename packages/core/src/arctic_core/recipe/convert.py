"""The one cattrs converter that turns a recipe dict into config objects, and back.

Primitive fields are strict (a string is not silently a bool), numbers accept the human
forms of `human.py`, and every failure is flattened into `RecipeError`s that name the full
key path (`data.sources[1].split`) with a did-you-mean for unknown keys.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from arctic_core.config import Ranks, SourceConfig
from arctic_core.errors import FieldError, RecipeError
from arctic_core.recipe.human import to_float, to_int


def _strict_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


def _strict_str(value: Any, _: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def _apply_aliases(cls: type, value: Mapping[str, Any]) -> Mapping[str, Any]:
    """Rename alias keys (`learning_rate` -> `lr`) that a class declares."""
    aliases: dict[str, str] = getattr(cls, "__recipe_aliases__", {})
    if not any(key in value for key in aliases):
        return value
    renamed = dict(value)
    for alias, name in aliases.items():
        if alias in renamed:
            if name in renamed:
                raise FieldError(alias, f"is an alias of {name!r}; set one of them, not both")
            renamed[name] = renamed.pop(alias)
    return renamed


def _table_hook_factory(converter: cattrs.Converter):
    def factory(cls: type) -> Any:
        generated: Any = make_dict_structure_fn(
            cls, converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
        )

        def structure(value: Any, _: Any) -> Any:
            if isinstance(value, cls):
                return value
            if not isinstance(value, Mapping):
                raise ValueError(f"expected a table, got {value!r}")
            return generated(_apply_aliases(cls, value), cls)

        return structure

    return factory


def _ranks(value: Any, _: Any) -> list[int] | str:
    """`logger.print_output_ranks`: a list of ranks, or "*" (ArcticTraining's "every rank")."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ValueError(f"expected a list of ranks or '*', got {value!r}")


def _source_hook(converter: cattrs.Converter):
    table = _table_hook_factory(converter)(SourceConfig)

    def structure(value: Any, cls: Any) -> SourceConfig:
        if isinstance(value, str):
            return SourceConfig.from_string(value)
        return table(value, cls)

    return structure


def make_converter() -> cattrs.Converter:
    """A converter for every attrs config class, core's and the plugins'."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(int, lambda v, _: to_int(v))
    converter.register_structure_hook(float, lambda v, _: to_float(v))
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(SourceConfig, _source_hook(converter))
    converter.register_structure_hook_func(lambda t: t == Ranks, _ranks)
    converter.register_structure_hook_factory(attrs.has, _table_hook_factory(converter))
    converter.register_unstructure_hook(tuple, list)
    return converter


CONVERTER = make_converter()


def structure(data: Mapping[str, Any], cls: type, source: str | None = None) -> Any:
    """Build `cls` from a recipe dict; raises one RecipeError listing every problem."""
    try:
        return CONVERTER.structure(data, cls)
    except Exception as exc:
        problems = list(_flatten(exc, ""))
        if not problems:
            raise
        found = [(path or None, _elsewhere(cls, path, message)) for path, message in problems]
        raise RecipeError.from_problems(found, source=source) from None


def _table_class(hint: Any) -> type | None:
    """The attrs class a field holds: itself, in a list, or optional."""
    if isinstance(hint, type) and attrs.has(hint):
        return hint
    for arg in typing.get_args(hint):
        found = _table_class(arg)
        if found is not None:
            return found
    return None


def key_paths(cls: type, prefix: str = "") -> dict[str, str]:
    """Every key path of a recipe class (lists as `name[]`), aliases included, mapped to its path."""
    found: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        path = prefix + field.name
        found[path] = path
        inner = _table_class(hints[field.name])
        if inner is not None:
            many = typing.get_origin(hints[field.name]) is list
            found.update(key_paths(inner, path + ("[]." if many else ".")))
    for alias, name in getattr(cls, "__recipe_aliases__", {}).items():
        found[prefix + alias] = prefix + name
    return found


_DEEPSPEED_KEYS = {
    "zero_stage": "deepspeed.zero_optimization.stage",
    "zero_optimization": "deepspeed.zero_optimization",
    "gradient_clipping": "deepspeed.gradient_clipping",
    "train_batch_size": "micro_batch_size and gradient_accumulation_steps",
    "train_micro_batch_size_per_gpu": "micro_batch_size",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
}


def _elsewhere(cls: type, path: str, message: str) -> str:
    """For an unknown key with no near match in its own table, the tables where it (or a near name) is."""
    if not message.startswith("unknown key; known keys"):
        return message
    leaf = path.rsplit(".", 1)[-1].split("[", 1)[0]
    paths = key_paths(cls)
    leaves: dict[str, list[str]] = {}
    for full in paths:
        leaves.setdefault(full.rsplit(".", 1)[-1], []).append(full)
    if leaf in _DEEPSPEED_KEYS and "." not in path:
        return f"unknown key here; did you mean {_DEEPSPEED_KEYS[leaf]}?"
    names = leaves.get(leaf) or [
        p for near in difflib.get_close_matches(leaf, list(leaves), n=2, cutoff=0.75) for p in leaves[near]
    ]
    if not names:
        return message
    shown = [p if paths[p] == p else f"{p} (alias of {paths[p]})" for p in names[:3]]
    return f"unknown key here; did you mean {' or '.join(shown)}?"


def unstructure(config: Any) -> dict[str, Any]:
    return _plain(CONVERTER.unstructure(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _join(path: str, segment: str) -> str:
    if segment.startswith("["):
        return path + segment
    return f"{path}.{segment}" if path else segment


def _segment(exc: BaseException) -> str | None:
    for note in getattr(exc, "__notes__", []):
        if hasattr(note, "name"):
            return str(note.name)
        if hasattr(note, "index"):
            return f"[{note.index}]"
    return None


def _flatten(exc: BaseException, path: str):
    """Yield (key path, message) for every leaf problem inside a cattrs error."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if exc.cl and attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            tip = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            yield _join(path, key), f"unknown key{tip}"
        return
    if isinstance(exc, (ClassValidationError, IterableValidationError, ExceptionGroup)):
        for sub in exc.exceptions:
            segment = _segment(sub)
            yield from _flatten(sub, _join(path, segment) if segment else path)
        return
    if isinstance(exc, FieldError):
        yield _join(path, exc.field), exc.message
        return
    if isinstance(exc, KeyError):
        yield path, "is required but missing"
        return
    if isinstance(exc, (ValueError, TypeError)):
        yield path, str(exc)
        return
    # Not a recipe problem: let the caller re-raise it with its traceback.
    return
