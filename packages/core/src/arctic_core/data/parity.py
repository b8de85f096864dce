"""Train/serve parity: every trained assistant turn is trained on exactly the tokens it is served with.

A server renders the conversation so far with the generation prompt and tokenizes that text
alone (the *context*); the model then generates the turn, which the template renders as the
text it adds for that message, through the end-of-turn marker. This module recomputes both
that way, independently of how `ChatMasker` cut the samples, and checks each turn: some sample
must start with the context followed by the turn's tokens, label nothing but tokens of its
turns (reasoning may be masked), and label the turn's end-of-turn marker. A row is identical
when all its turns pass; otherwise the first differing token of its first failing turn is
reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs

from arctic_core.data.errors import DataError
from arctic_core.data.masking import IGNORE, ChatMasker, Message, Tokens, common_prefix

log = logging.getLogger(__name__)


@attrs.frozen
class Mismatch:
    """Where one turn's training tokens part from its served tokens."""

    where: str
    turn: int
    position: int
    expected: str
    got: str

    def describe(self) -> str:
        return (
            f"{self.where}: assistant message {self.turn}: token {self.position} is {self.got!r}, "
            f"served {self.expected!r}"
        )


@attrs.frozen
class ParityReport:
    """Parity over a set of rows: how many were identical, and the first difference of the others."""

    rows: int = 0
    identical: int = 0
    mismatches: tuple[Mismatch, ...] = ()

    @property
    def share(self) -> float:
        return self.identical / self.rows if self.rows else 1.0

    def add(self, found: list[Mismatch]) -> ParityReport:
        return ParityReport(self.rows + 1, self.identical + (not found), (*self.mismatches, *found[:1]))

    def describe(self) -> str:
        lines = [f"parity: {self.identical}/{self.rows} samples identical to serving ({self.share:.0%})"]
        lines += [f"  {m.describe()}" for m in self.mismatches]
        return "\n".join(lines)


def served(masker: ChatMasker, messages: Sequence[Message], i: int, tools: Any, where: str) -> Tokens | None:
    """`(context, turn)` tokens of assistant message i as a server sees them; None if not separable."""
    context_text = masker.render(messages[:i], generation_prompt=True, where=where, tools=tools)
    text = masker.render(messages[: i + 1], generation_prompt=False, where=where, tools=tools)
    if not text.startswith(context_text):
        return None
    context, turn = masker.encode([context_text, text[len(context_text) :]])
    whole = context + turn
    return context, whole[len(context) : masker.end_of_turn(whole, len(context), len(whole))]


def check_row(
    masker: ChatMasker,
    messages: Sequence[Message],
    samples: list[Tokens],
    where: str,
    *,
    tools: Any = None,
    train_from: int = 0,
) -> list[Mismatch]:
    """The turns of one conversation whose training tokens differ from serving (empty: parity holds)."""
    found, windows = [], [set[int]() for _ in samples]
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < train_from or m.get("train") is False:
            continue
        try:
            parts = served(masker, messages, i, tools, where)
        except DataError as exc:
            found.append(Mismatch(where, i, 0, "(the template fails)", str(exc)))
            continue
        if parts is None:
            found.append(Mismatch(where, i, 0, "(context rendered alone)", "(a different context)"))
            continue
        context, turn = parts
        want = context + turn
        k, (ids, labels) = max(
            ((n, s) for n, s in enumerate(samples)), key=lambda p: common_prefix(p[1][0], want)
        )
        same = common_prefix(ids, want)
        if same < len(want):
            got = masker.tokenizer.decode(ids[same : same + 1]) if same < len(ids) else "(end of sample)"
            found.append(Mismatch(where, i, same, masker.tokenizer.decode(want[same : same + 1]), got))
            continue
        span = range(len(context), len(want))
        windows[k].update(span)
        if labels[span[-1]] == IGNORE or any(labels[j] not in (IGNORE, ids[j]) for j in span):
            found.append(Mismatch(where, i, span[-1], "(trained end of turn)", "(not trained)"))
    for (ids, labels), window in zip(samples, windows):
        stray = next((j for j, t in enumerate(labels) if t != IGNORE and j not in window), None)
        if stray is not None:
            decoded = masker.tokenizer.decode(ids[stray : stray + 1])
            found.append(Mismatch(where, -1, stray, "(no label outside assistant turns)", decoded))
    return found


def check_sample(
    masker: ChatMasker, row: dict[str, Any], samples: list[Tokens], where: str
) -> list[Mismatch]:
    """Parity of one normalised row (`chat` or `preference`; others pass) given its samples."""
    if row["kind"] == "chat":
        return check_row(masker, row["messages"], samples, where, tools=row.get("tools"))
    if row["kind"] != "preference":
        return []
    found: list[Mismatch] = []
    for side, sample in zip(("chosen", "rejected"), samples):
        messages = row["prompt"] + row[side]
        found += check_row(
            masker,
            messages,
            [sample],
            f"{where} {side}",
            tools=row.get("tools"),
            train_from=len(row["prompt"]),
        )
    return found


def check_rows(masker: ChatMasker, rows: list[tuple[dict[str, Any], list[Tokens], str]]) -> ParityReport:
    """Parity over normalised rows with their samples (`chat` and `preference` rows; others are skipped)."""
    report = ParityReport()
    for row, samples, where in rows:
        if row["kind"] in ("chat", "preference"):
            report = report.add(check_sample(masker, row, samples, where))
    return report


def as_tokens(sample: dict[str, Any]) -> list[Tokens]:
    """A pipeline sample as `(input_ids, labels)` pairs: one, or chosen and rejected for a pair."""
    if "input_ids" in sample:
        return [(sample["input_ids"], sample["labels"])]
    return [(sample[f"{side}_input_ids"], sample[f"{side}_labels"]) for side in ("chosen", "rejected")]


def sample_rows(builder: Any, table: Any, n: int) -> list[tuple[dict[str, Any], list[Tokens], str]]:
    """The first `n` rows of a source table through `builder` (a `SampleBuilder`): row, samples, where."""
    from arctic_core.data.formats import normalize
    from arctic_core.data.samples import tokenize_row

    out = []
    for index in range(min(n, len(table))):
        where = f"source {builder.source!r} row {index}"
        row = normalize(table[index], builder.fmt, builder.mapping, where)
        samples = tokenize_row(row, builder.masker, builder.data, where)
        if row["kind"] == "preference":
            out.append((row, as_tokens(samples[0]), where))
        else:
            out.append((row, [t for s in samples for t in as_tokens(s)], where))
    return out


def warn_if_parity_fails(masker: ChatMasker, row: dict[str, Any], samples: list[Any], where: str) -> None:
    """Log a warning naming the row when its samples are not what serving renders (a run's sampled check)."""
    tokens = [t for s in samples for t in as_tokens(s)]
    try:
        found = check_sample(masker, row, tokens, where)
    except DataError:  # the row's own processing reports it
        return
    if found:
        log.warning("train/serve parity fails: %s", found[0].describe())
