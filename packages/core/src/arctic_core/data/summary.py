"""The data summary: per source, what went in, what came out, and why rows were dropped.

Per source: rows read, samples kept, tokens, trainable tokens and their fraction, sample
length percentiles (p50/p90/p99/max), drops by reason and truncations. Per split: the
totals, and with packing the number of packed rows and their padding fraction. It is
logged before training and saved as `data_summary.json` in the run folder.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("arctic.data")


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return int(sorted_values[int(rank) - 1])


def source_stats(name: str, fmt: str, rows: int, table: Any, kept: tuple[str, ...]) -> dict[str, Any]:
    """Stats of one processed source from its `status`, `length` and `num_trainable` columns."""
    status, lengths, trainable = table["status"], table["length"], table["num_trainable"]
    keep = [i for i, s in enumerate(status) if s in kept]
    sizes = sorted(lengths[i] for i in keep)
    tokens, trained = sum(sizes), sum(trainable[i] for i in keep)
    return {
        "source": name,
        "format": fmt,
        "rows": rows,
        "samples": len(keep),
        "tokens": tokens,
        "trainable_tokens": trained,
        "trainable_fraction": round(trained / tokens, 4) if tokens else 0.0,
        "length": {f"p{q}": percentile(sizes, q) for q in (50, 90, 99)} | {"max": sizes[-1] if sizes else 0},
        "dropped": dict(sorted(Counter(s for s in status if s not in kept).items())),
        "truncated": sum(1 for s in status if s == "truncated"),
    }


def split_stats(
    sources: list[dict[str, Any]], totals: dict[str, int], rows: int, padding: float | None
) -> dict[str, Any]:
    """A split's (train or eval) sources and totals; `rows` and `padding` describe packed rows, if packed."""
    tokens, trained = totals["tokens"], totals["trainable"]
    stats: dict[str, Any] = {
        "sources": sources,
        "samples": totals["samples"],
        "rows": rows,
        "tokens": tokens,
        "trainable_tokens": trained,
        "trainable_fraction": round(trained / tokens, 4) if tokens else 0.0,
    }
    if padding is not None:
        stats["packing_padding_fraction"] = round(padding, 4)
    return stats


def log_summary(summary: dict[str, Any]) -> None:
    for split in ("train", "eval"):
        stats = summary.get(split)
        if not stats:
            continue
        for s in stats["sources"]:
            dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none"
            log.info(
                "data %s %s (%s): %d rows -> %d samples, %d tokens, %.1f%% trainable, length p50/p90/p99/max "
                "%d/%d/%d/%d, dropped: %s, truncated: %d",
                split,
                s["source"],
                s["format"],
                s["rows"],
                s["samples"],
                s["tokens"],
                100 * s["trainable_fraction"],
                *s["length"].values(),
                dropped,
                s["truncated"],
            )
        padding = stats.get("packing_padding_fraction")
        packing = f", packed padding {100 * padding:.1f}%" if padding is not None else ""
        log.info(
            "data %s: %d samples in %d rows, %d tokens%s",
            split,
            stats["samples"],
            stats["rows"],
            stats["tokens"],
            packing,
        )


def write_summary(summary: dict[str, Any], run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "data_summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path
