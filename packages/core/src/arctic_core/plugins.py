"""Method plugins, discovered lazily from the entry-point group `arctic.methods`.

A method package registers one entry point that names a `Method`: the method's name, its
recipe config class, its trainer class and (optionally) a click group of extra verbs, each
as a lazy `"module:attribute"` reference so that listing plugins imports nothing heavy.
Discovery never raises for one bad plugin: a plugin that fails to import, claims a name
another package claims, or wants another arctic-core is reported as broken, with why, and
every other command keeps working.

The loading helpers here (`entries`, `load_entry`, `check_core_version`) also serve the
second group, `arctic.features` (`arctic_core.features`).
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from importlib import metadata
from typing import Any

import attrs
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from arctic_core import __version__ as CORE_VERSION
from arctic_core.kernels.registry import Kernel

GROUP = "arctic.methods"

ARCTIC_METHODS: dict[str, str] = {
    "sft": "arctic-sft",
    "dpo": "arctic-sft",
    "causal": "arctic-sft",
    "swiftkv": "arctic-swiftkv",
    "embed": "arctic-embed",
    "biencoder": "arctic-embed",
    "speculator": "arctic-speculator",
    "arctic-lstm-speculator": "arctic-speculator",
    "spec-decode": "arctic-speculator",
}
"""Recipe types (Arctic's and ArcticTraining's names) that an Arctic method package provides."""


@attrs.frozen(kw_only=True)
class Method:
    """What a method package tells core about itself (the object its entry point names)."""

    name: str
    description: str
    config: str  # "module:ConfigClass", a TrainerConfig subclass
    trainer: str  # "module:TrainerClass"
    commands: str | None = None  # "module:click_group" with extra verbs (generate, eval, ...)
    verify: str | None = None  # "module:function" returning `arctic verify` checks (docs/verify.md)
    plan: str | None = None  # "module:function" adjusting `arctic plan`'s PlanSetup (docs/plan.md)
    kernels: tuple[Kernel, ...] = ()  # its custom kernels (`arctic_core.kernels.registry`)
    core_version: str = ""  # PEP 440 specifier for arctic-core, e.g. ">=0.1,<0.2"
    same_as: str | None = None  # a method this one is another name of (`arctic rl` for `grpo`)

    def config_class(self) -> type:
        return load_reference(self.config, light=True)

    def trainer_class(self) -> type:
        return load_reference(self.trainer)


@attrs.frozen(kw_only=True)
class InstalledMethod:
    """One discovered plugin: `method` when usable, else `error` says why not."""

    name: str
    package: str
    version: str
    method: Method | None = None
    error: str | None = None

    @property
    def broken(self) -> bool:
        return self.method is None


def load_reference(reference: str, *, light: bool = False) -> Any:
    """Import `"package.module:attribute"`; `light`: without running the package's `__init__`
    when it is not imported yet (`import_light`)."""
    module_name, _, attribute = reference.partition(":")
    module = import_light(module_name) if light else importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def import_light(module_name: str) -> Any:
    """Import `package.module` without running `package/__init__.py` if that is not imported yet.

    Core reads a plugin's light modules this way (the entry point's plugin module, the recipe
    config class, the command group), so a method package's root may do what every transformers
    add-on does on import (register its models with the Auto classes, importing torch) while
    `arctic --help`, `arctic plugins` and `arctic config check` stay light. The module is
    executed once, under its own name: a later `import package` runs the package's `__init__`,
    and `import package.module` finds this module. Falls back to a plain import for anything
    else (a top-level module, a package as the module, a parent already imported, no source file).
    """
    import importlib.util
    import sys
    from pathlib import Path

    if module_name in sys.modules:
        return sys.modules[module_name]
    parent, _, child = module_name.rpartition(".")
    if not parent or "." in parent or parent in sys.modules:
        return importlib.import_module(module_name)
    package = importlib.util.find_spec(parent)  # finds the package, runs nothing
    locations = list(package.submodule_search_locations or []) if package else []
    files = [Path(location) / f"{child}.py" for location in locations]
    found = next((f for f in files if f.is_file()), None)
    spec = importlib.util.spec_from_file_location(module_name, found) if found else None
    if spec is None or spec.loader is None:
        return importlib.import_module(module_name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def check_core_version(wanted: str, package: str) -> str | None:
    """Why `package`, which wants arctic-core `wanted` (a PEP 440 range), cannot load; None if it can."""
    if not wanted:
        return None
    try:
        specifier = SpecifierSet(wanted)
    except InvalidSpecifier:
        return f"{package} declares an invalid arctic-core range {wanted!r}"
    if Version(CORE_VERSION) in specifier:
        return None
    return f"{package} needs arctic-core {wanted}, but arctic-core {CORE_VERSION} is installed"


def load_entry(entry: metadata.EntryPoint, kind: type[Any], package: str) -> tuple[Any, str | None]:
    """Load the `kind` object (`Method`, `Feature`) an entry point names: (object, None) or (None, why not).

    Never raises: a plugin that fails to import, names the wrong kind of object, calls itself
    by another name or wants another arctic-core comes back with the reason.
    """
    try:
        found: Any = load_reference(entry.value, light=True)  # not the package root (`import_light`)
    except Exception as exc:  # a broken plugin must not break the CLI
        return None, f"{type(exc).__name__}: {exc}"
    if not isinstance(found, kind):
        return None, f"entry point {entry.value} is not an {kind.__module__}.{kind.__qualname__}"
    problem = check_core_version(found.core_version, package)
    if problem is None and found.name != entry.name:
        problem = f"entry point is named {entry.name!r} but the plugin calls itself {found.name!r}"
    if problem:
        return None, problem
    return found, None


Entries = dict[str, list[tuple[metadata.EntryPoint, str, str]]]


IGNORE_ENV = "ARCTIC_IGNORE_PLUGINS"
"""Comma-separated distribution names whose plugins core does not load (as if not installed)."""


def entries(group: str) -> Entries:
    """The entry points of `group` by name, each with its distribution's name and version.

    Distributions named in `$ARCTIC_IGNORE_PLUGINS` are left out (e.g. to run without a plugin
    that is installed, or to test what a recipe does without it).
    """
    ignored = {name.strip().lower().replace("_", "-") for name in os.environ.get(IGNORE_ENV, "").split(",")}
    found: Entries = {}
    seen: set[tuple[str, str]] = set()
    for entry in metadata.entry_points(group=group):
        dist = entry.dist
        package = dist.name if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        if package.lower().replace("_", "-") in ignored:
            continue
        if (entry.name, package) in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add((entry.name, package))
        found.setdefault(entry.name, []).append((entry, package, version))
    return found


def claimed_twice(kind: str, name: str, candidates: list[tuple[metadata.EntryPoint, str, str]]) -> str:
    packages = " and ".join(f"{pkg} {ver}" for _, pkg, ver in candidates)
    return f"{kind} {name!r} is claimed by {packages}; uninstall one of them"


def _entries() -> Entries:
    return entries(GROUP)


def method_names() -> list[str]:
    """Names of the installed methods, without importing any plugin."""
    return sorted(_entries())


@cache
def same_method(a: str, b: str) -> bool:
    """Whether method names `a` and `b` name one method (equal, or one declared `same_as` the other)."""

    def original(name: str) -> str:
        found = get(name)
        return (found.method.same_as or name) if found is not None and found.method is not None else name

    return a == b or original(a) == original(b)


def get(name: str) -> InstalledMethod | None:
    """The installed method called `name` (importing only its light plugin module)."""
    candidates = _entries().get(name)
    if not candidates:
        return None
    entry, package, version = candidates[0]
    if len(candidates) > 1:
        twice = claimed_twice("method", name, candidates)
        return InstalledMethod(name=name, package=package, version=version, error=twice)
    method, error = load_entry(entry, Method, package)
    return InstalledMethod(name=name, package=package, version=version, method=method, error=error)


def installed() -> list[InstalledMethod]:
    return [m for m in (get(name) for name in method_names()) if m is not None]
