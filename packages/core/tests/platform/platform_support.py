"""Test-only methods that exercise core's extension points from outside core (also a recipe `code:` file).

- `contrastive_test`: a two-tower bi-encoder on pre-batched (queries, documents) data. Its
  batches have no `input_ids`; each stored batch is one global batch, split over the
  data-parallel ranks and into accumulation micro-batches. The loss is InfoNCE of this rank's
  queries against the documents of every rank (`all_gather_with_grad`), weighted by queries,
  with an accuracy metric through `LossOutput`.
- `sp_test`: a tiny causal LM with a sequence-parallel size of 2 (through `topology_sizes`).
  Both ranks of the group receive the same samples; `prepare_batch` gives each rank the labels
  of every other position, so the loss is split between them as sequence sharding splits it.

Ranks record what they saw under `<run folder>/record/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from arctic_core.engine.loaders import PreBatched
from arctic_core.gather import all_gather_with_grad
from arctic_core.trainer import LossOutput, Trainer

DIM, EMBED = 16, 8
GLOBAL_BATCH = 8


def stored_batches(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Global batches of queries and the documents that answer them (a fixed noisy linear map)."""
    g = torch.Generator().manual_seed(seed)
    mapping = torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(1234))
    batches = []
    for _ in range(count):
        queries = torch.randn(GLOBAL_BATCH, DIM, generator=g)
        documents = queries @ mapping + 0.1 * torch.randn(GLOBAL_BATCH, DIM, generator=g)
        batches.append({"queries": queries, "documents": documents})
    return batches


class TwoTowers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query_tower = torch.nn.Linear(DIM, EMBED)
        self.document_tower = torch.nn.Linear(DIM, EMBED)


def _record(trainer: Trainer, name: str, value: Any) -> None:
    folder = Path(trainer.config.run_dir) / "record"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}_rank_{trainer.rank}.jsonl").open("a") as out:
        out.write(json.dumps(value) + "\n")


class ContrastiveTestTrainer(Trainer):
    name = "contrastive_test"
    reports_perplexity = False

    def setup_tokenizer(self) -> None:
        self.tokenizer = None

    def setup_data(self) -> None:
        stored = int(os.environ.get("ARCTIC_TEST_STORED_BATCHES", "6"))
        self.train_dataset = PreBatched(stored_batches(stored, seed=self.config.data.seed))
        self.eval_dataset = PreBatched(stored_batches(2, seed=99))
        self.collate = None

    def build_model(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return TwoTowers()

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        return float(batch["queries"].shape[0])

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        module = self.engine.module
        queries = F.normalize(module.query_tower(batch["queries"]), dim=-1)
        documents = F.normalize(module.document_tower(batch["documents"]), dim=-1)
        every_document = all_gather_with_grad(documents, group=self.groups.dp_group)
        local = queries.shape[0]
        targets = torch.arange(local) + self.topology.dp_rank * local
        scores = queries @ every_document.T / 0.1
        if torch.is_grad_enabled():  # training, not evaluation
            _record(self, "queries", hashlib.sha1(batch["queries"].numpy().tobytes()).hexdigest())
        accuracy = (scores.argmax(dim=-1) == targets).float().mean()
        return LossOutput(F.cross_entropy(scores, targets), metrics={"accuracy": accuracy})


class SequenceParallelTestTrainer(Trainer):
    """A tiny causal LM trained by a sequence-parallel group of 2 (no Ulysses: every rank runs the whole
    sequence, and the group splits the trainable positions between its ranks)."""

    name = "sp_test"

    def topology_sizes(self) -> dict[str, int]:
        return {"sequence_parallel_size": int(os.environ.get("ARCTIC_TEST_SP", "2"))}

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        if torch.is_grad_enabled():  # training, not evaluation
            _record(self, "batches", hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest())
        size, member = self.topology.sequence_parallel_size, self.topology.sp_rank
        if size == 1:
            return batch
        labels = batch["labels"].clone()
        positions = torch.arange(labels.shape[1]).expand_as(labels)
        labels[positions % size != member] = -100
        return {**batch, "labels": labels, "num_trainable_tokens": (labels[:, 1:] != -100).sum()}
