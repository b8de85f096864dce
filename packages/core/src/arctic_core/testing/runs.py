"""Running `arctic` as a real process and reading what a run wrote: shared by every package's tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def arctic(*args: str, cwd: str | Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run `python -m arctic_core ARGS` in `cwd` with one thread per process (`OMP_NUM_THREADS=1`).

    Returns stdout + stderr; a non-zero exit fails the calling test with the end of that output.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a metrics file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
