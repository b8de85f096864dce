"""Training and evaluation loaders that shard over data-parallel ranks and carry their own position.

Two kinds of training data:

- samples (any sized dataset of rows): `SampleLoader`, a seeded shuffle re-drawn every epoch,
  sharded over the data-parallel ranks without duplicates (`DistributedSampler`, last partial
  share dropped), `micro_batch_size` rows per micro-batch through the method's collate;
  with `data.group_by_length`, rows of similar length share a micro-batch (`group_by_length`).
- pre-batched data (`PreBatched`): each stored item is one whole global batch (one optimizer
  step), as ArcticTraining's embedding data is stored. `PreBatchedLoader` gives this
  data-parallel rank its share of each stored batch, cut into `gradient_accumulation_steps`
  micro-batches, by the method's `split` function.

Both count the micro-batches they hand out and save that position with the epoch
(`state_dict`, plain JSON-able numbers). A resumed run loads the state and continues exactly
where the checkpointed run stood: the sample loader tells its sampler to skip the samples
already consumed (no data is read for them); the pre-batched loader skips stored batches.
The loop never computes a position from batch settings.

Ranks of one sequence-parallel group share a data-parallel rank, so they receive identical
micro-batches (`arctic_core.engine.topology`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from arctic_core.errors import ArcticError

Batch = dict[str, Any]


GROUP_WINDOW = 64
"""Length grouping sorts windows of this many micro-batches' samples (HF's LengthGroupedSampler: 50)."""


def group_by_length(indices: list[int], lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """`indices` reordered so that each run of `batch_size` holds samples of similar length.

    Windows of `GROUP_WINDOW` micro-batches of the (already shuffled) indices are sorted by length,
    cut into micro-batches, and all micro-batches are shuffled with `seed`; a partial last
    micro-batch stays last (the loader drops it). Same inputs, same order: resumable by skipping.
    """
    full = len(indices) // batch_size * batch_size
    window = batch_size * GROUP_WINDOW
    batches = []
    for start in range(0, full, window):
        part = sorted(indices[start : min(start + window, full)], key=lambda i: -lengths[i])
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()
    return [i for b in order for i in batches[b]] + indices[full:]


def sample_lengths(dataset: Any) -> list[int]:
    """Each row's token count: its longest `*input_ids` column, read from the Arrow table (no decoding)."""
    import pyarrow.compute as pc

    columns = [c for c in getattr(dataset, "column_names", []) if c.endswith("input_ids")]
    if not columns:
        raise ArcticError(
            "data.group_by_length needs a tokenized dataset with an input_ids column; "
            f"this one has {getattr(dataset, 'column_names', None)}"
        )
    table = dataset.with_format("arrow")[:]
    counts = [pc.list_value_length(table.column(c)).to_pylist() for c in columns]
    return [max(row) for row in zip(*counts)]


class ResumableSampler(DistributedSampler):  # type: ignore[type-arg]
    """A `DistributedSampler` whose next pass can start part-way through the epoch (for resuming).

    `skip_next(n)` drops this rank's first n samples of the next `iter()` only. Indices are drawn
    in the main process, so this holds with data-loader workers too. With `lengths`, each epoch's
    indices are grouped by length into runs of `batch_size` (`group_by_length`, seeded by the
    seed and the epoch).
    """

    def __init__(self, *args: Any, lengths: Sequence[int] | None = None, batch_size: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skip = 0
        self.lengths, self.batch_size = lengths, batch_size

    def skip_next(self, samples: int) -> None:
        self.skip = samples

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())
        if self.lengths is not None:
            indices = group_by_length(indices, self.lengths, self.batch_size, self.seed + self.epoch)
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def _ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers leave SIGINT/SIGTERM to their rank, which stops after the current step.

    (A worker killed by SIGTERM would make its rank fail with "DataLoader worker exited
    unexpectedly" while it finishes the step.) Workers still end when their rank does:
    `close`, or their watchdog once the rank has died.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainLoader:
    """What the loop needs of a training loader (both kinds below implement it)."""

    epoch: int = 0
    position: int = 0
    """Micro-batches of the current epoch handed out so far (this rank)."""

    def __len__(self) -> int:
        """Micro-batches per epoch on this rank."""
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Begin `epoch` at its start, unless it is the epoch a restored state stands in (then go on)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch's micro-batches, counting each one handed out."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, int]:
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release worker processes (default: none)."""


class SampleLoader(TrainLoader):
    """Seeded, reshuffled each epoch, sharded over data-parallel ranks; resumes by skipping samples.

    The loader draws its workers' seeds from its own generator, never from the global torch RNG,
    so iterating it does not change the RNG state a checkpoint records.
    """

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable[[list[Any]], Batch],
        *,
        batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        workers: int = 0,
        group_by_length: bool = False,
    ):
        self.batch_size = batch_size
        self.sampler = ResumableSampler(
            dataset,
            num_replicas=dp_size,
            rank=dp_rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
            lengths=sample_lengths(dataset) if group_by_length else None,
            batch_size=batch_size,
        )
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            collate_fn=collate,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_ignore_stop_signals if workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip_next(self.position * self.batch_size)
        for batch in self.loader:
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Epoch and samples consumed in it on this rank (samples, so a changed batch size stays exact)."""
        return {"epoch": self.epoch, "samples": self.position * self.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        samples = int(state["samples"])
        if samples % self.batch_size:
            raise ArcticError(
                f"the checkpoint's data position ({samples} samples into epoch {state['epoch']}) is not a "
                f"whole number of micro-batches of {self.batch_size}; resume with the micro batch size it used"
            )
        self.epoch, self.position = int(state["epoch"]), samples // self.batch_size

    def close(self) -> None:
        """Stop persistent workers now, cleanly.

        Needed because the workers ignore SIGTERM: at interpreter exit, multiprocessing would
        terminate (SIGTERM) and then wait for them forever.
        """
        iterator = getattr(self.loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if iterator is not None:
            self.loader._iterator = None


def split_rows(batch: Mapping[str, Any], index: int, parts: int) -> Batch:
    """Part `index` of `parts` contiguous, equal parts of every tensor or list of the batch's row count.

    The row count is the first dimension of the batch's first tensor (or length of its first list);
    values of another size (counts, settings) are kept whole.
    """
    rows = next((_rows(v) for v in batch.values() if _rows(v) is not None), None)
    if rows is None or rows % parts:
        raise ArcticError(f"a stored batch of {rows} rows cannot be split into {parts} equal parts")
    size = rows // parts
    part = slice(index * size, (index + 1) * size)
    return {k: v[part] if _rows(v) == rows else v for k, v in batch.items()}


def _rows(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() else None
    if isinstance(value, list):
        return len(value)
    return None


class PreBatched:
    """A dataset whose every item is one global batch; `split(batch, index, parts)` gives a part of one.

    Set `Trainer.train_dataset` to a `PreBatched` to train on it: each stored batch is one
    optimizer step, first split over the data-parallel ranks, then into accumulation micro-batches.
    `collate` (if given) turns a stored item into a batch first. `shuffle` reorders the stored
    batches each epoch with the data seed; by default they are used in the order stored.
    """

    def __init__(
        self,
        batches: Sequence[Any],
        *,
        split: Callable[[Batch, int, int], Batch] = split_rows,
        collate: Callable[[Any], Batch] | None = None,
        shuffle: bool = False,
    ):
        self.batches = batches
        self.split = split
        self.collate = collate
        self.shuffle = shuffle

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Batch:
        item = self.batches[index]
        return self.collate(item) if self.collate is not None else item


class PreBatchedLoader(TrainLoader):
    """This data-parallel rank's share of each stored global batch, as `accumulation` micro-batches."""

    def __init__(self, data: PreBatched, *, accumulation: int, dp_rank: int, dp_size: int, seed: int):
        self.data = data
        self.accumulation = accumulation
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data) * self.accumulation

    def order(self) -> list[int]:
        indices = list(range(len(self.data)))
        if self.data.shuffle:
            random.Random(self.seed + self.epoch).shuffle(indices)
        return indices

    def __iter__(self) -> Iterator[Batch]:
        gas = self.accumulation
        for stored in self.order()[self.position // gas :]:
            mine = self.data.split(self.data[stored], self.dp_rank, self.dp_size)
            for k in range(self.position % gas, gas):
                self.position += 1
                yield self.data.split(mine, k, gas)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "micro_batches": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["micro_batches"])


def train_loader(
    dataset: Any,
    collate: Callable[[list[Any]], Batch],
    *,
    batch_size: int,
    accumulation: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    workers: int,
    group_by_length: bool = False,
) -> TrainLoader:
    """The loader for a training dataset: `PreBatchedLoader` for `PreBatched` data, else `SampleLoader`."""
    if isinstance(dataset, PreBatched):
        return PreBatchedLoader(
            dataset, accumulation=accumulation, dp_rank=dp_rank, dp_size=dp_size, seed=seed
        )
    return SampleLoader(
        dataset,
        collate,
        batch_size=batch_size,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=seed,
        workers=workers,
        group_by_length=group_by_length,
    )


def eval_batches(
    dataset: Any, collate: Any, *, batch_size: int, dp_rank: int, dp_size: int
) -> Iterator[Batch]:
    """This rank's evaluation batches: samples r, r+D, ... (pre-batched: its share of each stored batch)."""
    if isinstance(dataset, PreBatched):
        for index in range(len(dataset)):
            yield dataset.split(dataset[index], dp_rank, dp_size)
        return
    indices = list(range(dp_rank, len(dataset), dp_size))
    for start in range(0, len(indices), batch_size):
        yield collate([dataset[i] for i in indices[start : start + batch_size]])


def eval_batch_count(dataset: Any, *, batch_size: int, dp_rank: int, dp_size: int) -> int:
    if isinstance(dataset, PreBatched):
        return len(dataset)
    mine = len(range(dp_rank, len(dataset), dp_size))
    return -(-mine // batch_size)
