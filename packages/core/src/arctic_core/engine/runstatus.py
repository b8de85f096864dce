"""How a run ended, written into its folder: `<run folder>/status.json` (rank 0).

`{"status": "finished" | "stopped" | "failed", "step": N, "line": the stop line, "ended": time}`.
The stop line is the one the `arctic` command prints (`arctic_core.stops.stop_line`): what stopped
the run and in which phase. Written only once the run folder is the run's own (after the setup
step `run_folder`), so a run that fails earlier never overwrites an earlier run's status.
`arctic runs` reads it; a run that holds the folder's lock is running, and a lock left by a
process that is gone (SIGKILL, a lost machine) reads as failed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def ending(exc: BaseException | None) -> str:
    """finished (no exception), stopped (a stop signal, Ctrl-C) or failed (anything else)."""
    from arctic_core.engine.signals import TrainingStopped
    from arctic_core.stops import Stopped

    if exc is None:
        return "finished"
    if isinstance(exc, (TrainingStopped, Stopped, KeyboardInterrupt)):
        return "stopped"
    return "failed"


def write_status(run_dir: str | Path, exc: BaseException | None, step: int) -> None:
    """Record how the run in `run_dir` ended (atomic replace; never raises: the run's own error wins)."""
    from arctic_core.stops import stop_line

    line = f"arctic: finished after step {step}"
    if exc is not None:  # an unexpected error's line points at its traceback: keep its message instead
        line = stop_line(exc)[0].replace(" (traceback above)", f": {exc}")
    record: dict[str, Any] = {"status": ending(exc), "step": int(step), "line": line, "ended": time.time()}
    path = Path(run_dir) / STATUS_FILE
    try:
        temp = path.with_name(f".{STATUS_FILE}.tmp")
        temp.write_text(json.dumps(record) + "\n")
        temp.replace(path)
    except OSError:
        pass


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The recorded ending of the run in `run_dir`, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
