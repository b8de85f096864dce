"""`arctic swiftkv eval` as a user runs it: the table, the JSON file, and metrics that mean what they say."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from arctic_core.cli import cli
from arctic_core.recipe import bundled_recipes

QUICKSTART = bundled_recipes("arctic_swiftkv") / "quickstart.toml"


def swiftkv_eval(tmp_path, name: str, *overrides: str) -> tuple[str, dict[str, float]]:
    output = tmp_path / f"{name}.json"
    sets = [a for o in (f"logger.output_dir={tmp_path / name}", *overrides) for a in ("--set", o)]
    args = ["swiftkv", "eval", str(QUICKSTART), *sets, "--prompts", "3", "--max-new-tokens", "4"]
    result = CliRunner().invoke(cli, [*args, "--output", str(output)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output, json.loads(output.read_text())


@pytest.mark.slow
def test_eval_prints_a_table_and_writes_the_json_file(tmp_path):
    output, student = swiftkv_eval(tmp_path, "student")
    assert "| metric | value |" in output and "| kl |" in output and "written to" in output
    assert set(student) >= {"kl", "agreement", "perplexity_teacher", "perplexity_student", "tokens"}
    assert student["tokens"] > 0 and student["prompts"] == 3
    assert student["kl"] > 0  # an untrained student (L_kv = 2 of 4) differs from its teacher
    assert 0 <= student["agreement"] <= 1 and 0 <= student["generation_agreement"] <= 1
    assert student["perplexity_teacher"] > 1 and student["perplexity_student"] > 1
    assert json.loads((tmp_path / "student.json").read_text()) == student
