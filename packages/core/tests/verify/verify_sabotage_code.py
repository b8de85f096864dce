"""Recipe `code:` for the verify sabotage tests: one trainer that breaks what verify checks.

- `micro_batch_weight` returns 1: a step's loss is the mean of its micro-batch means, so
  micro-batches (and ranks) with fewer trainable tokens count too much;
- its collate drops `position_ids`: packed rows then read as one long sequence, their
  samples no longer kept apart;
- its restore forgets the data position: a resumed run starts its epoch's data over.
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_core.data import DataFactory
from arctic_core.trainer import Trainer


class LeakyPackingFactory(DataFactory):
    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().collate(rows)
        batch.pop("position_ids")
        return batch


class Sabotaged(Trainer):
    name = "verify_sabotaged"
    data_factory_class = LeakyPackingFactory

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        return 1.0

    def subscribe(self, events: Any) -> None:
        if self.resume_point is not None:  # a resumed run that starts its epoch over
            loader = self.state.loader
            events.subscribe(
                "train_start", lambda: loader.load_state_dict({"epoch": loader.epoch, "samples": 0})
            )
