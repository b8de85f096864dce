"""The sequence-parallel data path: each rank of a group gets a contiguous slice of every row.

Every rank of a sequence-parallel group receives the same micro-batch (core's topology deals
samples to data-parallel replicas). `shard_batch` cuts it, on the device, for rank j of S:

1. pad the rows to a multiple of S (k = ceil(L / S) positions per rank): pad token, label -100,
   position ids that go on counting (so padding extends the last sample, as the collate's does);
2. rank j keeps positions [jk, (j+1)k) and appends one **placeholder** position (pad token,
   position id one past its last), so its slice has k+1 positions;
3. its labels are the unshifted labels of positions [jk, (j+1)k] (k+1 of them: the last is the
   first label of the next rank's slice, -100 past the end).

Why the placeholder: every loss in Arctic (core's causal-LM loss and chunked losses, SwiftKV's
distillation mask) pairs hidden state t with `labels[t+1]` and drops the last position. With the
placeholder, local hidden state t (t < k) meets `labels[jk + t + 1]`, its true next-token label
(the labels are shifted before slicing, so pairs that straddle two ranks are kept), and the
dropped position is the placeholder: methods need no change. The placeholder never takes part
in attention (`arctic_alst.ulysses`) and never has a label.

Counts: `num_trainable_tokens` is recounted on the slice (labels[1:] != -100), so the group's
weights sum to the unsharded batch's and core's token-weighted loss is unchanged; `num_tokens`
counts this rank's real positions (rank 0 absorbs the difference to the collate's own count, so
the group's sum is exactly the collate's). The 2D `attention_mask` of unpacked rows is dropped:
rows are right-padded, so causal attention keeps every real token's result unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from arctic_core.errors import ArcticError

IGNORE_INDEX = -100
SEQUENCE_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")


def shard_batch(batch: dict[str, Any], size: int, rank: int, pad_id: int = 0) -> dict[str, Any]:
    """This rank's part of a micro-batch (see the module docstring)."""
    missing = [key for key in ("input_ids", "labels", "position_ids") if key not in batch]
    if missing:
        raise ArcticError(f"sequence parallelism needs {', '.join(missing)} in every batch (docs/alst.md)")
    ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    mask = batch.get("attention_mask")
    rows, length = ids.shape
    k = -(-length // size)
    pad = k * size - length
    real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    ids = F.pad(ids, (0, pad), value=pad_id)
    labels = F.pad(labels, (0, pad + 1), value=IGNORE_INDEX)
    steps = torch.arange(1, pad + 1, device=positions.device, dtype=positions.dtype)
    positions = torch.cat([positions, positions[:, -1:] + steps], dim=1)
    real = F.pad(real, (0, pad), value=False)
    start, end = rank * k, (rank + 1) * k
    local_labels = labels[:, start : end + 1]
    sharded = {key: value for key, value in batch.items() if key not in SEQUENCE_KEYS}
    sharded["input_ids"] = torch.cat([ids[:, start:end], ids.new_full((rows, 1), pad_id)], dim=1)
    sharded["position_ids"] = torch.cat([positions[:, start:end], positions[:, end - 1 : end] + 1], dim=1)
    sharded["labels"] = local_labels
    sharded["num_trainable_tokens"] = (local_labels[:, 1:] != IGNORE_INDEX).sum()
    if "num_tokens" in batch:
        mine = real[:, start:end].sum()
        if rank == 0:
            mine = mine + (torch.as_tensor(batch["num_tokens"], device=mine.device) - real.sum())
        sharded["num_tokens"] = mine
    return sharded
