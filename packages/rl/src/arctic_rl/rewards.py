"""Reward functions: plain Python, registered by name, called on a batch of completions.

A reward function takes the prompts, the completions (decoded text) and the dataset's other
columns as keyword lists (one value per completion), and returns one float per completion, or
None to leave that completion out of this function's reward:

    from arctic_rl import reward

    @reward("has_answer")
    def has_answer(prompts, completions, answer, **columns):
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

Define them in the recipe's `code:` file (imported before the run starts) or in an installed
module, and list them in `reward_funcs`. Built in: `exact_match`, `normalized_match`,
`numeric_match`, `answer_format` and `sql_execution` (arctic_rl.sql). A function that raises
stops the run with an error naming the function and the first sample it fails on; one that takes
longer than `reward_timeout` seconds stops it too.
"""

from __future__ import annotations

import importlib
import math
import re
import string
import threading
from collections.abc import Callable, Sequence
from typing import Any

from arctic_core.errors import ArcticError, RecipeError

RewardFunc = Callable[..., Sequence[float | None]]
REWARDS: dict[str, RewardFunc] = {}


def reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Register a reward function under `name` (refused if the name is taken by another function)."""

    def register(func: RewardFunc) -> RewardFunc:
        known = REWARDS.get(name)
        if known is not None and known is not func and known.__qualname__ != func.__qualname__:
            raise ValueError(
                f"reward {name!r} is already registered ({known.__module__}.{known.__qualname__})"
            )
        REWARDS[name] = func
        return func

    return register


def get_reward(name: str) -> RewardFunc:
    """The registered function `name`, or `module:function` / `module.function` of an installed module."""
    if name in REWARDS:
        return REWARDS[name]
    module_name, _, attribute = name.replace(":", ".").rpartition(".")
    if module_name:
        try:
            return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            pass
    known = ", ".join(sorted(REWARDS)) or "none"
    raise RecipeError(
        f"no reward function {name!r} (registered: {known}; define it with @arctic_rl.reward in the recipe's "
        "code file, or name module:function)",
        path="reward_funcs",
    )


def score(
    name: str,
    func: RewardFunc,
    prompts: list[Any],
    completions: list[str],
    columns: dict[str, list[Any]],
    *,
    timeout: float,
) -> list[float]:
    """One function's rewards (None becomes NaN), checked; errors name the function and the sample.

    The function runs in a daemon thread: past `timeout` seconds the run stops with an error (a
    thread cannot be killed; it is left behind and never blocks the process's exit).
    """
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["values"] = func(prompts=prompts, completions=completions, **columns)
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=call, name=f"reward {name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ArcticError(
            f"reward {name!r} took more than reward_timeout = {timeout} s on a batch of "
            f"{len(completions)} completions; stopping"
        )
    if "error" in outcome:
        raise _failure(name, func, prompts, completions, columns, outcome["error"]) from outcome["error"]
    values = outcome["values"]
    values = list(values)
    if len(values) != len(completions):
        raise ArcticError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(math.nan)
            continue
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise ArcticError(
                f"reward {name!r} returned {value!r} for sample {i} ({_describe(prompts[i])}); "
                "expected a float or None"
            ) from None
    return out


def _failure(
    name: str,
    func: RewardFunc,
    prompts: list[Any],
    completions: list[str],
    columns: dict[str, list[Any]],
    exc: Exception,
) -> ArcticError:
    """The error for a raising reward: called sample by sample to name the first one it fails on."""
    for i in range(len(completions)):
        one = {key: [values[i]] for key, values in columns.items()}
        try:
            func(prompts=[prompts[i]], completions=[completions[i]], **one)
        except Exception as single:
            return ArcticError(
                f"reward {name!r} failed on sample {i} (prompt {_describe(prompts[i])}, completion "
                f"{completions[i][:80]!r}): {type(single).__name__}: {single}"
            )
    return ArcticError(
        f"reward {name!r} failed on a batch of {len(completions)}: {type(exc).__name__}: {exc}"
    )


def _describe(prompt: Any) -> str:
    text = prompt[-1].get("content", "") if isinstance(prompt, list) and prompt else str(prompt)
    return repr(str(text)[:80])


# --- built-ins ------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


@reward("exact_match")
def exact_match(prompts: list[Any], completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1 when the completion, stripped, equals the `answer` column, stripped; else 0."""
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer)]


@reward("normalized_match")
def normalized_match(prompts: list[Any], completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1 when the completion equals `answer` after `normalize` (case, punctuation, spaces); else 0."""
    return [float(normalize(c) == normalize(str(a))) for c, a in zip(completions, answer)]


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text` (commas as thousands separators), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


@reward("numeric_match")
def numeric_match(prompts: list[Any], completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1 when the completion's last number equals `answer` (within 1e-6 relative); else 0."""
    out = []
    for c, a in zip(completions, answer):
        got, want = last_number(c), last_number(str(a))
        out.append(float(got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6)))
    return out


ANSWER_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


@reward("answer_format")
def answer_format(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """1 when the completion is `<think>...</think> <answer>...</answer>` (DeepSeek-R1's format); else 0."""
    return [float(bool(ANSWER_FORMAT.match(c))) for c in completions]


def load_rewards(names: Sequence[str]) -> list[tuple[str, RewardFunc]]:
    """(name, function) for each of `reward_funcs`; importing the built-in SQL reward first."""
    import arctic_rl.sql  # noqa: F401 - registers sql_execution

    return [(name, get_reward(name)) for name in names]


def score_rows(
    rewards: Sequence[tuple[str, RewardFunc]],
    rows: list[dict[str, Any]],
    texts: list[str],
    repeats: int,
    config: Any,
) -> Any:
    """Rewards `[len(texts), functions]` (a float64 tensor, NaN for None) of completions of `rows`, each
    row completed `repeats` times in a row; `config` gives `reward_timeout` and `sql_timeout`."""
    import torch

    from arctic_rl.data import PROMPT, ROW
    from arctic_rl.sql import sql_execution

    prompts = [row[PROMPT] for row in rows for _ in range(repeats)]
    names = sorted({key for row in rows for key in row} - {PROMPT, ROW})
    columns = {key: [row.get(key) for row in rows for _ in range(repeats)] for key in names}
    values = []
    for name, func in rewards:
        extra = {"sql_timeout": config.sql_timeout} if func is sql_execution else {}
        values.append(score(name, func, prompts, texts, {**columns, **extra}, timeout=config.reward_timeout))
    return torch.tensor(values, dtype=torch.float64).T
