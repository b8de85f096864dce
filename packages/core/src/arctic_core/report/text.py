"""`arctic report --text`: each plot as one compact curve per run, in at most 80 columns.

A curve is a sparkline (`▁▂▃▄▅▆▇█`): the metric's steps cut into at most `WIDTH` equal spans, each
drawn at the height of its mean, on the scale shared by every run of the plot; the line ends with
the first and the last value.
"""

from __future__ import annotations

from collections.abc import Iterator

from arctic_core.report.runs import Run, plot_groups

BARS = "▁▂▃▄▅▆▇█"
COLUMNS = 80
WIDTH = 40
NAME = 14


def buckets(values: list[float], width: int) -> list[float]:
    """`values` cut into at most `width` consecutive spans of (nearly) equal size: their means."""
    if len(values) <= width:
        return list(values)
    out = []
    for i in range(width):
        span = values[i * len(values) // width : (i + 1) * len(values) // width]
        out.append(sum(span) / len(span))
    return out


def sparkline(values: list[float], low: float, high: float) -> str:
    """One character per value, scaled between `low` and `high`."""
    spread = high - low
    last = len(BARS) - 1
    return "".join(BARS[round((v - low) / spread * last) if spread > 0 else last // 2] for v in values)


def _short(value: float) -> str:
    return f"{value:.3g}"


def render(runs: list[Run], *, peak_tflops: float | None = None) -> Iterator[str]:
    """The lines of the terminal report: per plot, a title and one curve per run (and per key)."""
    for run in runs:
        line = f"{run.name}: {run.method}, {run.status} ({run.detail}), {run.steps} steps"
        yield line[:COLUMNS]
    for title, keys in plot_groups(runs, peak_tflops):
        curves = [(run, key, run.series(key, peak_tflops)[1]) for run in runs for key in keys]
        curves = [(run, key, values) for run, key, values in curves if values]
        if not curves:
            continue
        low = min(min(values) for _, _, values in curves)
        high = max(max(values) for _, _, values in curves)
        yield ""
        yield f"{title}  [{_short(low)} .. {_short(high)}]"[:COLUMNS]
        for run, key, values in curves:
            label = run.name if key == keys[0] else f"{run.name} eval"
            spark = sparkline(buckets(values, WIDTH), low, high)
            line = f"  {label[:NAME]:<{NAME}} {spark:<{WIDTH}} {_short(values[0])} -> {_short(values[-1])}"
            yield line[:COLUMNS]
