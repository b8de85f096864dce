"""Shared pieces of the engine tests: in-memory token data, a collate obeying the batch contract,
and a recorder trainer (registered as `engine_test`).

This file is also a recipe `code:` file: launched ranks import it to get the same trainer and
data. Rows are generated from a seed, half with many trainable tokens and half with two, so
micro-batches' trainable-token counts differ several-fold.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from arctic_core.testing.runs import read_metrics  # noqa: F401  (re-exported to the tests)
from arctic_core.trainer import Trainer

VOCAB_LOW, VOCAB_HIGH = 10, 1000
PAD_ID = 0


def make_rows(n: int, seed: int = 0, *, min_len: int = 8, max_len: int = 24) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows; even rows train on every token after the first, odd rows on their last two."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(VOCAB_LOW, VOCAB_HIGH, (length,), generator=g).tolist()
        labels = [-100, *ids[1:]] if i % 2 == 0 else [-100] * (length - 2) + ids[-2:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; labels -100 on padding and at position 0; position ids keep counting."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        labels[i, 0] = -100
        mask[i, :n] = 1
    positions = torch.arange(width).expand(len(rows), width).clone()
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        "attention_mask": mask,
        "num_trainable_tokens": (labels != -100).sum(),
    }


PROBE = torch.tensor([[11, 57, 300, 42, 999, 123, 7, 64]])


class RecorderTrainer(Trainer):
    """Trains on `make_rows`; records per-micro-batch token counts, per-step gradients and final logits.

    Launched ranks write what they record under the run folder (`record/`), rank 0 only.
    """

    name = "engine_test"
    train_rows = 32
    eval_rows = 0
    record_grads = True

    def setup_data(self) -> None:
        n_train = int(os.environ.get("ARCTIC_TEST_TRAIN_ROWS", self.train_rows))
        n_eval = int(os.environ.get("ARCTIC_TEST_EVAL_ROWS", self.eval_rows))
        self.train_dataset = make_rows(n_train, seed=1)
        self.eval_dataset = make_rows(n_eval, seed=2) if n_eval else None
        self.collate = collate
        self.micro_counts: list[int] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.seen: list[list[int]] = []

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.engine.training:
            self.micro_counts.append(int(batch["num_trainable_tokens"]))
            self.seen.append(batch["input_ids"][:, :4].tolist())
        return super().loss(batch)

    def before_optimizer_step(self) -> None:
        if not self.record_grads:
            return
        from deepspeed.utils import safe_get_full_grad

        grads = {}
        for name, param in self.engine.module.named_parameters():
            if param.requires_grad:
                grad = safe_get_full_grad(param)
                grads[name] = grad.detach().float().cpu().clone() if grad is not None else None
        self.grads.append(grads)

    def probe_logits(self) -> torch.Tensor:
        self.engine.eval()
        with torch.no_grad():
            logits = self.engine(input_ids=PROBE.to(self.device), use_cache=False).logits
        return logits.float().cpu()

    def train(self) -> None:
        super().train()
        if os.environ.get("ARCTIC_TEST_DUMP") != "1":
            return
        logits = self.probe_logits()
        if self.rank == 0:
            out = Path(self.config.run_dir) / "record"
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"grads": self.grads, "logits": logits}, out / "record.pt")
            (out / "micro_counts.json").write_text(json.dumps(self.micro_counts))
