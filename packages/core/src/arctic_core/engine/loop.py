"""Pieces of the training loop that need no trainer: the default loss, batch bookkeeping, data loaders.

Loss weighting (see docs/training.md): `Trainer.loss(batch)` returns the micro-batch's mean
over its trainable tokens. An optimizer step's loss must be the mean over every trainable
token of the global batch, so micro-batch i of the step is weighted by n_i / N, where N sums
n_i over every micro-batch of the step on every rank (one all-reduce before the first
forward). DeepSpeed then averages gradients over the R data-parallel ranks, so the loop
hands `engine.backward` the loss times `n_i x R / N` and asks it not to divide by the
accumulation steps (`scale_wrt_gas=False`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over trainable tokens; labels are unshifted (logits[:, :-1] predict labels[:, 1:]).

    A micro-batch without a trainable token gives 0 with zero gradients (not NaN), so it cannot
    poison the step it belongs to.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:].to(shifted_logits.device)
    total = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (shifted_labels != IGNORE_INDEX).sum().clamp(min=1)


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch-contract keys a causal LM's forward takes (never `labels`: the loss is computed here)."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def trainable_count(batch: Mapping[str, Any]) -> float:
    """The micro-batch's trainable tokens, or 1 when the batch does not say (equal weights)."""
    count = batch.get("num_trainable_tokens")
    return float(count) if count is not None else 1.0


def token_count(batch: Mapping[str, Any]) -> int:
    """Real tokens in the micro-batch: the attention mask's ones when unpacked, else every position."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def labelled_count(batch: Mapping[str, Any]) -> int:
    if "labels" not in batch:
        return 0
    return int((batch["labels"] != IGNORE_INDEX).sum())


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class ResumableSampler(DistributedSampler):  # type: ignore[type-arg]
    """A `DistributedSampler` whose next pass can start part-way through the epoch (for resuming).

    `skip_next(n)` drops this rank's first n samples of the next `iter()` only. Indices are drawn
    in the main process, so this holds with data-loader workers too.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def skip_next(self, samples: int) -> None:
        self.skip = samples

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def _ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers leave SIGINT/SIGTERM to their rank, which stops after the current step.

    (A worker killed by SIGTERM would make its rank fail with "DataLoader worker exited
    unexpectedly" while it finishes the step.) Workers still end when their rank does:
    `close_loader`, or their watchdog once the rank has died.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def close_loader(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now, cleanly.

    Needed because the workers ignore SIGTERM: at interpreter exit, multiprocessing would
    terminate (SIGTERM) and then wait for them forever.
    """
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if iterator is not None:
        loader._iterator = None


def train_loader(
    dataset: Dataset, collate: Any, *, batch_size: int, rank: int, world_size: int, seed: int, workers: int
) -> tuple[DataLoader, ResumableSampler]:
    """Seeded, shuffled, sharded over ranks without duplicates; call `sampler.set_epoch` every epoch.

    The loader draws its workers' seeds from its own generator, never from the global torch RNG,
    so iterating it does not change the RNG state a checkpoint records.
    """
    sampler = ResumableSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def eval_batches(
    dataset: Sequence[Any], collate: Any, *, batch_size: int, rank: int, world_size: int
) -> Iterator[dict[str, Any]]:
    """This rank's evaluation batches: samples rank, rank+R, ...; each sample on exactly one rank."""
    indices = list(range(rank, len(dataset), world_size))
    for start in range(0, len(indices), batch_size):
        yield collate([dataset[i] for i in indices[start : start + batch_size]])


def eval_batch_count(size: int, *, batch_size: int, rank: int, world_size: int) -> int:
    mine = len(range(rank, size, world_size))
    return -(-mine // batch_size)
