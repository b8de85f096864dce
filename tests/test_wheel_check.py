"""scripts/check_wheels.py: passes for the real packages, fails for one that imports what it does not declare."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UV = os.environ.get("UV") or shutil.which("uv")
pytestmark = pytest.mark.skipif(UV is None, reason="needs uv to build wheels")

PYPROJECT = """
[project]
name = "arctic-fake"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = {dependencies}

[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["src/arctic_fake"]
"""

MODULE = """\
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import jinja2

from arctic_core.plugins import Method

from . import helpers

if TYPE_CHECKING:
    import numpy


def render(text: str) -> str:
    import yaml

    return yaml.safe_dump(jinja2.Template(text).render())
"""


def fake_package(root: Path, dependencies: list[str]) -> Path:
    folder = root / "fake"
    (folder / "src" / "arctic_fake").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(dependencies=dependencies).replace("'", '"'))
    (folder / "src" / "arctic_fake" / "__init__.py").write_text(MODULE)
    (folder / "src" / "arctic_fake" / "helpers.py").write_text("")
    return folder


def check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UV": str(UV), "UV_OFFLINE": "1"}  # tests never reach the network
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_wheels.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_fails_naming_file_line_and_module_for_undeclared_imports(tmp_path):
    result = check(str(fake_package(tmp_path, ["arctic-core"])))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "does not declare" in line]
    assert len(lines) == 2, result.stdout
    line = MODULE.splitlines().index
    assert f"arctic_fake/__init__.py:{line('import jinja2') + 1}: imports 'jinja2'" in lines[0]
    inside_function = line("    import yaml") + 1
    assert f"arctic_fake/__init__.py:{inside_function}: imports 'yaml' (distribution pyyaml)" in lines[1]
    assert "numpy" not in result.stdout  # only under TYPE_CHECKING


def test_passes_once_declared_and_flags_what_is_declared_but_unused(tmp_path):
    assert check(str(fake_package(tmp_path / "a", ["arctic-core", "jinja2", "pyyaml"]))).returncode == 0
    unused = check(str(fake_package(tmp_path / "b", ["arctic-core", "jinja2", "pyyaml", "tqdm"])))
    assert unused.returncode == 1
    assert "declares tqdm but imports none of its modules" in unused.stdout


def test_fails_when_the_wheel_leaves_out_recipes(tmp_path):
    folder = fake_package(tmp_path, ["arctic-core", "jinja2", "pyyaml"])
    (folder / "recipes" / "quickstart").mkdir(parents=True)
    (folder / "recipes" / "quickstart.toml").write_text('type = "sft"\n')
    (folder / "recipes" / "quickstart" / "train.jsonl").write_text("{}\n")
    result = check(str(folder))
    assert result.returncode == 1
    assert "lacks arctic_fake/recipes/quickstart.toml" in result.stdout
    assert "lacks arctic_fake/recipes/quickstart/train.jsonl" in result.stdout


def test_passes_for_core_and_sft():
    result = check("core", "sft")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "arctic-core: ok" in result.stdout and "arctic-sft: ok" in result.stdout
