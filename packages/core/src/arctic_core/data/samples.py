"""Per-source processing: normalise each row, tokenize and mask it, and apply the length rules.

`SampleBuilder` is the batched `datasets.map` function. Every input row yields one output
row (a plain-text document yields one per `max_length` piece; a conversation whose template
rewrites earlier turns yields one more per rewritten turn, `arctic_core.data.masking`) with a `status`: `ok`,
`truncated`, or a drop reason (`too_long`, `no_trainable_tokens`); dropped rows carry no
tokens and are filtered out after their reasons are counted. With `data.strict` a drop or
a truncation is an error naming the source and row instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arctic_core.config import DataConfig
from arctic_core.data import masking, parity
from arctic_core.data.errors import DataError
from arctic_core.data.formats import RoleMapping, normalize
from arctic_core.errors import RecipeError

IGNORE = masking.IGNORE
OK, TRUNCATED, TOO_LONG, NOTHING_TRAINABLE = "ok", "truncated", "too_long", "no_trainable_tokens"
KEPT = (OK, TRUNCATED)
PARITY_ROWS = 16
"""A source's first rows whose conversations are checked for train/serve parity (a warning when not)."""
Sample = dict[str, Any]


def tokenize_row(
    row: dict[str, Any], masker: masking.ChatMasker, data: DataConfig, where: str
) -> list[Sample]:
    """The token sequences of one canonical row: `input_ids`/`labels` (or `chosen_*`/`rejected_*`)."""
    kind, tokenizer = row["kind"], masker.tokenizer
    if kind == "chat":
        samples = masker.samples(row["messages"], where, tools=row.get("tools"))
        return [{"input_ids": ids, "labels": labels} for ids, labels in samples]
    if kind == "text":
        return [
            {"input_ids": i, "labels": lab}
            for i, lab in masking.text_pieces(tokenizer, row["text"], data.max_length)
        ]
    if kind == "prompt_completion":
        ids, labels = masking.prompt_completion(tokenizer, row["prompt"], row["completion"], data.mask_inputs)
        return [{"input_ids": ids, "labels": labels}]
    prompt = row["prompt"]
    sample: Sample = {}
    for side in ("chosen", "rejected"):
        ids, labels = masker(prompt + row[side], where, train_from=len(prompt), tools=row.get("tools"))
        sample[f"{side}_input_ids"], sample[f"{side}_labels"] = ids, labels
    return [sample]


def _label_keys(sample: Sample) -> list[tuple[str, str]]:
    if "input_ids" in sample:
        return [("input_ids", "labels")]
    return [("chosen_input_ids", "chosen_labels"), ("rejected_input_ids", "rejected_labels")]


def apply_length_rules(sample: Sample, data: DataConfig, where: str) -> tuple[Sample, str]:
    """Truncate or drop a too-long sample, drop one with nothing to train; return it with its status."""
    keys = _label_keys(sample)
    status = OK
    if max(len(sample[ids]) for ids, _ in keys) > data.max_length:
        if data.filter_samples or data.strict:
            return _refuse(sample, TOO_LONG, data, where)
        status = TRUNCATED
        for ids, labels in keys:
            sample[ids], sample[labels] = sample[ids][: data.max_length], sample[labels][: data.max_length]
    if min(sum(t != IGNORE for t in sample[labels]) for _, labels in keys) == 0:
        return _refuse(sample, NOTHING_TRAINABLE, data, where)
    return sample, status


def _refuse(sample: Sample, reason: str, data: DataConfig, where: str) -> tuple[Sample, str]:
    if data.strict:
        detail = (
            f"longer than data.max_length = {data.max_length}" if reason == TOO_LONG else "no trainable token"
        )
        raise DataError(f"{where}: {detail} (data.strict = true forbids dropping samples)")
    return {key: [] for key in sample}, reason


class SampleBuilder:
    """Batched `datasets.map` function for one source (picklable, for worker processes).

    A method changes how its samples are cut or dropped by overriding `length_rules`, and names
    its subclass in `DataFactory.builder_class`.
    """

    def __init__(self, tokenizer: Any, data: DataConfig, source: str, fmt: str, mapping: RoleMapping):
        self.data, self.source, self.fmt, self.mapping = data, source, fmt, mapping
        template = f"chat template of tokenizer {getattr(tokenizer, 'name_or_path', '')!r}"
        self.masker = masking.ChatMasker(
            tokenizer,
            mask_inputs=data.mask_inputs,
            template_name=template,
            train_on_reasoning=data.train_on_reasoning,
            ignore_empty_think=data.ignore_empty_think,
        )
        self.columns = (
            ["input_ids", "labels"]
            if fmt != "preference"
            else ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
        )

    def check_template(self) -> None:
        """A chat-format source needs a chat template (raise before any row is processed)."""
        if (
            self.fmt in ("chat", "sharegpt", "alpaca", "preference")
            and not self.masker.tokenizer.chat_template
        ):
            raise RecipeError(
                f"source {self.source!r} holds conversations ({self.fmt}) but the tokenizer has no chat template; "
                "set one (a Jinja string or a file path)",
                path="tokenizer.chat_template",
            )

    def __call__(self, batch: dict[str, list[Any]], indices: Sequence[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            key: [] for key in (*self.columns, "status", "length", "num_trainable", "row")
        }
        names = list(batch)
        for position, index in enumerate(indices):
            where = f"source {self.source!r} row {index}"
            row = normalize({name: batch[name][position] for name in names}, self.fmt, self.mapping, where)
            if row["kind"] == "chat" and not self.masker.tokenizer.chat_template:
                self.check_template()
            tokenized = tokenize_row(row, self.masker, self.data, where)
            if index < PARITY_ROWS and self.data.mask_inputs:
                parity.warn_if_parity_fails(self.masker, row, tokenized, where)
            for sample in tokenized:
                sample, status = self.length_rules(sample, where)
                for key in self.columns:
                    out[key].append(sample[key])
                label_keys = [k for k in self.columns if k.endswith("labels")]
                out["status"].append(status)
                out["length"].append(max(len(sample[k]) for k in self.columns))
                out["num_trainable"].append(min(sum(t != IGNORE for t in sample[k]) for k in label_keys))
                out["row"].append(index)
        return out

    def length_rules(self, sample: Sample, where: str) -> tuple[Sample, str]:
        """Truncate or drop a too-long sample, drop one with nothing to train (`apply_length_rules`)."""
        return apply_length_rules(sample, self.data, where)


class PretokenizedBuilder:
    """`process = false`: rows already hold `input_ids` (and maybe `labels`); only the length rules apply."""

    columns = ["input_ids", "labels"]

    def __init__(self, data: DataConfig, source: str):
        self.data, self.source = data, source

    def __call__(self, batch: dict[str, list[Any]], indices: Sequence[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            key: [] for key in ("input_ids", "labels", "status", "length", "num_trainable", "row")
        }
        for position, index in enumerate(indices):
            where = f"source {self.source!r} row {index}"
            ids = batch.get("input_ids", [None] * len(indices))[position]
            if not ids:
                raise DataError(f"{where}: a source with process = false needs an `input_ids` column")
            given = batch.get("labels", [None] * len(indices))[position]
            labels = list(given) if given is not None else [IGNORE, *ids[1:]]
            sample, status = apply_length_rules({"input_ids": list(ids), "labels": labels}, self.data, where)
            out["input_ids"].append(sample["input_ids"])
            out["labels"].append(sample["labels"])
            out["status"].append(status)
            out["length"].append(len(sample["input_ids"]))
            out["num_trainable"].append(sum(t != IGNORE for t in sample["labels"]))
            out["row"].append(index)
        return out
