"""Preference pairs for DPO: prompt truncation, length rules, and pair batches.

Core's pipeline already normalises preference rows (strings or message lists, ultrafeedback's
full conversations) and tokenizes each side as prompt + answer with the chat template, the
prompt masked. This factory changes two things:

- Length rules per pair: a prompt longer than `data.max_prompt_length` tokens is cut first
  (`prompt_truncation = "keep_end"` keeps its last tokens: the final user turn and the
  assistant header next to the answer; `"keep_start"` keeps its first), identically on both
  sides. Then a side longer than `data.max_length` drops the pair (`filter_samples`, default)
  or has its answer cut at the end. A pair with no trainable token on either side is dropped.
- Batches: `B` pairs become one batch of `2B` rows, `[chosen rows; rejected rows]`, with the
  batch contract's keys (`input_ids`, `labels`, `position_ids`, `attention_mask`) plus
  `num_pairs` (what the DPO trainer weights a micro-batch by: a step's loss is the mean over
  its pairs, however they are split over accumulation steps and ranks), the counts
  `num_tokens`/`num_trainable_tokens` for throughput, and the reference log-probs
  `ref_chosen_logps`/`ref_rejected_logps` when they were precomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from arctic_core.data import DataFactory, collate
from arctic_core.data.errors import DataError
from arctic_core.data.samples import IGNORE, NOTHING_TRAINABLE, OK, TOO_LONG, TRUNCATED, SampleBuilder

SIDES = ("chosen", "rejected")
COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def prompt_length(labels: Sequence[int]) -> int:
    """Tokens before the first trained one (the masked prompt)."""
    return next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))


def truncate_prompt(sample: dict[str, list[int]], max_prompt: int, keep: str) -> bool:
    """Cut both sides' shared prompt to `max_prompt` tokens in place; True when something was cut."""
    cut = False
    for side in SIDES:
        ids, labels = sample[f"{side}_input_ids"], sample[f"{side}_labels"]
        n = prompt_length(labels)
        if n <= max_prompt:
            continue
        cut = True
        if keep == "keep_end":
            ids, labels = ids[n - max_prompt :], labels[n - max_prompt :]
        else:
            ids, labels = ids[:max_prompt] + ids[n:], labels[:max_prompt] + labels[n:]
        sample[f"{side}_input_ids"], sample[f"{side}_labels"] = ids, labels
    return cut


def pair_length_rules(
    sample: dict[str, list[int]], data: Any, where: str
) -> tuple[dict[str, list[int]], str]:
    """Prompt truncation, then max_length (drop or cut the answers), then the nothing-trainable rule."""
    status = OK
    if data.max_prompt_length is not None and truncate_prompt(
        sample, data.max_prompt_length, data.prompt_truncation
    ):
        status = TRUNCATED
    if max(len(sample[f"{s}_input_ids"]) for s in SIDES) > data.max_length:
        if data.filter_samples or data.strict:
            return _refuse(sample, TOO_LONG, data, where)
        status = TRUNCATED
        for key in COLUMNS:
            sample[key] = sample[key][: data.max_length]
    if min(sum(t != IGNORE for t in sample[f"{s}_labels"]) for s in SIDES) == 0:
        return _refuse(sample, NOTHING_TRAINABLE, data, where)
    return sample, status


def _refuse(sample: dict[str, list[int]], reason: str, data: Any, where: str) -> tuple[dict, str]:
    if data.strict:
        raise DataError(f"{where}: pair dropped ({reason}); data.strict = true forbids dropping samples")
    return {key: [] for key in sample}, reason


class PreferenceBuilder(SampleBuilder):
    """Core's per-source builder for preference rows, with the pair length rules."""

    def length_rules(self, sample: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
        return pair_length_rules(sample, self.data, where)


class DPODataFactory(DataFactory):
    """Preference pairs only; pairs are collated as `[chosen rows; rejected rows]`."""

    def cache_parts(self) -> dict[str, Any]:
        parts = super().cache_parts()
        data: Any = self.data  # DPODataConfig
        parts["preference"] = {
            "max_prompt_length": data.max_prompt_length,
            "prompt_truncation": data.prompt_truncation,
        }
        return parts

    builder_class = PreferenceBuilder

    def check_format(self, fmt: str, name: str) -> None:
        if fmt != "preference":
            raise DataError(
                f"{name}: dpo trains on preference pairs (prompt/chosen/rejected), but this source's "
                f'format is {fmt!r}; set `format = "preference"` or `role_mapping` for other column names'
            )

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """`B` pairs -> one batch of `2B` rows: chosen rows first, then rejected rows."""
        if "chosen_input_ids" not in rows[0]:
            raise DataError(f"dpo needs preference pairs; got rows with columns {sorted(rows[0])}")
        sides = [
            {"input_ids": row[f"{side}_input_ids"], "labels": row[f"{side}_labels"]}
            for side in SIDES
            for row in rows
        ]
        batch = collate.collate_rows(
            sides,
            pad_id=self.pad_id,
            div_length=self.data.div_length,
            max_length=self.data.max_length,
            pad_to=self.data.pad_to,
        )
        batch["num_pairs"] = torch.tensor(len(rows))
        if REF_COLUMNS[0] in rows[0]:
            for key in REF_COLUMNS:
                batch[key] = torch.tensor([row[key] for row in rows], dtype=torch.float32)
        return batch
