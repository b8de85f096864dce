"""Method plugins, discovered lazily from the entry-point group `arctic.methods`.

A method package registers one entry point that names a `Method`: the method's name, its
recipe config class, its trainer class and (optionally) a click group of extra verbs, each
as a lazy `"module:attribute"` reference so that listing plugins imports nothing heavy.
Discovery never raises for one bad plugin: a plugin that fails to import, claims a name
another package claims, or wants another arctic-core is reported as broken, with why, and
every other command keeps working.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib import metadata
from typing import Any

import attrs
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from arctic_core import __version__ as CORE_VERSION

GROUP = "arctic.methods"


@attrs.frozen(kw_only=True)
class Method:
    """What a method package tells core about itself (the object its entry point names)."""

    name: str
    description: str
    config: str  # "module:ConfigClass", a TrainerConfig subclass
    trainer: str  # "module:TrainerClass"
    commands: str | None = None  # "module:click_group" with extra verbs (generate, eval, ...)
    core_version: str = ""  # PEP 440 specifier for arctic-core, e.g. ">=0.1,<0.2"

    def config_class(self) -> type:
        return load_reference(self.config)

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


def load_reference(reference: str) -> Any:
    """Import `"package.module:attribute"`."""
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _check_core_version(method: Method, package: str) -> str | None:
    if not method.core_version:
        return None
    try:
        wanted = SpecifierSet(method.core_version)
    except InvalidSpecifier:
        return f"{package} declares an invalid arctic-core range {method.core_version!r}"
    if Version(CORE_VERSION) in wanted:
        return None
    return f"{package} needs arctic-core {method.core_version}, but arctic-core {CORE_VERSION} is installed"


def _load(entry: metadata.EntryPoint, package: str, version: str) -> InstalledMethod:
    try:
        method = entry.load()
    except Exception as exc:  # a broken plugin must not break the CLI
        return InstalledMethod(
            name=entry.name, package=package, version=version, error=f"{type(exc).__name__}: {exc}"
        )
    if not isinstance(method, Method):
        return InstalledMethod(
            name=entry.name,
            package=package,
            version=version,
            error=f"entry point {entry.value} is not an arctic_core.plugins.Method",
        )
    problem = _check_core_version(method, package)
    if problem is None and method.name != entry.name:
        problem = f"entry point is named {entry.name!r} but the method calls itself {method.name!r}"
    if problem:
        return InstalledMethod(name=entry.name, package=package, version=version, error=problem)
    return InstalledMethod(name=entry.name, package=package, version=version, method=method)


def _entries() -> dict[str, list[tuple[metadata.EntryPoint, str, str]]]:
    found: dict[str, list[tuple[metadata.EntryPoint, str, str]]] = {}
    seen: set[tuple[str, str]] = set()
    for entry in metadata.entry_points(group=GROUP):
        dist = entry.dist
        package = dist.name if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        if (entry.name, package) in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add((entry.name, package))
        found.setdefault(entry.name, []).append((entry, package, version))
    return found


def method_names() -> list[str]:
    """Names of the installed methods, without importing any plugin."""
    return sorted(_entries())


@cache
def get(name: str) -> InstalledMethod | None:
    """The installed method called `name` (importing only its light plugin module)."""
    candidates = _entries().get(name)
    if not candidates:
        return None
    if len(candidates) > 1:
        packages = " and ".join(f"{pkg} {ver}" for _, pkg, ver in candidates)
        return InstalledMethod(
            name=name,
            package=candidates[0][1],
            version=candidates[0][2],
            error=f"method {name!r} is claimed by {packages}; uninstall one of them",
        )
    return _load(*candidates[0])


def installed() -> list[InstalledMethod]:
    return [m for m in (get(name) for name in method_names()) if m is not None]
