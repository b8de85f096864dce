"""A recipe `code:` file for the two-rank test: the embed method with in-batch negatives on odd steps only.

`embed_alternating_test` is `EmbedTrainer` with one change: steps 1, 3, ... use in-batch negatives
and steps 2, 4, ... known negatives only, so one launched run checks both masks against one rank.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from arctic_embed.trainer import EmbedTrainer


class AlternatingNegativesTrainer(EmbedTrainer):
    name = "embed_alternating_test"

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch = super().prepare_batch(batch)
        odd_step = self.global_step % 2 == 0  # global_step counts finished steps
        return {**batch, "targets": dataclasses.replace(batch["targets"], in_batch_negatives=odd_step)}
