"""Seeded toy datasets in every layout Arctic reads, and writers for jsonl, json, parquet and csv.

The task is small-number arithmetic ("What is 12 + 7?" -> "12 + 7 = 19"): deterministic, so a
tiny model can visibly learn it. Generators return lists of row dicts and depend only on their
arguments; `write_rows` writes rows in the format named by the file suffix, `write_dataset` does
both, and `write_hub_layout` lays out a local folder that `datasets.load_dataset(folder, split=...)`
reads like a hub dataset repository (`data/<split>-00000-of-00001.parquet` plus a README card).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

Row = dict[str, Any]
Message = dict[str, str]

SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer with the full equation.", "Be brief.")
FORMATS = ("jsonl", "json", "parquet", "csv")
_SPLIT_NAME = re.compile(r"^\w+$")


class Problem(NamedTuple):
    """One arithmetic problem `a op b` with its answer."""

    a: int
    op: str
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    def equation(self, answer: int | None = None) -> str:
        """`"12 + 7 = 19"`, or with a given (possibly wrong) answer."""
        return f"{self.expression} = {self.answer if answer is None else answer}"


def _problem(rng: random.Random, max_operand: int, ops: str) -> Problem:
    a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(ops)
    return Problem(max(a, b), op, min(a, b)) if op == "-" else Problem(a, op, b)


def _problems(rng: random.Random, n: int, max_operand: int) -> list[Problem]:
    return [_problem(rng, max_operand, "+-") for _ in range(n)]


def _wrong_answer(rng: random.Random, problem: Problem) -> int:
    candidates = [problem.answer + d for d in (-3, -2, -1, 1, 2, 3) if problem.answer + d >= 0]
    return rng.choice(candidates)


def arithmetic_problems(n: int, seed: int = 0, max_operand: int = 20, ops: str = "+-") -> list[Problem]:
    """`n` problems with operands in [0, max_operand]; subtraction never goes below zero."""
    if not ops or set(ops) - set("+-"):
        raise ValueError(f"ops must be made of '+' and '-', got {ops!r}")
    rng = random.Random(seed)
    return [_problem(rng, max_operand, ops) for _ in range(n)]


def arithmetic_conversations(
    n: int, seed: int = 0, max_operand: int = 20, max_turns: int = 3, system_prob: float = 0.5
) -> list[Row]:
    """Chat rows `{"messages": [...]}`: an optional system turn, then 1..max_turns user/assistant pairs."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages: list[Message] = []
        if rng.random() < system_prob:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(rng.randint(1, max_turns)):
            problem = _problem(rng, max_operand, "+-")
            messages.append({"role": "user", "content": problem.question})
            messages.append({"role": "assistant", "content": problem.equation()})
        rows.append({"messages": messages})
    return rows


def to_sharegpt(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Convert chat messages to ShareGPT turns (`from`: system/human/gpt, `value`)."""
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in messages]


def sharegpt_conversations(n: int, seed: int = 0, **kwargs: Any) -> list[Row]:
    """ShareGPT rows `{"conversations": [{"from", "value"}, ...]}`; kwargs as `arithmetic_conversations`."""
    return [
        {"conversations": to_sharegpt(r["messages"])} for r in arithmetic_conversations(n, seed, **kwargs)
    ]


def alpaca_rows(n: int, seed: int = 0, max_operand: int = 20) -> list[Row]:
    """Alpaca rows `{"instruction", "input", "output"}`; about half have an empty `input`."""
    rng = random.Random(seed)
    rows = []
    for problem in _problems(rng, n, max_operand):
        if rng.random() < 0.5:
            rows.append({"instruction": problem.question, "input": "", "output": problem.equation()})
        else:
            row = {"instruction": "Compute the expression.", "input": problem.expression}
            rows.append({**row, "output": problem.equation()})
    return rows


def prompt_completion_rows(n: int, seed: int = 0, max_operand: int = 20) -> list[Row]:
    """Rows `{"prompt": "What is 12 + 7?\\n", "completion": "12 + 7 = 19"}`."""
    problems = arithmetic_problems(n, seed, max_operand)
    return [{"prompt": p.question + "\n", "completion": p.equation()} for p in problems]


def text_rows(n: int, seed: int = 0, max_operand: int = 20, per_row: int = 4) -> list[Row]:
    """Plain-text rows `{"text"}`, each `per_row` equations, one per line."""
    problems = arithmetic_problems(n * per_row, seed, max_operand)
    chunks = [problems[i : i + per_row] for i in range(0, len(problems), per_row)]
    return [{"text": "\n".join(p.equation() for p in chunk)} for chunk in chunks]


def preference_rows(n: int, seed: int = 0, max_operand: int = 20, as_messages: bool = False) -> list[Row]:
    """Pairs `{"prompt", "chosen", "rejected"}`; `rejected` has a wrong answer.

    With `as_messages`, `prompt` is `[user message]` and `chosen`/`rejected` are `[assistant message]`
    (TRL's conversational layout); otherwise all three are strings.
    """
    rng = random.Random(seed)
    rows: list[Row] = []
    for problem in _problems(rng, n, max_operand):
        chosen, rejected = problem.equation(), problem.equation(_wrong_answer(rng, problem))
        if as_messages:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": problem.question}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": problem.question, "chosen": chosen, "rejected": rejected})
    return rows


def ultrafeedback_rows(n: int, seed: int = 0, max_operand: int = 20) -> list[Row]:
    """Rows shaped like HuggingFaceH4/ultrafeedback_binarized.

    `prompt` (str), `prompt_id`, `chosen`/`rejected`/`messages` as full conversations including the
    user turn (`messages` equals `chosen`), and float `score_chosen` > `score_rejected`.
    """
    rng = random.Random(seed)
    rows = []
    for problem in _problems(rng, n, max_operand):
        user = {"role": "user", "content": problem.question}
        chosen = [user, {"role": "assistant", "content": problem.equation()}]
        wrong = problem.equation(_wrong_answer(rng, problem))
        rows.append(
            {
                "prompt": problem.question,
                "prompt_id": hashlib.sha256(problem.question.encode()).hexdigest(),
                "chosen": chosen,
                "rejected": [user, {"role": "assistant", "content": wrong}],
                "messages": chosen,
                "score_chosen": rng.choice([8.0, 9.0, 10.0]),
                "score_rejected": rng.choice([1.0, 2.5, 4.0]),
            }
        )
    return rows


GENERATORS: dict[str, Callable[..., list[Row]]] = {
    "chat": arithmetic_conversations,
    "sharegpt": sharegpt_conversations,
    "alpaca": alpaca_rows,
    "prompt_completion": prompt_completion_rows,
    "text": text_rows,
    "preference": preference_rows,
    "ultrafeedback": ultrafeedback_rows,
}
"""The generators by layout name, for `write_dataset`."""


def _columns(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _write_jsonl(path: Path, rows: Sequence[Row]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _write_json(path: Path, rows: Sequence[Row]) -> None:
    path.write_text(json.dumps(list(rows), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _write_parquet(path: Path, rows: Sequence[Row]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({col: [row.get(col) for row in rows] for col in _columns(rows)})
    pq.write_table(table, path)


def _write_csv(path: Path, rows: Sequence[Row]) -> None:
    columns = _columns(rows)
    for i, row in enumerate(rows):
        for col, value in row.items():
            if isinstance(value, (dict, list, tuple)):
                raise ValueError(
                    f"rows[{i}].{col} is nested; CSV holds only flat rows, use jsonl, json or parquet"
                )
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


_WRITERS: dict[str, Callable[[Path, Sequence[Row]], None]] = {
    "jsonl": _write_jsonl,
    "json": _write_json,
    "parquet": _write_parquet,
    "csv": _write_csv,
}


def write_rows(path: str | Path, rows: Sequence[Row]) -> Path:
    """Write `rows` to `path` in the format its suffix names (.jsonl, .json, .parquet, .csv).

    `.json` holds one JSON array. CSV cannot hold nested rows (a ValueError says which field), and
    like any CSV it reads back empty strings as None unless loaded with `keep_default_na=False`.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt not in _WRITERS:
        raise ValueError(f"cannot tell the format of {path}: the suffix must be one of {FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _WRITERS[fmt](path, rows)
    return path


def write_dataset(path: str | Path, kind: str = "chat", n: int = 32, seed: int = 0, **kwargs: Any) -> Path:
    """Generate `n` rows of layout `kind` (a key of `GENERATORS`) and write them to `path`."""
    if kind not in GENERATORS:
        raise ValueError(f"kind must be one of {sorted(GENERATORS)}, got {kind!r}")
    return write_rows(path, GENERATORS[kind](n, seed, **kwargs))


def _dataset_card(name: str, splits: Sequence[str]) -> str:
    files = "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in splits)
    header = f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}---\n"
    return f"{header}\n# {name}\n\nSynthetic test data written by `arctic_core.testing.write_hub_layout`.\n"


def _check_splits(splits: dict[str, Sequence[Row]]) -> None:
    if not splits:
        raise ValueError("splits must name at least one split")
    bad = [s for s in splits if not _SPLIT_NAME.match(s)]
    if bad:
        raise ValueError(f"split names must be letters, digits and underscores, got {bad}")
    columns = {split: sorted(_columns(rows)) for split, rows in splits.items()}
    if len({tuple(c) for c in columns.values()}) > 1:
        raise ValueError(f"all splits must have the same columns, got {columns}")


def write_hub_layout(root: str | Path, name: str, splits: dict[str, Sequence[Row]]) -> Path:
    """Lay out `root/name` like a hub dataset repo: one parquet shard per split and a README card.

    `name` may contain a slash ("org/data"). As on the hub, all splits share one set of columns
    (write another repo for another layout). Returns the folder, which
    `datasets.load_dataset(folder, split="train_sft")` loads by split name, offline.
    """
    _check_splits(splits)
    folder = Path(root) / name
    for split, rows in splits.items():
        write_rows(folder / "data" / f"{split}-00000-of-00001.parquet", rows)
    (folder / "README.md").write_text(_dataset_card(name, list(splits)), encoding="utf-8")
    return folder
