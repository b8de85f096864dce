"""Packing: several samples per row of at most `max_length` tokens, kept apart in attention.

Bins are filled best-fit-decreasing (longest sample first, into the fullest row it still
fits; ties broken by row and sample order), which is deterministic and never worse than
first-fit-decreasing. Each packed row concatenates its samples' `input_ids` and `labels`
and has `position_ids` that restart at 0 for every sample; `seqlens` lists the sample
lengths. Every sample's first label is already -100 (see `masking`), so no sample is
trained to predict the next one's first token.

Isolation: with `position_ids` restarting and no 2D attention mask, transformers builds a
block-diagonal causal mask under sdpa and eager and uses varlen kernels under flash
attention (`arctic_core.compat.packing` checks that this still holds). The collator
therefore sends packed batches without `attention_mask`; the model must run with
`use_cache=False`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any


def plan_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of the samples in each row, best-fit-decreasing; rows in creation order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin id), sorted
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"sample {i} has {size} tokens, more than the row capacity {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            room, bin_id = free.pop(slot)
            bins[bin_id].append(i)
        else:
            room, bin_id = capacity, len(bins)
            bins.append([i])
        if room - size > 0:
            bisect.insort(free, (room - size, bin_id))
    return [sorted(b) for b in bins]


def pack_rows(columns: dict[str, list[Any]], capacity: int) -> dict[str, list[Any]]:
    """Packed rows (`input_ids`, `labels`, `position_ids`, `seqlens`) from columns `input_ids` and `labels`."""
    lengths = [len(ids) for ids in columns["input_ids"]]
    return _concat(columns, plan_bins(lengths, capacity))


PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "seqlens")


def pack_dataset(table: Any, capacity: int, chunk_rows: int = 2000) -> tuple[Any, float]:
    """A `datasets.Dataset` of packed rows and the padding fraction of rows padded to `capacity`.

    Bins are planned from the `length` column alone; samples are then read `chunk_rows` packed
    rows at a time, so only one chunk is ever held as Python lists.
    """
    import datasets

    lengths = table["length"] if "length" in table.column_names else [len(ids) for ids in table["input_ids"]]
    bins = plan_bins(lengths, capacity)
    int_list = datasets.Sequence(datasets.Value("int32"))
    features = datasets.Features({name: int_list for name in PACKED_COLUMNS})
    chunks = []
    for start in range(0, len(bins), chunk_rows):
        chunk = bins[start : start + chunk_rows]
        members = [i for b in chunk for i in b]
        rows = table.select(members).select_columns(["input_ids", "labels"]).to_dict()
        local, offset = [], 0
        for b in chunk:
            local.append(list(range(offset, offset + len(b))))
            offset += len(b)
        chunks.append(datasets.Dataset.from_dict(_concat(rows, local), features=features))
    if not chunks:
        chunks.append(datasets.Dataset.from_dict({name: [] for name in PACKED_COLUMNS}, features=features))
    padding = 1.0 - sum(lengths) / (len(bins) * capacity) if bins else 0.0
    return datasets.concatenate_datasets(chunks), padding


def _concat(columns: dict[str, list[Any]], bins: list[list[int]]) -> dict[str, list[Any]]:
    """Packed rows from `columns` for bins given as indices into them."""
    out: dict[str, list[Any]] = {name: [] for name in PACKED_COLUMNS}
    for members in bins:
        sizes = [len(columns["input_ids"][i]) for i in members]
        out["input_ids"].append([t for i in members for t in columns["input_ids"][i]])
        out["labels"].append([t for i in members for t in columns["labels"][i]])
        out["position_ids"].append([p for n in sizes for p in range(n)])
        out["seqlens"].append(sizes)
    return out
