"""Reward functions: the SQLite execution reward's five cases, user rewards that raise or hang, built-ins."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from pathlib import Path

import pytest

from arctic_core.errors import ArcticError
from arctic_rl.rewards import get_reward, load_rewards, normalized_match, numeric_match, reward, score
from arctic_rl.sql import extract_sql, sql_execution


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "shop.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        db.executemany(
            "INSERT INTO items VALUES (?, ?, ?)", [(1, "pen", 1.5), (2, "ink", 4.0), (3, "pad", 2.5)]
        )
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sql_execution_scores_correct_wrong_syntax_timeout_and_write(database):
    before = digest(database)
    gold = "SELECT name FROM items WHERE price > 2"
    slow = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"  # never ends
    )
    completions = [
        "```sql\nSELECT name FROM items WHERE price >= 2.5 ORDER BY id DESC\n```",  # same rows, other order
        "<answer>SELECT name FROM items</answer>",  # wrong rows
        "SELEC name FROM items",  # syntax error
        slow,  # timeout
        "DELETE FROM items; SELECT name FROM items WHERE price > 2",  # a write (and two statements)
        "UPDATE items SET price = 9",  # a write alone
    ]
    n = len(completions)
    started = time.monotonic()
    scores = sql_execution(
        prompts=["q"] * n,
        completions=completions,
        db_path=[str(database)] * n,
        gold_sql=[gold] * n,
        sql_timeout=0.5,
    )
    assert scores == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert time.monotonic() - started < 10  # the endless query was cut at its timeout
    assert digest(database) == before  # read-only: nothing was written
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (3,)
    failing_gold = sql_execution(
        prompts=["q"], completions=[gold], db_path=[str(database)], gold_sql=["SELEC"]
    )
    assert failing_gold == [None]  # a broken gold query leaves the sample out


def test_extract_sql_prefers_fenced_then_answer_tag():
    assert extract_sql("think\n```sql\nSELECT 1\n```\nmore ```SELECT 2```") == "SELECT 2"
    assert extract_sql("<think>x</think><answer> SELECT 3 </answer>") == "SELECT 3"
    assert extract_sql("  SELECT 4 ") == "SELECT 4"


def test_a_raising_reward_names_itself_and_the_sample():
    @reward("test_fails_on_b")
    def fails_on_b(prompts, completions, **_):
        return [1.0 if c != "b" else 1 / 0 for c in completions]

    with pytest.raises(ArcticError, match=r"reward 'test_fails_on_b' failed on sample 1 .*ZeroDivisionError"):
        score("test_fails_on_b", get_reward("test_fails_on_b"), ["p0", "p1"], ["a", "b"], {}, timeout=5)


def test_a_hanging_reward_is_cut_by_its_timeout():
    def hangs(prompts, completions, **_):
        time.sleep(3)
        return [0.0] * len(completions)

    started = time.monotonic()
    with pytest.raises(ArcticError, match=r"reward 'hangs' took more than reward_timeout = 0.2 s"):
        score("hangs", hangs, ["p"], ["c"], {}, timeout=0.2)
    assert time.monotonic() - started < 2


def test_none_is_left_out_and_bad_values_are_refused():
    def some_none(prompts, completions, **_):
        return [None, 0.5]

    values = score("some_none", some_none, ["p", "q"], ["a", "b"], {}, timeout=5)
    assert math.isnan(values[0]) and values[1] == 0.5

    def wrong_length(prompts, completions, **_):
        return [1.0]

    with pytest.raises(ArcticError, match="returned 1 values for 2 completions"):
        score("wrong_length", wrong_length, ["p", "q"], ["a", "b"], {}, timeout=5)


def test_builtins_and_lookup():
    assert normalized_match([0, 0], ["The Cat.", "dog"], answer=["the  cat", "cat"]) == [1.0, 0.0]
    assert numeric_match([0, 0, 0], ["so it is 1,234.0", "x=3", "none"], answer=["1234", "4", "1"]) == [
        1.0,
        0.0,
        0.0,
    ]
    names = [
        name for name, _ in load_rewards(["exact_match", "sql_execution", "arctic_rl.rewards:numeric_match"])
    ]
    assert names == ["exact_match", "sql_execution", "arctic_rl.rewards:numeric_match"]
    with pytest.raises(Exception, match="no reward function 'nope'"):
        get_reward("nope")
