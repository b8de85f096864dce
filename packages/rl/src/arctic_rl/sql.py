"""SQL execution accuracy on SQLite (Arctic-Text2SQL-R1's reward).

The predicted query (from a ```sql block, an <answer> tag, or the whole completion) and the gold
query run against the sample's database file, opened read-only (`mode=ro` and
`PRAGMA query_only`), each cut after `sql_timeout` seconds by SQLite's progress handler. The
reward is 1 when both result sets are equal as multisets of rows (row order ignored), else 0: a
syntax error, a timeout, an attempt to write and a wrong result all score 0. A gold query that
fails is an error in the data: that sample's reward is None (left out) and a warning is logged.
"""

from __future__ import annotations

import collections
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from arctic_rl.rewards import reward

log = logging.getLogger("arctic_rl")
DEFAULT_TIMEOUT = 5.0
_FENCED = re.compile(r"```(?:sql|sqlite)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


class QueryFailed(Exception):
    """The query did not run to completion (syntax error, timeout, write attempt, ...)."""


def extract_sql(completion: str) -> str:
    """The query in a completion: the last ```sql block, else the last <answer>, else the whole text."""
    for pattern in (_FENCED, _ANSWER):
        found = pattern.findall(completion)
        if found:
            return str(found[-1]).strip()
    return completion.strip()


def run_query(
    database: str | Path, query: str, timeout: float = DEFAULT_TIMEOUT
) -> collections.Counter[tuple[Any, ...]]:
    """The rows `query` returns on `database` (read-only) as a multiset; QueryFailed if it cannot finish."""
    path = Path(database).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"database {path} does not exist")
    connection = sqlite3.connect(
        f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout, check_same_thread=False
    )
    deadline = time.monotonic() + timeout
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        connection.execute("PRAGMA query_only = ON")
        rows = connection.execute(query).fetchall()
    except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
        raise QueryFailed(str(exc)) from None
    finally:
        connection.close()
    return collections.Counter(tuple(row) for row in rows)


def execution_match(
    database: str | Path, predicted: str, gold: str, timeout: float = DEFAULT_TIMEOUT
) -> float | None:
    """1.0 when `predicted` returns the same rows as `gold`, 0.0 when not or when it fails; None when gold fails."""
    try:
        want = run_query(database, gold, timeout)
    except QueryFailed as exc:
        log.warning("gold query fails on %s (%s): %s", database, exc, gold[:200])
        return None
    try:
        got = run_query(database, predicted, timeout)
    except QueryFailed:
        return 0.0
    return float(got == want)


@reward("sql_execution")
def sql_execution(
    prompts: list[Any],
    completions: list[str],
    db_path: list[str],
    gold_sql: list[str],
    sql_timeout: float | list[float] = DEFAULT_TIMEOUT,
    **_: Any,
) -> list[float | None]:
    """Execution accuracy: columns `db_path` (the SQLite file) and `gold_sql`; see the module docstring."""
    timeouts = sql_timeout if isinstance(sql_timeout, list) else [sql_timeout] * len(completions)
    return [
        execution_match(db, extract_sql(c), gold, t)
        for c, db, gold, t in zip(completions, db_path, gold_sql, timeouts)
    ]
