"""Train loaders without a run: sharding over data-parallel ranks, accumulation splits, saved positions."""

from __future__ import annotations

import pytest
import torch

from arctic_core.engine.loaders import (
    PreBatched,
    PreBatchedLoader,
    SampleLoader,
    eval_batch_count,
    eval_batches,
    split_rows,
)
from arctic_core.errors import ArcticError


def _stored(count: int, rows: int = 8) -> list[dict]:
    return [{"x": torch.arange(rows) + 100 * b, "tag": f"batch{b}"} for b in range(count)]


def _flat(lists) -> list:
    return [item for part in lists for item in part]


def _ids(batches) -> list[list[int]]:
    return [b["x"].tolist() for b in batches]


def test_split_rows_cuts_row_sized_values_and_keeps_the_rest():
    part = split_rows({"x": torch.arange(6), "names": list("abcdef"), "n": torch.tensor(6)}, 2, 3)
    assert part["x"].tolist() == [4, 5] and part["names"] == ["e", "f"] and int(part["n"]) == 6
    with pytest.raises(ArcticError, match="cannot be split into 4"):
        split_rows({"x": torch.arange(6)}, 0, 4)


def test_pre_batched_ranks_share_each_stored_batch_in_accumulation_parts():
    data = PreBatched(_stored(3))
    loaders = [PreBatchedLoader(data, accumulation=2, dp_rank=r, dp_size=2, seed=0) for r in (0, 1)]
    rank0, rank1 = (_ids(iter(loader)) for loader in loaders)
    assert len(loaders[0]) == 6
    assert rank0[:2] == [[0, 1], [2, 3]] and rank1[:2] == [[4, 5], [6, 7]]  # stored batch 0
    assert rank0[2] == [100, 101]  # then stored batch 1
    assert sorted(_flat(rank0 + rank1)) == sorted(_flat(_ids(_stored(3))))  # each row once


def test_pre_batched_resumes_inside_a_step_and_shuffles_per_epoch():
    data = PreBatched(_stored(4), shuffle=True)
    full = PreBatchedLoader(data, accumulation=2, dp_rank=1, dp_size=2, seed=5)
    first = _ids(iter(full))
    full.start_epoch(1)
    second = _ids(iter(full))
    assert sorted(map(tuple, first)) == sorted(map(tuple, second)) and first != second  # reshuffled

    stopped = PreBatchedLoader(data, accumulation=2, dp_rank=1, dp_size=2, seed=5)
    stream = iter(stopped)
    taken = [next(stream) for _ in range(3)]  # one step and a half
    state = stopped.state_dict()
    assert state == {"epoch": 0, "micro_batches": 3}
    resumed = PreBatchedLoader(data, accumulation=2, dp_rank=1, dp_size=2, seed=5)
    resumed.load_state_dict(state)
    resumed.start_epoch(0)  # the epoch it stands in: goes on, not from the start
    assert _ids(taken) + _ids(iter(resumed)) == first


def test_sample_loader_resumes_from_its_samples_and_refuses_a_partial_batch():
    rows = [{"x": torch.tensor(i)} for i in range(20)]

    def collate(batch):
        return {"x": torch.stack([r["x"] for r in batch])}

    def loader():
        return SampleLoader(rows, collate, batch_size=2, dp_rank=0, dp_size=2, seed=3)

    full = loader()
    full.start_epoch(1)
    expected = _ids(iter(full))
    stopped = loader()
    stopped.start_epoch(1)
    stream = iter(stopped)
    taken = [next(stream) for _ in range(2)]
    assert stopped.state_dict() == {"epoch": 1, "samples": 4}
    again = loader()
    again.load_state_dict(stopped.state_dict())
    again.start_epoch(1)
    assert _ids(taken) + _ids(iter(again)) == expected
    with pytest.raises(ArcticError, match="not a whole number of micro-batches"):
        loader().load_state_dict({"epoch": 1, "samples": 3})


def test_eval_batches_give_each_sample_to_one_data_parallel_rank():
    data = list(range(7))
    seen = []
    for rank in (0, 1):
        batches = list(eval_batches(data, list, batch_size=2, dp_rank=rank, dp_size=2))
        assert len(batches) == eval_batch_count(data, batch_size=2, dp_rank=rank, dp_size=2)
        seen += _flat(batches)
    assert sorted(seen) == data
    stored = PreBatched(_stored(2))
    shares = [list(eval_batches(stored, None, batch_size=1, dp_rank=r, dp_size=2)) for r in (0, 1)]
    assert _ids(shares[0]) == [[0, 1, 2, 3], [100, 101, 102, 103]] and len(shares[1]) == 2


def test_length_grouped_loader_cuts_padding_keeps_the_samples_and_resumes():
    import datasets

    lengths = [1 + (i * 37) % 97 for i in range(300)]
    table = datasets.Dataset.from_dict({"input_ids": [[7] * n for n in lengths]})

    def collate(batch):
        return {"x": torch.tensor([len(r["input_ids"]) for r in batch])}

    def loader(group):
        return SampleLoader(table, collate, batch_size=4, dp_rank=1, dp_size=2, seed=3, group_by_length=group)

    def epoch(made, number):
        made.start_epoch(number)
        return [b["x"].tolist() for b in made]

    plain, grouped = epoch(loader(False), 1), epoch(loader(True), 1)
    assert sorted(_flat(grouped)) == sorted(_flat(plain)) and len(grouped) == len(plain) == 37  # same samples
    padded = {name: sum(4 * max(b) for b in run) for name, run in (("plain", plain), ("grouped", grouped))}
    assert padded["grouped"] < 0.7 * padded["plain"]
    assert grouped[:5] != sorted(grouped[:5], key=max, reverse=True)  # micro-batches are shuffled
    assert epoch(loader(True), 2) != grouped  # a new order each epoch
    stopped = loader(True)
    stopped.start_epoch(1)
    stream = iter(stopped)
    taken = [next(stream)["x"].tolist() for _ in range(5)]
    again = loader(True)
    again.load_state_dict(stopped.state_dict())
    assert taken + epoch(again, 1) == grouped
