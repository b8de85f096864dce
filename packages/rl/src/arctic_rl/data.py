"""GRPO's data: prompt rows (the prompt as chat messages, and every other column for the rewards).

A row gives its prompt as `prompt` (a string, or a list of chat messages) or as `messages` whose
last message is the assistant's reference answer: then the earlier messages are the prompt and
the answer becomes the `answer` column (so SFT data is GRPO data). A relative `db_path` is taken
relative to the data file's folder. Rows go to the trainer whole: `collate` keeps them as a list.

Training prompts go through core's data path, `PromptDataFactory` (a `DataFactory`): cached,
sampled, split by `train_eval_split` like every method's data, and limited by `arctic verify
--samples`. Each row is stored as one JSON string (`PROMPT_ROW`), so rows whose columns differ in
type (a reward's metadata) keep them as they are; `collate` decodes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arctic_core.config import SourceConfig
from arctic_core.data import DataFactory
from arctic_core.data.errors import DataError

PROMPT = "prompt"
PROMPT_ROW = "prompt_row"
"""The stored column: the whole prompt row as a JSON string."""
ROW = "__row__"
"""The row's index in the training data (added by the trainer; seeds its completions, never a reward column)."""


def prompt_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """The row with `prompt` as chat messages (and `answer` from a trailing assistant message)."""
    row = dict(row)
    if PROMPT in row and row[PROMPT] is not None:
        prompt = row[PROMPT]
        row[PROMPT] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    elif isinstance(row.get("messages"), list) and row["messages"]:
        *prompt, last = row.pop("messages")
        if last.get("role") == "assistant":
            row.setdefault("answer", last.get("content"))
        else:
            prompt.append(last)
        if not prompt:
            raise DataError(f"{where}: `messages` holds no prompt before the assistant's answer")
        row[PROMPT] = prompt
    else:
        raise DataError(f"{where}: expected a `prompt` (text or chat messages) or `messages` column")
    return row


def source_rows(source: SourceConfig, table: Any, where: str) -> list[dict[str, Any]]:
    """The rows of one loaded source as prompt rows (a relative `db_path` made absolute)."""
    from arctic_core.data.sources import is_local

    folder = Path(source.name_or_path).expanduser()
    folder = folder.parent if folder.is_file() else folder
    rows = []
    for number, row in enumerate(table):
        item = prompt_row(dict(row), f"{where} row {number}")
        db = item.get("db_path")
        if isinstance(db, str) and is_local(source) and not Path(db).is_absolute():
            item["db_path"] = str((folder / db).resolve())
        rows.append(item)
    return rows


def load_prompts(sources: list[SourceConfig], role: str, scratch: Path) -> list[dict[str, Any]]:
    """Every row of `sources` as a prompt row, in order (`arctic rl eval`'s prompts, uncached)."""
    from arctic_core.data.sources import load_source, sample

    rows: list[dict[str, Any]] = []
    for source in sources:
        rows += source_rows(source, sample(load_source(source, role, scratch), source), source.name_or_path)
    return rows


def decode(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row (`PROMPT_ROW` JSON, plus `ROW` when the trainer numbered it) as its prompt row."""
    if PROMPT_ROW not in row:
        return row
    decoded = json.loads(row[PROMPT_ROW])
    if ROW in row:
        decoded[ROW] = row[ROW]
    return decoded


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A micro-batch of prompt rows, kept whole (the rollout tokenizes them)."""
    return {"rows": [decode(row) for row in rows]}


class PromptDataFactory(DataFactory):
    """Core's data path for GRPO prompts: rows are checked, stored whole and never packed or tokenized.

    The summary counts each prompt's tokens (chat template with the generation prompt); none is
    trainable (the completions are, once sampled).
    """

    def process_source(self, source: SourceConfig, role: str, name: str, scratch: Path) -> tuple[Any, dict]:
        """Load and sample one source; each row becomes one stored prompt row."""
        import datasets

        from arctic_core.data import sources, summary
        from arctic_core.data.samples import KEPT, OK

        try:
            table = sources.sample(
                sources.load_source(source, role, scratch, strict=self.data.strict), source
            )
        except DataError as exc:
            raise DataError(f"{name}: {exc}") from None
        if len(table) == 0:
            raise DataError(f"{name}: no rows (check the file, split and slice)")
        rows = source_rows(source, table, name)
        lengths = [self.prompt_length(row[PROMPT]) for row in rows]
        stored = datasets.Dataset.from_dict(
            {
                PROMPT_ROW: [json.dumps(row) for row in rows],
                "status": [OK] * len(rows),
                "length": lengths,
                "num_trainable": [0] * len(rows),
            }
        )
        stats = summary.source_stats(name, "prompts", len(table), stored, KEPT)
        return stored.remove_columns(["status"]), stats

    def prompt_length(self, prompt: list[dict[str, Any]]) -> int:
        """The prompt's tokens as the rollout will feed them (chat template, generation prompt)."""
        encoded = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        return len(
            encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        )  # newer transformers: a dict

    def finish_split(self, table: Any, stats: list[dict]) -> tuple[Any, dict[str, Any]]:
        """Prompts are never packed: only the split's totals."""
        from arctic_core.data import summary

        totals = {"samples": len(table), "tokens": sum(table["length"]), "trainable": 0}
        table = table.remove_columns(["length", "num_trainable"])
        return table, summary.split_stats(stats, totals, len(table), None)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:  # type: ignore[override]
        """A micro-batch of prompt rows (`collate`)."""
        return collate(rows)
