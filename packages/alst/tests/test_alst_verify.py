"""alst's `arctic verify` checks, contributed through its Feature's `verify` entry.

`sp` (sequence parallelism over 2 real CPU ranks vs 1 rank) and `tiled` (the tiled MLP on vs
off, with rows long enough for 3 tiles) run on the shrunk bundled quickstart and must agree in
the loss and gradients of one step. On a recipe whose trainer weights the sequence-parallel
shards equally and whose tiled MLP loses a tile's gradient (alst_verify_sabotage_code.py) both
must FAIL on a measured difference, and the command exit 1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SABOTAGE_CODE = Path(__file__).with_name("alst_verify_sabotage_code.py")

SABOTAGED_RECIPE = """
type = "alst_verify_sabotaged"
code = "{code}"
seed = 0

[model]
name_or_path = "{model}"
disable_activation_checkpoint = true

[data]
sources = ["{data}"]
max_length = 128
"""


def verify(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "arctic_core", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def test_alst_contributes_sp_and_tiled_checks() -> None:
    from arctic_core import features

    found = features.get("alst")
    assert found is not None and found.feature is not None
    assert found.feature.verify == "arctic_alst.verify:checks"
    from arctic_alst.verify import checks

    assert [check.name for check in checks()] == ["sp", "tiled"]


@pytest.mark.slow
def test_sp_and_tiled_pass_on_the_shrunk_quickstart(tmp_path: Path) -> None:
    result = verify("sft", "verify", "quickstart", "--shrink", "--checks", "sp,tiled", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "runs" / "quickstart" / "verify.json").read_text())["checks"]
    assert [(row["check"], row["status"]) for row in rows] == [("sp", "PASS"), ("tiled", "PASS")]
    assert "packed into" in rows[1]["compared"] and "3 tiles" in rows[1]["compared"]
    # That the tiles really run (and all three see real tokens) the sabotage test below shows:
    # losing the last tile's gradient fails the check.


def loss_and_grads_rel(row: dict[str, Any]) -> tuple[float, float]:
    found = re.search(r"loss rel (\S+), grads rel ([^;\s]+)", row["note"])
    assert found, row
    return float(found[1]), float(found[2])


@pytest.mark.slow
def test_sabotaged_shard_weights_and_tiled_backward_fail_sp_and_tiled(
    tiny_model_dir: Path, chat_jsonl: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "sabotaged.toml"
    recipe.write_text(SABOTAGED_RECIPE.format(code=SABOTAGE_CODE, model=tiny_model_dir, data=chat_jsonl))
    out = tmp_path / "table.json"
    args = ("verify", str(recipe), "--checks", "sp,tiled", "--samples", "8", "--json", str(out))
    result = verify(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 check(s) failed: sp, tiled" in result.stderr
    report = json.loads(out.read_text())
    rows = {row["check"]: row for row in report["checks"]}
    assert list(rows) == ["sp", "tiled"]
    for row in rows.values():
        assert row["status"] == "FAIL", row
        assert row["max_rel"] > 100 * 1e-5, row  # a measured difference, far past the tolerance
    # The two SP ranks held the same 8 samples but different trainable tokens, weighted alike.
    sp2 = json.loads((tmp_path / report["verify_dir"] / "results" / "alst-sp2.json").read_text())
    (weights,), (tokens,) = sp2["weights"], sp2["tokens"]
    assert weights == [8.0, 8.0] and tokens[0] != tokens[1], sp2
    # The lost tile leaves the forward as it was: only the gradients show it.
    loss_rel, grads_rel = loss_and_grads_rel(rows["tiled"])
    assert loss_rel < 1e-5 < grads_rel, rows["tiled"]
