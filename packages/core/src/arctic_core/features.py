"""Feature plugins: recipe keys and model, loader and batch transforms that every method gets.

A method is what `type` names; a feature is something any method's recipe can switch on
(arctic-alst's `sequence_parallel_size`, `tiled_mlp_compute`, ...). A feature package
registers one entry point in the group `arctic.features` that names a `Feature`: its name,
a `"module:Class"` for its config (a frozen, keyword-only attrs class whose fields, each made
with `arctic_core.config.setting`, become top-level recipe keys) and a `"module:Class"` for
its hooks (a `FeatureHooks` subclass). Discovery is lazy and never raises for one bad plugin,
as for methods (`arctic_core.plugins`).

When a recipe loads, `recipe_config_class` adds the keys of every installed feature to the
method's config class, so they are typed, validated and documented like core's own keys.
A feature is on when one of its keys is off its default. A recipe that sets a key of one of
Arctic's own features (`KNOWN_FEATURE_KEYS`) without its package installed is refused,
naming the package, unless the value is the neutral one (which changes nothing).

The trainer asks `active_features(config)` for a `FeatureSet` and calls its hooks at fixed
points of the run (`parallel_sizes`, `before_model`, `transform_model`, `transform_frozen`,
`wrap_loader`, `prepare_batch`, and `subscribe` to the loop's events); with no feature on, every
call does nothing.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from arctic_core import plugins
from arctic_core.errors import ArcticError, RecipeError
from arctic_core.kernels.registry import Kernel

if TYPE_CHECKING:
    import torch

    from arctic_core.config import TrainerConfig
    from arctic_core.engine.loop import Events
    from arctic_core.trainer import Trainer

GROUP = "arctic.features"


class KnownKey(NamedTuple):
    """A recipe key of one of Arctic's own features: the package to install, and its neutral value."""

    package: str
    neutral: Any


KNOWN_FEATURE_KEYS: dict[str, KnownKey] = {
    "sequence_parallel_size": KnownKey("arctic-alst", 1),
    "tiled_mlp_compute": KnownKey("arctic-alst", False),
    "activation_checkpoint_cpu_offload": KnownKey("arctic-alst", False),
}
"""Keys that ArcticTraining recipes use and an Arctic feature package provides."""


@attrs.frozen(kw_only=True)
class Feature:
    """What a feature package tells core about itself (the object its entry point names)."""

    name: str
    description: str
    config: str  # "module:Class": frozen kw_only attrs class, one field per top-level recipe key
    hooks: str  # "module:Class": a FeatureHooks subclass
    verify: str | None = None  # "module:function" returning `arctic verify` checks (docs/verify.md)
    plan: str | None = None  # "module:function" adjusting `arctic plan`'s PlanSetup (docs/plan.md)
    kernels: tuple[Kernel, ...] = ()  # its custom kernels (`arctic_core.kernels.registry`)
    core_version: str = ""  # PEP 440 specifier for arctic-core, e.g. ">=0.1,<0.2"

    def config_class(self) -> type:
        return plugins.load_reference(self.config, light=True)

    def hooks_class(self) -> type[FeatureHooks]:
        return plugins.load_reference(self.hooks)


@attrs.frozen(kw_only=True)
class InstalledFeature:
    """One discovered feature: `feature` and its `config_class` when usable, else `error` says why not."""

    name: str
    package: str
    version: str
    feature: Feature | None = None
    config_class: type | None = None
    error: str | None = None

    @property
    def broken(self) -> bool:
        return self.feature is None


# --- discovery ----------------------------------------------------------------------------------


def _load(name: str, candidates: list[Any]) -> InstalledFeature:
    entry, package, version = candidates[0]
    found = {"name": name, "package": package, "version": version}
    if len(candidates) > 1:
        return InstalledFeature(**found, error=plugins.claimed_twice("feature", name, candidates))
    feature, error = plugins.load_entry(entry, Feature, package)
    if feature is None:
        return InstalledFeature(**found, error=error)
    try:
        config_class = feature.config_class()
    except Exception as exc:  # a broken plugin must not break the CLI
        return InstalledFeature(**found, error=f"config {feature.config}: {type(exc).__name__}: {exc}")
    if not attrs.has(config_class) or any(f.default is attrs.NOTHING for f in attrs.fields(config_class)):
        error = f"config {feature.config} must be an attrs class whose every field has a default"
        return InstalledFeature(**found, error=error)
    return InstalledFeature(**found, feature=feature, config_class=config_class)


@cache
def _discover() -> dict[str, InstalledFeature]:
    found = {name: _load(name, c) for name, c in sorted(plugins.entries(GROUP).items())}
    owners: dict[str, list[str]] = {}
    for item in found.values():
        if item.config_class is not None:
            for key in attrs.fields_dict(item.config_class):
                owners.setdefault(key, []).append(item.name)
    for key, names in owners.items():
        if len(names) > 1:
            for name in names:
                others = " and ".join(repr(n) for n in names if n != name)
                error = f"recipe key {key!r} is also claimed by feature {others}; uninstall one of them"
                found[name] = attrs.evolve(found[name], feature=None, config_class=None, error=error)
    return found


def feature_names() -> list[str]:
    """Names of the installed features, without importing any plugin."""
    return sorted(plugins.entries(GROUP))


def get(name: str) -> InstalledFeature | None:
    """The installed feature called `name`."""
    return _discover().get(name)


def installed() -> list[InstalledFeature]:
    return list(_discover().values())


def _working() -> tuple[InstalledFeature, ...]:
    return tuple(f for f in _discover().values() if not f.broken)


# --- recipe keys ----------------------------------------------------------------------------------


def _default(field: attrs.Attribute) -> Any:
    if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        return field.default.factory()  # type: ignore[union-attr]
    return field.default


def _rebuild(base: type, values: dict[str, Any]) -> Any:
    """Unpickle a config of a class `recipe_config_class` made (such classes live in no module)."""
    instance: Any = object.__new__(recipe_config_class(base))
    for key, value in values.items():
        object.__setattr__(instance, key, value)
    return instance


def _field_copy(field: attrs.Attribute) -> Any:
    return attrs.field(
        default=field.default,
        validator=field.validator,
        converter=field.converter,
        metadata=field.metadata,
        kw_only=True,
    )


@cache
def _combined(base: type, features: tuple[InstalledFeature, ...]) -> type:
    own = attrs.fields_dict(base)
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {}
    for found in features:
        assert found.config_class is not None
        hints = typing.get_type_hints(found.config_class)
        for field in attrs.fields(found.config_class):
            if field.name in own:
                raise ArcticError(
                    f"feature {found.name!r} ({found.package} {found.version}) adds the recipe key "
                    f"{field.name!r}, which {base.__qualname__} already has"
                )
            annotations[field.name] = hints[field.name]
            namespace[field.name] = _field_copy(field)
    base_post_init = getattr(base, "__attrs_post_init__", None)

    def __attrs_post_init__(self: Any) -> None:
        if base_post_init is not None:
            base_post_init(self)
        for found in features:  # the feature class's own validators and __attrs_post_init__
            assert found.config_class is not None
            keys = attrs.fields_dict(found.config_class)
            settings = found.config_class(**{key: getattr(self, key) for key in keys})
            for key in keys:
                object.__setattr__(self, key, getattr(settings, key))

    def __reduce__(self: Any) -> tuple[Any, ...]:
        return _rebuild, (base, {f.name: getattr(self, f.name) for f in attrs.fields(type(self))})

    namespace.update(
        __annotations__=annotations,
        __module__=base.__module__,
        __qualname__=base.__qualname__,
        __doc__=base.__doc__,
        __attrs_post_init__=__attrs_post_init__,
        __reduce__=__reduce__,
        __arctic_features__=tuple(f.name for f in features),
    )
    return attrs.frozen(kw_only=True)(type(base.__name__, (base,), namespace))


def recipe_config_class(base: type) -> type:
    """`base` (a method's config class) plus a top-level key per field of every installed feature.

    The class is built once per base and cached; with no feature installed it is `base` itself.
    """
    features = _working()
    if not features or "__arctic_features__" in base.__dict__:
        return base
    return _combined(base, features)


def _is_neutral(value: Any, neutral: Any) -> bool:
    return type(value) is type(neutral) and bool(value == neutral)  # `true` is not 1


def missing_feature_problems(raw: dict[str, Any], config_class: type) -> list[tuple[str | None, str]]:
    """Check a recipe's top-level keys against the features that `config_class` has.

    A key of one of Arctic's features that is not installed is dropped from `raw`: silently
    when its value is the neutral one, and as a problem naming the package otherwise (so the
    rest of the recipe is still checked). An unknown key while a feature plugin is broken is a
    problem naming that plugin.
    """
    problems: list[tuple[str | None, str]] = []
    fields = attrs.fields_dict(config_class)
    for key, known in KNOWN_FEATURE_KEYS.items():
        if key not in raw or key in fields:
            continue
        value = raw.pop(key)
        if _is_neutral(value, known.neutral):
            continue
        broken = [f for f in installed() if f.broken and f.package == known.package]
        if broken:
            raise ArcticError(f"{key} comes from {known.package}, whose feature is broken: {broken[0].error}")
        problems.append(
            (key, f"needs the {known.package} package, which is not installed: pip install {known.package}")
        )
    broken = [f for f in installed() if f.broken]
    aliases = getattr(config_class, "__recipe_aliases__", {})
    for key in list(raw):
        if broken and key not in fields and key not in aliases and not difflib.get_close_matches(key, fields):
            listed = "; ".join(f"{f.name!r} ({f.package} {f.version}): {f.error}" for f in broken)
            problems.append((key, f"unknown key; it may belong to a feature plugin that is broken: {listed}"))
            del raw[key]
    return problems


# --- hooks ------------------------------------------------------------------------------------------


class FeatureHooks:
    """What a feature does to a run. Every hook does nothing unless a subclass overrides it.

    Built with the run's config (which holds the feature's keys as attributes, e.g.
    `self.config.sequence_parallel_size`) and the `Feature` it belongs to. Import heavy
    libraries inside the hooks or at the top of the hooks module, never in the config module.
    """

    def __init__(self, config: TrainerConfig, feature: Feature):
        self.config = config
        self.feature = feature

    @property
    def name(self) -> str:
        return self.feature.name

    def settings(self) -> dict[str, Any]:
        """This feature's keys and their values in the run's config."""
        keys = attrs.fields(self.feature.config_class())
        return {f.name: getattr(self.config, f.name, _default(f)) for f in keys}

    def enabled(self) -> bool:
        """Whether the feature takes part in this run (default: one of its keys is off its default)."""
        defaults = {f.name: _default(f) for f in attrs.fields(self.feature.config_class())}
        return any(value != defaults[key] for key, value in self.settings().items())

    def check(self) -> None:
        """Cross-key checks at recipe load (`arctic config check`): raise RecipeError(path=key)."""

    def check_model_shape(self, shape: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        """The feature's keys against the local model's `config.json` (`TrainerConfig.check_model_shape`)."""
        return iter(())

    def parallel_sizes(self) -> dict[str, int]:
        """Parallel group sizes the feature needs, e.g. {"sequence_parallel_size": 2}."""
        return {}

    def before_model(self, trainer: Trainer) -> None:
        """Runs before the model is built: patch classes here (tiled MLP, activation offload)."""

    def transform_model(self, trainer: Trainer, model: torch.nn.Module) -> torch.nn.Module:
        """The built model, changed (after the method's own `transform_model`)."""
        return model

    def transform_frozen(self, trainer: Trainer, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen companion (reference, teacher), changed once built (e.g. the attention that reads
        sequence-parallel slices); the network itself, not its DeepSpeed engine."""
        return model

    def wrap_loader(self, trainer: Trainer, loader: Any) -> Any:
        """The training data loader, wrapped (e.g. to split each sequence over a group of ranks)."""
        return loader

    def prepare_batch(self, trainer: Trainer, batch: dict[str, Any]) -> dict[str, Any]:
        """A micro-batch on its device, changed before the forward pass."""
        return batch

    def subscribe(self, trainer: Trainer, events: Events) -> None:
        """Subscribe to the loop's events (`arctic_core.engine.loop.Events`): default none."""


@attrs.frozen
class FeatureSet:
    """The hooks of the features that are on, applied in order (by feature name)."""

    hooks: tuple[FeatureHooks, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hooks)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hooks]

    def check(self) -> None:
        for hooks in self.hooks:
            hooks.check()
        self.parallel_sizes()

    def check_model_shape(self, shape: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        for hooks in self.hooks:
            yield from hooks.check_model_shape(shape)

    def parallel_sizes(self) -> dict[str, int]:
        """Every feature's parallel sizes, merged; two features wanting different sizes is an error."""
        merged: dict[str, tuple[int, str]] = {}
        for hooks in self.hooks:
            for key, size in hooks.parallel_sizes().items():
                if key in merged and merged[key][0] != size:
                    raise RecipeError(
                        f"feature {merged[key][1]!r} needs {merged[key][0]} and feature "
                        f"{hooks.name!r} needs {size}",
                        path=key,
                    )
                merged[key] = (size, hooks.name)
        return {key: size for key, (size, _) in merged.items()}

    def before_model(self, trainer: Trainer) -> None:
        for hooks in self.hooks:
            hooks.before_model(trainer)

    def transform_model(self, trainer: Trainer, model: torch.nn.Module) -> torch.nn.Module:
        for hooks in self.hooks:
            model = hooks.transform_model(trainer, model)
        return model

    def transform_frozen(self, trainer: Trainer, model: torch.nn.Module) -> torch.nn.Module:
        for hooks in self.hooks:
            model = hooks.transform_frozen(trainer, model)
        return model

    def wrap_loader(self, trainer: Trainer, loader: Any) -> Any:
        for hooks in self.hooks:
            loader = hooks.wrap_loader(trainer, loader)
        return loader

    def prepare_batch(self, trainer: Trainer, batch: dict[str, Any]) -> dict[str, Any]:
        for hooks in self.hooks:
            batch = hooks.prepare_batch(trainer, batch)
        return batch

    def subscribe(self, trainer: Trainer, events: Events) -> None:
        for hooks in self.hooks:
            hooks.subscribe(trainer, events)


NO_FEATURES = FeatureSet()


def _off_default(config: Any, config_class: type) -> bool:
    return any(getattr(config, f.name, _default(f)) != _default(f) for f in attrs.fields(config_class))


def active_features(config: TrainerConfig) -> FeatureSet:
    """The features this run uses, checked; `NO_FEATURES` (free) when none is installed or on.

    Only features whose keys the config's class has and whose keys are off their defaults
    are considered, so the hooks module of a feature that is off is never imported.
    """
    names: tuple[str, ...] = getattr(type(config), "__arctic_features__", ())
    chosen: list[FeatureHooks] = []
    for name in names:
        found = get(name)
        if found is None or found.feature is None or found.config_class is None:
            continue
        if not _off_default(config, found.config_class):
            continue
        try:
            hooks_class = found.feature.hooks_class()
        except Exception as exc:
            raise ArcticError(
                f"feature {name!r} ({found.package} {found.version}) is broken: "
                f"hooks {found.feature.hooks}: {type(exc).__name__}: {exc}"
            ) from None
        if not (isinstance(hooks_class, type) and issubclass(hooks_class, FeatureHooks)):
            raise ArcticError(f"feature {name!r}: {found.feature.hooks} is not a FeatureHooks subclass")
        hooks = hooks_class(config, found.feature)
        if hooks.enabled():
            chosen.append(hooks)
    if not chosen:
        return NO_FEATURES
    features = FeatureSet(tuple(chosen))
    features.check()
    return features


def check_recipe(config: TrainerConfig, source: str | None = None) -> None:
    """Run the checks of every feature the recipe turns on (at load, so `arctic config check` runs them)."""
    try:
        active_features(config)
    except RecipeError as exc:
        raise exc.with_source(source) if source else exc from None
