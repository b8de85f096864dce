"""The verify table (printed) and its JSON (written to `<run folder>/verify.json` or --json)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from arctic_core.errors import ArcticError
from arctic_core.verify.runner import Options, Report, verify

COLUMNS = ("check", "result", "max abs", "max rel", "tolerance", "compared")


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.2e}"


def format_table(report: Report) -> str:
    """One line per check, its note indented below it."""
    lines = [
        (
            row.check,
            row.status,
            _number(row.max_abs),
            _number(row.max_rel),
            row.tolerance or "-",
            row.compared,
        )
        for row in report.rows
    ]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(COLUMNS[:-1])]
    indent = " " * (sum(widths) + 2 * len(widths))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:<{w}}" for cell, w in zip(cells, widths)) + "  " + cells[-1]

    out = [fmt(COLUMNS), fmt(["-" * w for w in widths] + ["-" * 8])]
    for row, line in zip(report.rows, lines):
        out.append(fmt(line))
        if row.note:
            out.append(indent + row.note)
    verdict = (
        "all checks passed"
        if report.passed
        else "FAILED: " + ", ".join(row.check for row in report.rows if row.status == "FAIL")
    )
    out.append(f"\n{verdict} ({report.seconds:.0f} s; runs in {report.verify_dir})")
    return "\n".join(out)


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")


def run_and_report(
    recipe: str,
    overrides: Sequence[str],
    *,
    method: str | None,
    options: Options,
    json_path: str | None,
    echo: object = print,
) -> Report:
    """Run `arctic verify`, print the table, write the JSON; raise `ArcticError` (exit 1) when a check fails."""
    report = verify(recipe, overrides, method=method, options=options)
    target = Path(json_path) if json_path else Path(report.verify_dir).parent / "verify.json"
    write_json(report, target)
    echo(format_table(report))  # type: ignore[operator]
    echo(f"table written to {target}")  # type: ignore[operator]
    if not report.passed:
        failed = [row.check for row in report.rows if row.status == "FAIL"]
        raise ArcticError(f"verify: {len(failed)} check(s) failed: {', '.join(failed)}")
    return report
