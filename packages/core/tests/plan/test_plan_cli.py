"""`arctic plan` as a user runs it: the table, the JSON, the suggestion, a clear error for bad hardware."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_core.recipe.bundled import find_recipe

ARCTIC = [sys.executable, "-m", "arctic_core"]
QUICKSTART = find_recipe("quickstart", "sft")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARCTIC, *args], capture_output=True, text=True, timeout=120)


def test_plan_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = run("plan", QUICKSTART, "--hardware", "8xH100", "--json", str(out))
    assert result.returncode == 0, result.stderr
    for line in ("parameters", "optimizer state", "activations (stored)", "CUDA context + NCCL", "fits"):
        assert line in result.stdout
    assert "largest micro batch at 64 tokens" in result.stdout
    plan = json.loads(out.read_text())
    assert plan["fits"] is True and plan["hardware"]["devices"] == 8
    assert plan["peak"] == sum(t["bytes"] for t in plan["terms"] if "always" in t["phases"]) + max(
        sum(t["bytes"] for t in plan["terms"] if phase in t["phases"])
        for phase in ("forward", "backward (start)", "backward (attention)", "backward (end)", "step")
    )
    assert plan["max_sequence"] > 64 and plan["suggestion"] is None


def test_plan_says_what_would_make_it_fit() -> None:
    result = run(
        "plan", QUICKSTART, "--hardware", "1xL4", "--memory", "3GiB", "--set", "data.max_length=8192"
    )
    assert result.returncode == 0, result.stderr
    assert "does NOT fit" in result.stdout
    advice = result.stdout.strip().splitlines()[-1]
    assert advice.startswith("to fit: turn on activation checkpointing: ")
    assert "--set model.disable_activation_checkpoint=false" in advice
    assert float(advice.split(": ")[2].split(" GiB")[0]) <= 3.0


def test_bad_hardware_exits_2_naming_the_presets() -> None:
    result = run("plan", QUICKSTART, "--hardware", "8xV100")
    assert result.returncode == 2
    assert "H100, H200, A100-40GB, A100-80GB, L4, B200" in result.stderr
    assert "Traceback" not in result.stderr


def test_method_group_plans_a_bundled_recipe_by_name_from_any_folder(tmp_path: Path) -> None:
    (tmp_path / "dpo-tiny").mkdir()  # a run folder named like the recipe must not hide it
    result = subprocess.run(
        [*ARCTIC, "dpo", "plan", "dpo-tiny", "--hardware", "1xH100"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "reference forward (no grad)" in result.stdout  # the dpo method's own term
    assert "fits" in result.stdout


def test_a_folder_given_as_the_recipe_is_named_as_a_folder(tmp_path: Path) -> None:
    from arctic_core.errors import RecipeError

    (tmp_path / "runs").mkdir()
    with pytest.raises(RecipeError, match="is a folder, not a recipe file"):
        find_recipe(str(tmp_path / "runs"), "sft")
