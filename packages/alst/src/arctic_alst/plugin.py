"""Entry point of arctic-alst: the `alst` feature (light imports only)."""

from arctic_core.features import Feature

alst = Feature(
    name="alst",
    description="Long sequences: Ulysses sequence parallelism, tiled MLP, activation-checkpoint CPU offload.",
    config="arctic_alst.config:ALSTConfig",
    hooks="arctic_alst.hooks:ALSTHooks",
    verify="arctic_alst.verify:checks",
    plan="arctic_alst.plan:plan",
    core_version=">=0.1,<0.2",
)
