"""`arctic report`: one self-contained HTML page for one or more runs (no script, no network).

The page holds the runs' summary (as `arctic runs` prints it), one plot per metric group
(`runs.plot_groups`: the loss and eval loss, every method metric, learning rate, grad norm,
tokens/s, TFLOPS, MFU, memory) with the runs' curves on the same axes, drawn by matplotlib and
embedded as PNG data URIs, the recipe keys whose values differ between the runs, each run's
resolved recipe, and its `verify.json` / `plan.json` when present.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from typing import Any

from arctic_core.errors import RecipeError
from arctic_core.report.runs import Run, duration, plot_groups, recipe_differences, tokens_text

INSTALL = "pip install 'arctic-core[report]'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 0.5em; }
.plots img { width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; exit 2 naming the extra when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise RecipeError(
            f"arctic report draws its plots with matplotlib, which is not installed; {INSTALL}"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_png(plt: Any, runs: list[Run], title: str, keys: list[str], peak_tflops: float | None) -> str | None:
    """One metric group drawn for every run, as a base64 PNG; None when no run has any of its values."""
    figure, axes = plt.subplots(figsize=(6.0, 3.4), dpi=100)
    drawn = 0
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        for key in keys:
            steps, values = run.series(key, peak_tflops)
            if not values:
                continue
            evaluated = key.startswith("eval_") and key != keys[0]
            axes.plot(
                steps,
                values,
                color=color,
                linestyle="--" if evaluated else "-",
                marker="o" if evaluated or len(values) == 1 else None,
                markersize=3,
                label=f"{run.name} {key}" if len(keys) > 1 else run.name,
            )
            drawn += 1
    if not drawn:
        plt.close(figure)
        return None
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(runs: list[Run]) -> str:
    rows = [["run", "folder", "method", "status", "steps", "eval", "tokens", "wall", "checkpoints"]]
    for run in runs:
        rows.append(
            [
                run.name,
                str(run.path),
                run.method,
                f"{run.status} ({run.detail})",
                str(run.steps),
                run.eval_summary(),
                tokens_text(run.tokens),
                duration(run.wall_seconds),
                ", ".join(run.checkpoints) or "-",
            ]
        )
    return _table(rows)


def _differences(runs: list[Run]) -> str:
    if len(runs) < 2:
        return ""
    found = recipe_differences(runs)
    if not found:
        return "<h2>Recipe differences</h2><p>The resolved recipes are the same.</p>"
    rows = [["key", *(run.name for run in runs)]]
    rows += [[key, *(json.dumps(v, default=str) for v in values)] for key, values in found]
    return "<h2>Recipe differences</h2>" + _table(rows)


def _details(runs: list[Run]) -> str:
    parts = []
    for run in runs:
        parts.append(f"<h3>{html.escape(run.name)}</h3>")
        parts.append(
            f"<details><summary>resolved recipe</summary><pre>{html.escape(run.recipe_text)}</pre></details>"
        )
        for name, content in run.extras.items():
            text = html.escape(json.dumps(content, indent=2, default=str))
            parts.append(f"<details open><summary>{html.escape(name)}</summary><pre>{text}</pre></details>")
    return "<h2>Runs</h2>" + "".join(parts)


def render(runs: list[Run], *, peak_tflops: float | None = None) -> str:
    """The whole page."""
    plt = pyplot()
    plots = []
    for title, keys in plot_groups(runs, peak_tflops):
        png = plot_png(plt, runs, title, keys, peak_tflops)
        if png is not None:
            plots.append(
                f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}"></figure>'
            )
    names = ", ".join(run.name for run in runs)
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Arctic report: {html.escape(names)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Arctic report: {html.escape(names)}</h1><p>made {made}</p>"
        f'{_summary(runs)}<h2>Curves</h2><div class="plots">{"".join(plots)}</div>'
        f"{_differences(runs)}{_details(runs)}</body></html>\n"
    )
