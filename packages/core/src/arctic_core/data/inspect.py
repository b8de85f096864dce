"""`arctic data inspect RECIPE [-n K]`: a source's first samples with their trained spans marked.

Each of the first K rows of every training source is normalised, tokenized and masked as a run
would do it, then printed with its trained tokens marked: green on a terminal, `[[...]]`
otherwise. A parity report follows (`arctic_core.data.parity`): the share of conversations whose
every trained turn is exactly what serving renders, and the first differing token of the others.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arctic_core.data.masking import IGNORE
from arctic_core.data.parity import check_rows, sample_rows
from arctic_core.data.samples import SampleBuilder


def marked(tokenizer: Any, ids: list[int], labels: list[int], colour: bool) -> str:
    """The decoded sample with each run of trained tokens marked (ANSI green, or `[[...]]`)."""
    out, start = [], 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or (labels[j] != IGNORE) != (labels[start] != IGNORE):
            text = tokenizer.decode(ids[start:j])
            if labels[start] != IGNORE:
                text = f"\x1b[32m{text}\x1b[0m" if colour else f"[[{text}]]"
            out.append(text)
            start = j
    return "".join(out)


def _source_report(factory: Any, index: int, n: int, colour: bool, scratch: Path) -> list[str]:
    from arctic_core.data import sources
    from arctic_core.data.screen import max_row_bytes

    source = factory.data.sources[index]
    name = f"data.sources[{index}] {source.name_or_path}"
    loaded = sources.load_source(
        source,
        "train",
        scratch,
        max_row_bytes=max_row_bytes(factory.data.max_length),
        strict=factory.data.strict,
    )
    table = sources.sample(loaded, source)
    fmt, builder = factory.source_builder(source, table.column_names, name)
    lines = [f"== {name} ({fmt}, {len(table)} rows)"]
    if not isinstance(builder, SampleBuilder):
        return [*lines, "(pretokenized: process = false)"]
    rows = sample_rows(builder, table, n)
    for _, samples, where in rows:
        for k, (ids, labels) in enumerate(samples):
            trained = sum(t != IGNORE for t in labels)
            lines += [
                f"-- {where} sample {k}: {len(ids)} tokens, {trained} trained",
                marked(builder.masker.tokenizer, ids, labels, colour),
            ]
    if fmt in ("chat", "sharegpt", "alpaca", "preference") and factory.data.mask_inputs:
        lines.append(check_rows(builder.masker, rows).describe())
    return lines


def inspect(recipe: str, overrides: Sequence[str] = (), n: int = 3, colour: bool = False) -> str:
    """The report of `arctic data inspect` for `recipe` (its trainer's data factory, as `prepare` uses)."""
    from arctic_core.data.prepare import factory_for

    factory = factory_for(recipe, overrides)
    with tempfile.TemporaryDirectory(prefix="arctic-inspect-") as scratch:
        lines: list[str] = []
        for index in range(len(factory.data.sources)):
            lines += _source_report(factory, index, n, colour, Path(scratch))
    return "\n".join(lines)
