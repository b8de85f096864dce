"""The `arctic` command as a user runs it: exit codes, messages, no tracebacks, lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ARCTIC = [sys.executable, "-m", "arctic_core"]


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*ARCTIC, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=120
    )


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        textwrap.dedent("""
        type = "demo"
        micro_batch_size = 2
        [model]
        name_or_path = "some/model"
        [data]
        sources = ["org/data:train[:10]"]
    """)
    )
    return path


def test_help_lists_methods_fast_and_without_torch():
    code = (
        "import sys\n"
        "from arctic_core.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "train" in result.stdout and "config" in result.stdout


def test_plugins_lists_package_version_and_kernels_without_torch():
    code = (
        "import sys\n"
        "from arctic_core.cli import main\n"
        "try:\n    main(['plugins'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'triton') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "arctic-demo 0.0.1" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.split("Kernels")[1].splitlines()[2:]}
    # name, package, has Triton, validated on GPU, what `auto` runs here (none is validated: torch)
    assert rows["core.cross_entropy"] == ["core.cross_entropy", "arctic-core", "yes", "no", "torch"]
    assert rows["swiftkv.fused_kl"][1:] == ["arctic-swiftkv", "yes", "no", "torch"]
    assert {"embed.infonce", "speculator.head_step"} <= set(rows)


@pytest.mark.parametrize(
    ("override", "named", "also"),
    [
        ("micro_bach_size=2", "micro_bach_size", "micro_batch_size"),
        ('epochs="two"', "epochs", "integer"),
        ("optimizer.lr=-1", "optimizer.lr", "> 0"),
    ],
)
def test_bad_recipes_exit_2_without_traceback(recipe, override, named, also):
    result = run("config", "check", str(recipe), "--set", override)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and also in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_recipe_file_values_exit_2(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('type = "demo"\nmicro_bach_size = 2\n[model]\nname_or_path = "m"\n')
    result = run("config", "check", str(path))
    assert result.returncode == 2
    assert (
        "r.toml" in result.stderr
        and "micro_bach_size" in result.stderr
        and "micro_batch_size" in result.stderr
    )


def test_config_show_resolves_every_default(recipe):
    result = run("config", "show", str(recipe), "--set", "optimizer.lr=3e-4")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "lr: 0.0003" in out
    for default in (
        "weight_decay: 0.1",
        "warmup_ratio: 0.1",
        "seed: 42",
        "max_length: 8192",
        "greeting: hello",
    ):
        assert default in out
    assert "output_dir: runs/recipe" in out


def test_config_show_is_a_fixed_point(recipe, tmp_path):
    first = run("config", "show", str(recipe), "--format", "toml", "--set", "optimizer.lr=3e-4")
    assert first.returncode == 0, first.stderr
    again = tmp_path / "again.toml"
    again.write_text(first.stdout)
    second = run("config", "show", str(again), "--format", "toml")
    assert second.stdout == first.stdout


def test_config_check_has_no_side_effects(recipe, tmp_path):
    before = set(tmp_path.rglob("*"))
    result = run("config", "check", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(tmp_path.rglob("*")) == before  # no run folder, no cache
    assert "ok" in result.stdout


def test_missing_recipe_file(tmp_path):
    result = run("config", "check", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "not found" in result.stderr


def test_unknown_type_lists_installed(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('type = "nosuch"\n[model]\nname_or_path = "m"\n')
    result = run("config", "check", str(path))
    assert result.returncode == 2
    assert "nosuch" in result.stderr and "demo" in result.stderr


def test_method_verbs_and_method_fixed_type(recipe):
    result = run("demo", "hello", str(recipe), "--set", "demo.greeting=hi", "--set", "demo.repeat=2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hi", "hi"]


def test_unknown_command_is_usage_error():
    result = run("nosuchcommand")
    assert result.returncode == 2
