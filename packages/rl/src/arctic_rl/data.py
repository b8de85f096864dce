"""GRPO's data: prompt rows (the prompt as chat messages, and every other column for the rewards).

A row gives its prompt as `prompt` (a string, or a list of chat messages) or as `messages` whose
last message is the assistant's reference answer: then the earlier messages are the prompt and
the answer becomes the `answer` column (so SFT data is GRPO data). A relative `db_path` is taken
relative to the data file's folder. Rows go to the trainer whole: `collate` keeps them as a list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arctic_core.config import SourceConfig
from arctic_core.data.errors import DataError

PROMPT = "prompt"
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


def load_prompts(sources: list[SourceConfig], role: str, scratch: Path) -> list[dict[str, Any]]:
    """Every row of `sources` as a prompt row, in order."""
    from arctic_core.data.sources import is_local, load_source, sample

    rows: list[dict[str, Any]] = []
    for source in sources:
        table = sample(load_source(source, role, scratch), source)
        folder = Path(source.name_or_path).expanduser()
        folder = folder.parent if folder.is_file() else folder
        for number, row in enumerate(table):
            item = prompt_row(dict(row), f"{source.name_or_path} row {number}")
            db = item.get("db_path")
            if isinstance(db, str) and is_local(source) and not Path(db).is_absolute():
                item["db_path"] = str((folder / db).resolve())
            rows.append(item)
    return rows


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A micro-batch of prompt rows, kept whole (the rollout tokenizes them)."""
    return {"rows": list(rows)}
