"""The bundled recipes load; the feature's keys are checked and refused without the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_core.errors import RecipeError
from arctic_core.features import active_features
from arctic_core.recipe import bundled_recipes, load_recipe

RECIPES = sorted(bundled_recipes("arctic_alst").glob("*.yaml"))


def arctic(*args: str, ignore: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ARCTIC_IGNORE_PLUGINS": ignore}
    return subprocess.run(
        [sys.executable, "-m", "arctic_core", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_bundled_recipes_load_with_arctictraining_keys(recipe):
    config = load_recipe(recipe).config
    features = active_features(config)
    if "baseline" in recipe.name:
        assert not features
    else:
        assert (
            features.names == ["alst"]
            and config.tiled_mlp_compute
            and config.activation_checkpoint_cpu_offload
        )
        assert features.parallel_sizes() == ({"sequence_parallel_size": 8} if "sp8" in recipe.name else {})


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(f'type = "sft"\n{extra}\n[model]\nname_or_path = "some/model"\n')
    return path


def test_sequence_parallel_size_without_arctic_alst_exits_2_naming_the_package(tmp_path):
    recipe = write(tmp_path, "sequence_parallel_size = 2")
    assert arctic("config", "check", str(recipe)).returncode == 0  # installed: fine
    refused = arctic("config", "check", str(recipe), ignore="arctic-alst")
    assert refused.returncode == 2
    assert "sequence_parallel_size: needs the arctic-alst package" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_bad_value_exits_2_naming_the_key(tmp_path):
    result = arctic("config", "check", str(write(tmp_path, "sequence_parallel_size = 0")))
    assert result.returncode == 2 and "sequence_parallel_size: must be >= 1" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        (
            {"model": {"name_or_path": "m", "attn_implementation": "flex_attention"}},
            "model.attn_implementation",
        ),
    ],
)
def test_combinations_sequence_parallelism_cannot_run_are_refused(overrides, path):
    data = {"type": "sft", "model": {"name_or_path": "m"}, "sequence_parallel_size": 2, **overrides}
    with pytest.raises(RecipeError) as caught:
        active_features(load_recipe(None, data=data).config)
    assert any(p == path for p, _ in caught.value.problems)


def test_dpo_with_sequence_parallelism_is_accepted():
    data = {"type": "dpo", "model": {"name_or_path": "m"}, "sequence_parallel_size": 2}
    features = active_features(load_recipe(None, data=data).config)
    assert features.parallel_sizes() == {"sequence_parallel_size": 2}


def test_offload_without_activation_checkpointing_is_refused():
    data = {"type": "sft", "model": {"name_or_path": "m", "disable_activation_checkpoint": True}}
    with pytest.raises(RecipeError) as caught:
        active_features(load_recipe(None, data={**data, "activation_checkpoint_cpu_offload": True}).config)
    assert caught.value.path == "activation_checkpoint_cpu_offload"
