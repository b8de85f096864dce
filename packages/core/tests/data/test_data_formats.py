"""Format detection and normalisation to canonical rows, role_mapping included."""

from __future__ import annotations

import pytest

from arctic_core.data.errors import DataError
from arctic_core.data.formats import RoleMapping, detect_format, normalize
from arctic_core.errors import RecipeError
from arctic_core.testing import (
    alpaca_rows,
    arithmetic_conversations,
    preference_rows,
    prompt_completion_rows,
    sharegpt_conversations,
    text_rows,
    ultrafeedback_rows,
)

NONE = RoleMapping()


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (arithmetic_conversations(2), "chat"),
        (sharegpt_conversations(2), "sharegpt"),
        (alpaca_rows(2), "alpaca"),
        (prompt_completion_rows(2), "prompt_completion"),
        (text_rows(2), "text"),
        (preference_rows(2), "preference"),
        (preference_rows(2, as_messages=True), "preference"),
        (ultrafeedback_rows(2), "preference"),
    ],
)
def test_detect_format(rows, expected) -> None:
    assert detect_format(list(rows[0]), NONE, "s") == expected


def test_unknown_columns_say_what_to_set() -> None:
    with pytest.raises(DataError, match=r"s: cannot tell the format.*'foo'.*role_mapping"):
        detect_format(["foo"], NONE, "s")


def test_sharegpt_roles_become_chat_roles() -> None:
    row = sharegpt_conversations(1, seed=3, system_prob=1.0)[0]
    messages = normalize(row, "sharegpt", NONE, "r")["messages"]
    assert [m["role"] for m in messages][:3] == ["system", "user", "assistant"]
    assert messages[1]["content"] == row["conversations"][1]["value"]


def test_alpaca_joins_instruction_and_input() -> None:
    row = {"instruction": "Compute.", "input": "1 + 2", "output": "3"}
    assert normalize(row, "alpaca", NONE, "r")["messages"] == [
        {"role": "user", "content": "Compute.\n\n1 + 2"},
        {"role": "assistant", "content": "3"},
    ]
    assert normalize({**row, "input": None}, "alpaca", NONE, "r")["messages"][0]["content"] == "Compute."


def test_prompt_completion_strings_stay_raw_and_lists_become_chat() -> None:
    assert (
        normalize({"prompt": "a", "completion": "b"}, "prompt_completion", NONE, "r")["kind"]
        == "prompt_completion"
    )
    row = {
        "prompt": [{"role": "user", "content": "a"}],
        "completion": [{"role": "assistant", "content": "b"}],
    }
    assert normalize(row, "prompt_completion", NONE, "r")["messages"][1] == {
        "role": "assistant",
        "content": "b",
    }


def test_preference_from_strings_and_from_full_conversations() -> None:
    plain = normalize(preference_rows(1)[0], "preference", NONE, "r")
    assert plain["prompt"][0]["role"] == "user" and plain["chosen"][0]["role"] == "assistant"
    full = ultrafeedback_rows(1)[0]
    split = normalize(full, "preference", NONE, "r")
    assert split["prompt"] == [full["chosen"][0]]
    assert split["chosen"] == full["chosen"][1:] and split["rejected"] == full["rejected"][1:]


def test_role_mapping_renames_columns_and_fields() -> None:
    mapping = RoleMapping.parse({"messages": "dialog", "role": "speaker", "content": "text"}, "m")
    row = {"dialog": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "hello"}]}
    assert detect_format(list(row), mapping, "s") == "chat"
    assert normalize(row, "chat", mapping, "r")["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_role_mapping_from_columns_and_paths() -> None:
    columns = RoleMapping.parse({"user": "question", "assistant": "answer"}, "m")
    row = {"question": "q", "answer": "a"}
    assert normalize(row, detect_format(list(row), columns, "s"), columns, "r")["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    paths = RoleMapping.parse({"user": "turns.who.me", "assistant": "turns.who.you"}, "m")
    row = {
        "turns": [{"who": "me", "value": "1"}, {"who": "noise", "value": "x"}, {"who": "you", "value": "2"}]
    }
    assert [m["content"] for m in normalize(row, "chat", paths, "r")["messages"]] == ["1", "2"]


def test_bad_role_mapping_key_names_its_path() -> None:
    with pytest.raises(RecipeError, match=r"data.sources\[0\].role_mapping.usr: unknown key"):
        RoleMapping.parse({"usr": "q"}, "data.sources[0].role_mapping")


def test_missing_field_names_source_and_row() -> None:
    with pytest.raises(DataError, match="source 'x' row 7: missing field 'output'"):
        normalize({"instruction": "i"}, "alpaca", NONE, "source 'x' row 7")
