"""`arctic verify` end to end: the bundled quickstart passes; a trainer that breaks each property fails.

The sabotaged trainer (verify_sabotage_code.py) weights every micro-batch as 1 (a mean of
micro-batch means), drops the packed rows' position ids (samples no longer kept apart) and forgets
the data position when it resumes: packing, accumulation, ranks and resume must each FAIL on a
measured difference, not on an error, and the command must exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["arctic_core.testing.fixtures"]

CODE = Path(__file__).with_name("verify_sabotage_code.py")

RECIPE = """
type = "verify_sabotaged"
code = "{code}"
micro_batch_size = 4
seed = 0

[model]
name_or_path = "{model}"
dtype = "fp32"
disable_activation_checkpoint = true

[data]
sources = ["{data}"]
max_length = 128
div_length = 8
"""


def verify(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "arctic_core", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_sabotaged_trainer_fails_packing_accumulation_ranks_and_resume(
    tiny_model_dir: Path, chat_jsonl: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "sabotaged.toml"
    recipe.write_text(RECIPE.format(code=CODE, model=tiny_model_dir, data=chat_jsonl))
    out = tmp_path / "table.json"
    checks = "packing,accumulation,ranks,resume"
    result = verify(
        "verify",
        str(recipe),
        "--checks",
        checks,
        "--steps",
        "2",
        "--samples",
        "8",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 check(s) failed: packing, accumulation, ranks, resume" in result.stderr
    rows = {row["check"]: row for row in json.loads(out.read_text())["checks"]}
    assert list(rows) == checks.split(",")
    for name in ("packing", "accumulation", "ranks"):
        assert rows[name]["status"] == "FAIL", rows[name]
        assert rows[name]["max_rel"] > 100 * 1e-5, rows[name]  # a measured difference, far past tolerance
    assert rows["resume"]["status"] == "FAIL" and "first differing step 2" in rows["resume"]["note"]
    assert not (tmp_path / "runs" / "sabotaged" / "metrics.jsonl").exists()  # the user's run folder untouched


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "recipe", "packing", "overrides"),
    [
        # packed densely: 16 samples give fewer rows than the resume runs' 8 samples a step (issue 25)
        ("sft", "quickstart", "PASS", ("--set", "data.pack_samples=true", "--set", "data.max_length=128")),
        ("dpo", "dpo-tiny", "SKIP", ()),  # DPO never packs its pairs
    ],
)
def test_bundled_recipes_pass_every_check(
    tmp_path: Path, method: str, recipe: str, packing: str, overrides: tuple[str, ...]
) -> None:
    result = verify(method, "verify", recipe, "--shrink", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all checks passed" in result.stdout
    report = json.loads((tmp_path / "runs" / recipe / "verify.json").read_text())
    statuses = {row["check"]: row["status"] for row in report["checks"]}
    assert statuses == {
        "packing": packing,
        "accumulation": "PASS",
        "ranks": "PASS",
        "resume": "PASS",
        "precision": "REPORT",
    }
    assert report["passed"] is True and report["shrink"] is True
    if overrides:  # the resume runs took their micro-batches from the packed rows
        resume = next(row for row in report["checks"] if row["check"] == "resume")
        assert "rows packed from" in resume["compared"], resume
