"""Run folders read back: what ran, how it ended, its per-step metrics (`arctic runs`, `arctic report`).

A run folder is one that holds a `metrics.jsonl`, a `recipe.yaml` or a lock (`.arctic.lock`).
Its status:

- running: a live process holds the folder's lock (`arctic_core.engine.runlock`);
- finished / stopped / failed: as the run recorded it in `status.json` (`engine.runstatus`);
- failed (process gone): a lock whose process no longer exists (SIGKILL, a lost machine);
- else, for runs written before `status.json` existed: from rank 0's log ("training finished",
  "stopped after step"), or unknown.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from arctic_core.engine import runlock
from arctic_core.engine.runstatus import read_status
from arctic_core.errors import RecipeError

SMALLER_IS_BETTER = ("loss", "perplexity", "kl")
"""Eval metrics whose best value is the smallest (others, accuracy or nDCG, the largest)."""


@attrs.frozen(kw_only=True)
class Run:
    """One run folder, read back."""

    path: Path
    name: str
    method: str
    status: str
    detail: str
    records: list[dict[str, Any]]
    recipe_text: str
    recipe: dict[str, Any]
    wall_seconds: float | None
    checkpoints: list[str]
    extras: dict[str, Any]
    """Other results in the folder: `verify.json`, `plan.json` (parsed)."""
    generation: list[dict[str, Any]] = attrs.field(factory=list)
    """The lines of `generation_eval.jsonl` (held-out accuracy before and after training)."""

    @property
    def steps(self) -> int:
        return int(self.records[-1]["step"]) if self.records else 0

    @property
    def tokens(self) -> int:
        return sum(int(r.get("tokens", 0)) for r in self.records)

    def series(self, key: str, peak_tflops: float | None = None) -> tuple[list[float], list[float]]:
        """(steps, values) of one numeric metric, the steps that have it; with `peak_tflops`, `mfu`
        is `tflops` over that peak (the run's own `mfu` lines are left aside)."""
        if key == "mfu" and peak_tflops:
            steps, tflops = self.series("tflops")
            return steps, [value / peak_tflops for value in tflops]
        steps, values = [], []
        for record in self.records:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                steps.append(float(record["step"]))
                values.append(float(value))
        return steps, values

    def metric_names(self) -> list[str]:
        """Every numeric metric of the run's lines, in first-seen order (not `step`, `epoch`)."""
        names: dict[str, None] = {}
        for record in self.records:
            for key, value in record.items():
                if (
                    key not in ("step", "epoch")
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    names.setdefault(key, None)
        return list(names)

    def eval_summary(self) -> str:
        """`eval_loss 1.23 (best 1.10)`, for the run's main eval metric, else the generation eval's
        last accuracy; "-" without either."""
        keys = [k for k in self.metric_names() if k.startswith("eval_")]
        scored = [g for g in self.generation if isinstance(g.get("accuracy"), (int, float))]
        if not keys and scored:
            return f"held-out accuracy {100 * scored[-1]['accuracy']:.1f}% ({scored[-1].get('when', '')})"
        if not keys:
            return "-"
        key = "eval_loss" if "eval_loss" in keys else keys[0]
        _, values = self.series(key)
        smaller = any(word in key for word in SMALLER_IS_BETTER)
        best = min(values) if smaller else max(values)
        return f"{key} {_number(values[-1])} (best {_number(best)})"


def _number(value: float) -> str:
    return f"{value:.4g}"


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file with a `step` each (lines cut short by a crash skipped)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def is_run(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("metrics.jsonl", "recipe.yaml", runlock.LOCK_FILE)
    )


def find_runs(folder: str | Path) -> list[Path]:
    """The run folders in `folder` (itself, if it is one), sorted by name; exit 2 when it does not exist."""
    root = Path(folder)
    if not root.is_dir():
        raise RecipeError(f"{root} is not a folder (runs are written to runs/<recipe name> by default)")
    if is_run(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_run(p))


def status_of(path: Path, records: list[dict[str, Any]]) -> tuple[str, str]:
    """(status, detail) of a run folder; detail says the step reached or why."""
    last = records[-1]["step"] if records else 0
    holder = runlock.read_lock(path)
    if holder is not None and runlock.is_live(holder):
        return "running", f"at step {last}"
    recorded = read_status(path)
    if recorded is not None:
        status, step = str(recorded.get("status", "unknown")), recorded.get("step", last)
        line = str(recorded.get("line", "")).removeprefix("arctic: ").removeprefix("stopped: ")
        return status, f"step {step}" if status == "finished" else f"step {step}: {line}"
    if holder is not None:
        return "failed", f"step {last}: its process is gone ({runlock.describe(holder)})"
    log = path / "logs" / "rank_0.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    if "training finished after" in text:
        return "finished", f"step {last}"
    if "stopped after step" in text:
        return "stopped", f"step {last}"
    return "unknown", f"step {last}: no status.json (a run from before it was written?)"


def _checkpoints(path: Path, recipe: dict[str, Any]) -> list[str]:
    places = []
    for entry in recipe.get("checkpoint") or []:
        if isinstance(entry, dict) and entry.get("output_dir"):
            folder = Path(str(entry["output_dir"]))
            if folder.exists():
                places.append(str(folder))
    found = path / "checkpoints"
    if not places and found.is_dir():
        places.append(str(found))
    return places


def _extras(path: Path) -> dict[str, Any]:
    extras = {}
    for name in ("verify.json", "plan.json"):
        try:
            extras[name] = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
    return extras


def _wall_seconds(path: Path, status: dict[str, Any] | None, records: list[dict[str, Any]]) -> float | None:
    """From the recipe's writing (set-up) to the run's end (status.json), else to its last metrics line."""
    recipe, metrics = path / "recipe.yaml", path / "metrics.jsonl"
    if not recipe.is_file():
        return None
    end = float(status["ended"]) if status and "ended" in status else None
    if end is None and metrics.is_file() and records:
        end = metrics.stat().st_mtime
    return max(0.0, (end or time.time()) - recipe.stat().st_mtime)


def load_run(folder: str | Path) -> Run:
    """Read a run folder; exit 2 when it is not one."""
    import yaml

    path = Path(folder)
    if not is_run(path):
        raise RecipeError(f"{path} is not a run folder (no metrics.jsonl, recipe.yaml or lock in it)")
    recipe_text = (path / "recipe.yaml").read_text() if (path / "recipe.yaml").is_file() else ""
    try:
        recipe = yaml.safe_load(recipe_text) or {}
    except yaml.YAMLError:
        recipe = {}
    metrics_path = Path(str(recipe.get("train_log_metrics_path") or path / "metrics.jsonl"))
    records = read_lines(metrics_path if metrics_path.is_file() else path / "metrics.jsonl")
    status, detail = status_of(path, records)
    return Run(
        path=path,
        name=path.name,
        method=str(recipe.get("type", "?")),
        status=status,
        detail=detail,
        records=records,
        recipe_text=recipe_text,
        recipe=recipe if isinstance(recipe, dict) else {},
        wall_seconds=_wall_seconds(path, read_status(path), records),
        checkpoints=_checkpoints(path, recipe if isinstance(recipe, dict) else {}),
        extras=_extras(path),
        generation=read_lines(path / "generation_eval.jsonl"),
    )


def duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m`; "-" when unknown."""
    if seconds is None:
        return "-"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def tokens_text(count: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def table(runs: list[Run]) -> Iterator[str]:
    """`arctic runs`: a header and one line per run, then each run's status detail and checkpoints."""
    rows = [("run", "method", "status", "steps", "eval", "tokens", "wall", "checkpoints")]
    for run in runs:
        rows.append(
            (
                run.name,
                run.method,
                run.status,
                str(run.steps),
                run.eval_summary(),
                tokens_text(run.tokens),
                duration(run.wall_seconds),
                ", ".join(run.checkpoints) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        yield "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
    for run in runs:
        yield f"  {run.name}: {run.status}, {run.detail}"


def flatten(recipe: Any, prefix: str = "") -> dict[str, Any]:
    """`{"optimizer.lr": 3e-3, "checkpoint[0].type": ...}` from a nested recipe."""
    flat: dict[str, Any] = {}
    if isinstance(recipe, dict):
        for key, value in recipe.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(recipe, list) and any(isinstance(item, (dict, list)) for item in recipe):
        for i, value in enumerate(recipe):
            flat.update(flatten(value, f"{prefix}[{i}]"))
    else:
        flat[prefix] = recipe
    return flat


def recipe_differences(runs: list[Run]) -> list[tuple[str, list[Any]]]:
    """The recipe keys whose values differ between runs: (key path, one value per run; None if absent)."""
    flats = [flatten(run.recipe) for run in runs]
    differences = []
    for key in sorted(set().union(*flats)) if flats else []:
        values = [flat.get(key) for flat in flats]
        if len({json.dumps(value, default=str, sort_keys=True) for value in values}) > 1:
            differences.append((key, values))
    return differences


TAIL = ("lr", "grad_norm", "tokens_per_s", "tflops", "mfu", "peak_memory_gb")
"""The run's mechanics, plotted after the loss and the method's metrics."""
UNPLOTTED = ("tokens", "trainable_tokens", "seconds")


def plot_groups(runs: list[Run], peak_tflops: float | None = None) -> list[tuple[str, list[str]]]:
    """(title, metric keys) of each plot: the loss with the eval loss, each method metric with its
    eval counterpart, eval-only metrics, then `TAIL`; every key that any run has, none twice
    (and `mfu` from `tflops` when a peak is given)."""
    names: dict[str, None] = {}
    for run in runs:
        for name in run.metric_names():
            names.setdefault(name, None)
    if peak_tflops and "tflops" in names:
        names.setdefault("mfu", None)
    groups: list[tuple[str, list[str]]] = []
    used: set[str] = set(UNPLOTTED)
    train = [n for n in names if not n.startswith("eval_") and n not in TAIL and n not in used]
    for name in sorted(train, key=lambda n: n != "loss"):
        keys = [name] + ([f"eval_{name}"] if f"eval_{name}" in names else [])
        groups.append((name, keys))
        used.update(keys)
    groups += [(n, [n]) for n in names if n.startswith("eval_") and n not in used]
    groups += [(n, [n]) for n in TAIL if n in names]
    return groups
