"""`arctic verify` on the bundled GRPO quickstart passes: packing SKIPped (GRPO never packs),
accumulation and ranks within tolerance (the loss, 0 by construction at num_iterations = 1,
relative to its logged loss_scale; gradients strictly), resume bit-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rl_support import REPO


@pytest.mark.slow
def test_verify_passes_on_the_bundled_quickstart_on_its_samples_only(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    command = [
        *(sys.executable, "-m", "arctic_core", "grpo", "verify"),
        str(REPO / "packages/rl/recipes/quickstart.toml"),
        *("--steps", "3", "--json", str(out)),
        *("--set", "num_generations=4", "--set", f"logger.output_dir={tmp_path / 'run'}"),
        *("--set", f"data.cache_dir={tmp_path / 'cache'}"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["check"]: row for row in json.loads(out.read_text())["checks"]}
    assert {name: row["status"] for name, row in rows.items()} == {
        "packing": "SKIP",
        "accumulation": "PASS",
        "ranks": "PASS",
        "resume": "PASS",
        "precision": "REPORT",
    }
    assert "never packed" in rows["packing"]["note"]
    for name in ("accumulation", "ranks"):
        assert "(of loss_scale)" in rows[name]["note"] and rows[name]["max_rel"] < 1e-5, rows[name]
    assert "(16 rows," in rows["resume"]["compared"]  # --samples 16 applied, not the 1000 training prompts
