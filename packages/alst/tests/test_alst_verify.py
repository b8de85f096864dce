"""alst's `arctic verify` checks, contributed through its Feature's `verify` entry.

`sp` (sequence parallelism over 2 real CPU ranks vs 1 rank) and `tiled` (the tiled MLP on vs
off, with rows long enough for 3 tiles) run on the shrunk bundled quickstart and must agree in
the loss and gradients of one step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_alst_contributes_sp_and_tiled_checks() -> None:
    from arctic_core import features

    found = features.get("alst")
    assert found is not None and found.feature is not None
    assert found.feature.verify == "arctic_alst.verify:checks"
    from arctic_alst.verify import checks

    assert [check.name for check in checks()] == ["sp", "tiled"]


@pytest.mark.slow
def test_sp_and_tiled_pass_on_the_shrunk_quickstart(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "arctic_core",
        "sft",
        "verify",
        "quickstart",
        "--shrink",
        "--checks",
        "sp,tiled",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "runs" / "quickstart" / "verify.json").read_text())["checks"]
    assert [(row["check"], row["status"]) for row in rows] == [("sp", "PASS"), ("tiled", "PASS")]
    tiled = rows[1]
    assert tiled["max_abs"] > 0  # the tiles really ran (one tile would be the same computation)
