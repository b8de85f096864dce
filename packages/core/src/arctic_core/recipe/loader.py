"""Reading a recipe: file -> dict -> `--set` overrides -> user code -> config object.

This is the whole of "parsing": it reads the recipe file (and the `code:` file, which only
defines classes), never creates a folder, starts distributed or opens a connection.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from arctic_core import features, plugins, registry
from arctic_core.compat import arctictraining
from arctic_core.config import TrainerConfig
from arctic_core.errors import ArcticError, RecipeError
from arctic_core.kernels import registry as kernel_registry
from arctic_core.recipe.convert import structure
from arctic_core.usercode import find_user_code, load_user_code, written_for_arctictraining


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: merged keys may be overridden, the explicit ones are checked
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


MAX_RECIPE_BYTES = 1 << 20
"""A recipe file larger than this (1 MiB) is refused: recipes are a few kB, chat templates included."""
MAX_RECIPE_NODES = 100_000
"""The most values a YAML recipe may expand to once its aliases (`*name`, `<<: *name`) are followed."""


def _expanded_sizes(root: yaml.Node) -> dict[int, int]:
    """How many values each node of a composed YAML document stands for, aliases followed.

    An alias is the anchored node object itself in PyYAML's node graph, so a shared node is
    counted once per use but computed once (memoised): linear in the file, never in the expansion.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes.get(id(child), 0) for child in children)
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _blow_up_path(root: yaml.Node, sizes: dict[int, int]) -> str:
    """The key path down to the mapping entry whose value alone expands past the bound."""
    path, node = [], root
    while isinstance(node, yaml.MappingNode):
        over = [(k, v) for k, v in node.value if sizes[id(v)] > MAX_RECIPE_NODES]
        if not over:
            break
        key, node = over[0]
        path.append(str(key.value) if isinstance(key, yaml.ScalarNode) else "?")
    return ".".join(path) or "(recipe)"


def _load_yaml(text: str) -> Any:
    """YAML with unique keys, refusing a document whose aliases expand past `MAX_RECIPE_NODES`."""
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        sizes = _expanded_sizes(root)
        if sizes[id(root)] > MAX_RECIPE_NODES:
            raise RecipeError(
                f"expands to {sizes[id(root)]:,} values through YAML aliases/merges (the limit is "
                f"{MAX_RECIPE_NODES:,}): a recipe never needs that many; is it an alias bomb?",
                path=_blow_up_path(root, sizes),
            )
        return loader.construct_document(root)
    finally:
        loader.dispose()


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe file as a plain dict (TOML by suffix .toml, YAML otherwise).

    Bounded: a file over `MAX_RECIPE_BYTES`, or YAML whose aliases expand past
    `MAX_RECIPE_NODES` values, is refused (exit 2) before it is built.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError("recipe file not found", source=str(path))
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"the file is {size:,} bytes; a recipe may be at most {MAX_RECIPE_BYTES:,}", source=str(path)
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = _load_yaml(text)
    except RecipeError as exc:
        raise exc.with_source(str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"invalid TOML: {exc}", source=str(path)) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid YAML: {exc}", source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a table of keys, not {type(data).__name__}", source=str(path))
    return data


# Keys that name an input file or folder, in any table but [deepspeed], and the lists whose
# plain-string items are data sources: a relative value that exists beside the recipe file
# is read from there, so a recipe runs from any working directory.
_INPUT_KEYS = frozenset({"name_or_path", "path", "chat_template", "code"})
_SOURCE_LISTS = frozenset({"sources", "eval_sources"})


def _beside(value: Any, folder: Path) -> str | None:
    """`value` as an absolute path when it is relative and names something in `folder`."""
    if not isinstance(value, str) or not value or "\n" in value or "{" in value or "://" in value:
        return None
    if Path(value).is_absolute() or value.startswith("~"):
        return None
    candidate = folder / value
    return os.path.abspath(candidate) if candidate.exists() else None


def _source_beside(value: str, folder: Path) -> str | None:
    """A source string (`path` or `path:split`) with its path resolved against `folder`."""
    whole = _beside(value, folder)
    if whole is not None:
        return whole
    name, sep, split = value.rpartition(":")
    resolved = _beside(name, folder) if sep else None
    return f"{resolved}:{split}" if resolved is not None else None


def resolve_relative_paths(data: Any, folder: Path, key: str = "") -> Any:
    """Make the recipe's relative input paths that exist under `folder` absolute, in place.

    Values that name nothing there are kept as given: hub ids, and paths meant relative to
    the working directory. Output locations (`output_dir`, `cache_dir`) are never touched.
    """
    if isinstance(data, dict):
        for name, value in data.items():
            if name == "deepspeed":
                continue
            resolved = _beside(value, folder) if name in _INPUT_KEYS else None
            if resolved is not None:
                data[name] = resolved
            else:
                resolve_relative_paths(value, folder, name)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            resolved = (
                _source_beside(item, folder) if key in _SOURCE_LISTS and isinstance(item, str) else None
            )
            if resolved is not None:
                data[i] = resolved
            else:
                resolve_relative_paths(item, folder, key)
    return data


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_key_path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    position = 0
    for match in _SEGMENT.finditer(key):
        gap = key[position : match.start()]
        if gap not in ("", "."):
            raise RecipeError(f"cannot read key path {key!r}", path="--set")
        parts.append(match[1] if match[1] is not None else int(match[2]))
        position = match.end()
    if not parts or position != len(key) or not isinstance(parts[0], str):
        raise RecipeError(f"cannot read key path {key!r}", path="--set")
    return parts


def _parse_value(text: str) -> Any:
    """A TOML literal (`3e-4`, `true`, `[1, 2]`, `{a = 1}`), else the bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _source_table(text: str) -> dict[str, Any]:
    """A data source written as a string, as the table it stands for (`name:split` kept)."""
    from arctic_core.config import SourceConfig

    source = SourceConfig.from_string(text)
    table: dict[str, Any] = {"name_or_path": source.name_or_path}
    if source.split is not None:
        table["split"] = source.split
    return table


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (`data.sources[0].split=train`) to a recipe dict."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise RecipeError(f"expected key.path=value, got {override!r}", path="--set")
        parts = _parse_key_path(key.strip())
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            following = parts[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise RecipeError(f"{key}: index {part} is out of range", path="--set")
                if isinstance(node[part], str) and isinstance(following, str):
                    node[part] = _source_table(node[part])  # a source given as a string
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise RecipeError(f"{key}: {part!r} is not inside a table", path="--set")
                node = node.setdefault(part, [] if isinstance(following, int) else {})
        last = parts[-1]
        value = _parse_value(raw.strip())
        if isinstance(last, int):
            if not isinstance(node, list) or last > len(node):
                raise RecipeError(f"{key}: index {last} is out of range", path="--set")
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"{key}: {last!r} is not inside a table", path="--set")
            node[last] = value
    return data


@attrs.frozen
class Recipe:
    """A resolved recipe: its config and where the trainer comes from."""

    config: TrainerConfig
    trainer_ref: str | type  # a plugin's "module:Class", or a class that user code registered
    path: Path | None
    notes: tuple[str, ...] = ()  # warnings: keys kept for ArcticTraining but not acted on, ...

    def trainer_class(self) -> type:
        if isinstance(self.trainer_ref, str):
            return plugins.load_reference(self.trainer_ref)
        return self.trainer_ref


_PORTING = "docs/arctictraining.md, 'Trainer files'"


def _import_user_code(code: Any, type_name: str, folder: Path | None, source: str, notes: list[str]) -> None:
    """Import the `code:` file; or, when `code` is unset, a `train.py` found beside the recipe or in the
    working directory only if `type_name` is not an installed method (and say so). An ArcticTraining
    file is never imported: with an Arctic method's type Arctic's own method is used."""
    if code is not None and not isinstance(code, str):
        raise RecipeError(f"expected a file path, got {code!r}", path="code", source=source)
    try:
        found = find_user_code(code, folder)
        if found is not None and written_for_arctictraining(found):
            method = plugins.get(type_name)
            if method is None or method.method is None:
                raise RecipeError(
                    f"{found} is an ArcticTraining trainer file (it imports arctic_training) and type "
                    f"{type_name!r} is not a method of an installed Arctic package: ArcticTraining "
                    f"trainer files need porting to Arctic (see {_PORTING})",
                    path="code",
                )
            notes.append(
                f"code: {found} is written for ArcticTraining (it imports arctic_training); type "
                f"{type_name!r} is Arctic's own method (from {method.package}), which is used instead "
                "of the file, and the file is not imported"
            )
            return
        if found is None:
            return
        if code is None and plugins.get(type_name) is not None:
            return  # an unasked-for train.py is run only when the type needs it (not an installed method)
        load_user_code(str(found))
        if code is None:
            notes.append(f"imported {found} (no `code:` set): it defines the recipe's type {type_name!r}")
    except RecipeError as exc:
        raise exc.with_source(source) from None
    except Exception as exc:
        frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
        user_frames = [f for f in frames if "importlib" not in f and "arctic_core" not in f]
        raise ArcticError("the recipe's code file failed to import:\n" + "".join(user_frames)) from None


def resolve_type(type_name: str, source: str, method: str | None = None) -> tuple[type, str | type]:
    """The config class and trainer for a recipe `type`."""
    if (
        method is not None
        and plugins.get(type_name) is not None
        and not plugins.same_method(method, type_name)
    ):
        raise RecipeError(
            f"the recipe's type is {type_name!r}, not {method!r}: run it with `arctic {type_name} ...` "
            "(or `arctic train`, which takes any type)",
            path="type",
            source=source,
        )
    found = plugins.get(type_name)
    if found is not None:
        if found.method is None:
            raise ArcticError(
                f"method {type_name!r} ({found.package} {found.version}) is broken: {found.error}"
            )
        return found.method.config_class(), found.method.trainer
    trainer = registry.get_trainer(type_name)
    if trainer is not None:
        return trainer.config_class, trainer  # type: ignore[attr-defined]
    package = plugins.ARCTIC_METHODS.get(type_name)
    if package is not None:
        raise RecipeError(
            f"the {type_name!r} method comes with the {package} package, which is not installed: "
            f"pip install {package}",
            path="type",
            source=source,
        )
    known = sorted(set(plugins.method_names()) | set(registry.trainer_names()))
    hint = difflib.get_close_matches(type_name, known, n=1)
    tip = f" (did you mean {hint[0]!r}?)" if hint else ""
    listed = ", ".join(known) if known else "none (install a method package such as arctic-sft)"
    raise RecipeError(
        f"unknown type {type_name!r}{tip}. Installed types: {listed}", path="type", source=source
    )


def _blame_overrides(
    problems: list[tuple[str | None, str]], overrides: Sequence[str]
) -> list[tuple[str | None, str]]:
    """Problems whose key came from `--set` say so, rather than blaming the recipe file."""
    keys = [override.partition("=")[0].strip() for override in overrides]
    blamed: list[tuple[str | None, str]] = []
    for path, message in problems:
        from_set = path is not None and any(path == k or path.startswith((k + ".", k + "[")) for k in keys)
        blamed.append((f"--set {path}" if from_set else path, message))
    return blamed


def load_recipe(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    data: Mapping[str, Any] | None = None,
    method: str | None = None,
) -> Recipe:
    """Read, override and check a recipe; `method` fixes the type (`arctic sft train`)."""
    source = str(path) if path is not None else "<recipe>"
    if data is not None:
        raw = dict(data)
    else:  # paths in the file are relative to it; those in `--set` to the working directory
        raw = resolve_relative_paths(read_recipe(path), Path(path).parent)  # type: ignore[arg-type]
    try:
        raw = apply_overrides(raw, overrides)
    except RecipeError as exc:
        raise exc.with_source(source) from None
    if method is not None:
        raw.setdefault("type", method)
    type_name = raw.setdefault("type", TrainerConfig.__attrs_attrs__.type.default)  # type: ignore[attr-defined]
    if not isinstance(type_name, str):
        raise RecipeError(f"expected a string, got {type_name!r}", path="type", source=source)
    notes: list[str] = []
    folder = Path(path).parent if path is not None else None
    _import_user_code(raw.get("code"), type_name, folder, source, notes)
    config_class, trainer_ref = resolve_type(type_name, source, method)
    logger = raw.setdefault("logger", {})
    if isinstance(logger, dict) and path is not None:
        logger.setdefault("output_dir", f"runs/{Path(path).stem}")
    config_class = features.recipe_config_class(config_class)  # + installed features' keys
    problems = features.missing_feature_problems(raw, config_class)
    compat_problems, compat_notes = arctictraining.translate(raw, config_class)  # its spellings -> Arctic's
    problems += compat_problems
    notes += compat_notes
    alias_problems, alias_notes = kernel_registry.translate_deprecated(
        raw, config_class
    )  # loss_kernel -> kernels
    problems += alias_problems
    notes += alias_notes
    try:
        config = structure(raw, config_class, source=source)
    except RecipeError as exc:
        problems += exc.problems
    if problems:
        raise RecipeError.from_problems(_blame_overrides(problems, overrides), source=source)
    features.check_recipe(config, source)
    return Recipe(
        config=config,
        trainer_ref=trainer_ref,
        path=Path(path) if path is not None else None,
        notes=tuple(notes),
    )
