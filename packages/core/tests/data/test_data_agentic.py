"""Agentic and reasoning conversations: exact trained spans and train/serve parity on real templates.

The templates in `templates/` are the published ones of three families (Llama 3.1 with JSON
tools, Qwen3 with tools and thinking, Hermes 2 Pro tool use); each file names its source. The
tokenizer is the shipped one with each family's special tokens added.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from arctic_core.data import masking, parity
from arctic_core.data.errors import DataError
from arctic_core.data.formats import RoleMapping, normalize

IGNORE = -100
TEMPLATES = Path(__file__).parent / "templates"
FAMILIES = {
    "llama3.1": "llama3.1_json_tools.jinja",
    "qwen3": "qwen3.jinja",
    "hermes": "hermes_2_pro_tools.jinja",
}

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "The expression."}},
            "required": ["expression"],
        },
    },
}


def call(call_id: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "calculator", "arguments": arguments}}


# Two tool calls (arguments as a JSON string, then as an object), their results, reasoning on
# every turn, and a final answer ("84") that the second tool result says first.
ROW = {
    "messages": [
        {"role": "system", "content": "Use the calculator."},
        {"role": "user", "content": "What is (12 + 30) * 2?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Add first.",
            "tool_calls": [call("c1", '{"expression": "12 + 30"}')],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {
            "role": "assistant",
            "content": None,
            "thinking": "Now double it.",
            "tool_calls": [call("c2", {"expression": "42 * 2"})],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "84"},
        {"role": "assistant", "content": "84", "reasoning_content": "The last result."},
    ],
    "tools": json.dumps([CALCULATOR]),
}

EXPECTED = {
    "llama3.1": [
        '{"name": "calculator", "parameters": {"expression": "12 + 30"}}<|eot_id|>',
        '{"name": "calculator", "parameters": {"expression": "42 * 2"}}<|eot_id|>',
        "84<|eot_id|>",
    ],
    "qwen3": [
        '<think>\nAdd first.\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 + 30"}}'
        "\n</tool_call><|im_end|>",
        '<think>\nNow double it.\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": '
        '"42 * 2"}}\n</tool_call><|im_end|>',
        "<think>\nThe last result.\n</think>\n\n84<|im_end|>",
    ],
    "hermes": [
        '<tool_call>\n{ "arguments": {"expression": "12 + 30"}, "name": "calculator"}\n</tool_call> <|im_end|>',
        '<tool_call>\n{ "arguments": {"expression": "42 * 2"}, "name": "calculator"}\n</tool_call> <|im_end|>',
        "84<|im_end|>",
    ],
}


@cache
def family_tokenizer(family: str) -> Any:
    from arctic_core.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    tokenizer.add_tokens(
        ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
    )
    tokenizer.chat_template = (TEMPLATES / FAMILIES[family]).read_text(encoding="utf-8")
    return tokenizer


def chat(row: dict[str, Any]) -> dict[str, Any]:
    return normalize(row, "chat", RoleMapping(), "source 'data.sources[0] a.jsonl' row 0")


def trained_runs(tokenizer: Any, samples: list[tuple[list[int], list[int]]]) -> list[str]:
    """The decoded runs of labelled tokens, sample after sample."""
    runs = []
    for ids, labels in samples:
        start = None
        for j, label in enumerate([*labels, IGNORE]):
            if label != IGNORE and start is None:
                start = j
            elif label == IGNORE and start is not None:
                runs.append(tokenizer.decode(ids[start:j]))
                start = None
    return runs


def samples_of(family: str, row: dict[str, Any], **settings: Any) -> tuple[Any, list, dict[str, Any]]:
    tokenizer = family_tokenizer(family)
    masker = masking.ChatMasker(tokenizer, **settings)
    normal = chat(row)
    return masker, masker.samples(normal["messages"], "row 0", tools=normal.get("tools")), normal


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tool_calls_results_and_reasoning_train_exactly_as_served(family: str) -> None:
    masker, samples, normal = samples_of(family, ROW)
    assert len(samples) == 1
    assert trained_runs(masker.tokenizer, samples) == EXPECTED[family]
    assert (
        samples[0][0]
        == masker.encode([masker.render(normal["messages"], generation_prompt=False, tools=normal["tools"])])[
            0
        ]
    )
    assert parity.check_row(masker, normal["messages"], samples, "row 0", tools=normal["tools"]) == []


def test_qwen3_dropped_reasoning_gets_its_own_sample_and_parity_catches_the_flat_rendering() -> None:
    row = {
        **ROW,
        "messages": [
            *ROW["messages"],
            {"role": "user", "content": "And halved?"},
            {"role": "assistant", "content": "42", "reasoning_content": "Half of 84."},
        ],
    }
    masker, samples, normal = samples_of("qwen3", row)
    # the whole conversation renders turns before the last query without their reasoning: only the
    # last turn trains there; the earlier three train in the rendering served before the answer "84"
    assert len(samples) == 2
    assert trained_runs(masker.tokenizer, samples) == [
        "<think>\nHalf of 84.\n</think>\n\n42<|im_end|>",
        *EXPECTED["qwen3"],
    ]
    assert parity.check_row(masker, normal["messages"], samples, "row 0", tools=normal["tools"]) == []
    # training on the whole rendering alone would teach turns without the reasoning they are served with
    flat = parity.check_row(masker, normal["messages"], samples[:1], "row 0", tools=normal["tools"])
    assert [(m.turn, m.expected, m.got) for m in flat] == [(t, "<think>", "<tool_call>") for t in (2, 4, 6)]
    assert len({m.position for m in flat}) == 1  # every later context already parts at turn 2's reasoning


def test_reasoning_masks_and_per_message_train_flags() -> None:
    masker, samples, _ = samples_of("qwen3", ROW, train_on_reasoning=False)
    assert trained_runs(masker.tokenizer, samples) == [
        run.split("</think>\n\n")[1] for run in EXPECTED["qwen3"]
    ]
    empty = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hi.", "reasoning_content": ""},
        ]
    }
    inline = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>\n\n</think>\n\nHi."},
        ]
    }
    for row in (empty, inline):
        masker, samples, _ = samples_of("qwen3", row)
        assert trained_runs(masker.tokenizer, samples) == ["<think>\n\n</think>\n\nHi.<|im_end|>"]
        masker, samples, _ = samples_of("qwen3", row, ignore_empty_think=True)
        assert trained_runs(masker.tokenizer, samples) == ["Hi.<|im_end|>"]
    for flag in ({"train": False}, {"weight": 0}):
        messages = [dict(m) for m in ROW["messages"]]
        messages[2].update(flag)
        masker, samples, _ = samples_of("hermes", {**ROW, "messages": messages})
        assert trained_runs(masker.tokenizer, samples) == EXPECTED["hermes"][1:]


def test_layouts_load_and_tool_results_are_linked_to_their_calls() -> None:
    normal = chat(ROW)
    assistant, tool = normal["messages"][2], normal["messages"][3]
    assert assistant["content"] is None and assistant["reasoning_content"] == "Add first."
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"expression": "12 + 30"}
    assert normal["messages"][4]["reasoning_content"] == "Now double it."  # `thinking` spelling
    assert tool == {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "calculator"}
    assert normal["tools"] == [CALCULATOR]
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "2 + 2?"},
            {
                "from": "function_call",
                "value": '{"name": "calculator", "arguments": {"expression": "2 + 2"}}',
            },
            {"from": "observation", "value": "4"},
            {"from": "gpt", "value": "4"},
        ],
        "tools": json.dumps([CALCULATOR["function"]]),
    }
    row = normalize(sharegpt, "sharegpt", RoleMapping(), "row 0")
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert row["messages"][1]["tool_calls"] == [call_of("2 + 2")]
    assert row["messages"][2]["name"] == "calculator"
    # datasets fills the fields a row lacks with nulls: they are dropped, not rendered
    nulls = {"role": "user", "content": "Hi", "tool_calls": None, "reasoning_content": None, "name": None}
    assert chat({"messages": [nulls]})["messages"] == [{"role": "user", "content": "Hi"}]


def call_of(expression: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            lambda m: m[2]["tool_calls"][0]["function"].update(arguments="{expression: 1"),
            r"the arguments of tool call 'calculator' is not valid JSON",
        ),
        (lambda m: m.pop(2), r"message 2 is a tool result with no preceding tool call"),
        (
            lambda m: m[3].update(tool_call_id="c9"),
            r"message 3 answers tool call 'c9', which the preceding assistant turn did not make",
        ),
        (lambda m: m[1].update(content=None), r"a user message has no content"),
        (
            lambda m: m[2].update(tool_calls=[{"function": {"arguments": "{}"}}]),
            r"a tool call needs a function name",
        ),
    ],
)
def test_malformed_tool_messages_name_the_source_and_row(change: Any, error: str) -> None:
    messages = json.loads(json.dumps(ROW["messages"]))
    change(messages)
    with pytest.raises(DataError, match=r"^source 'data.sources\[0\] a.jsonl' row 0: " + error):
        chat({**ROW, "messages": messages})
    with pytest.raises(DataError, match=r"row 0: the `tools` column is not valid JSON"):
        chat({**ROW, "tools": "[{"})


def test_preference_pairs_of_agentic_turns() -> None:
    masker = masking.ChatMasker(family_tokenizer("qwen3"))
    pair = {
        "prompt": ROW["messages"][:4],
        "chosen": ROW["messages"][4:],
        "rejected": [{"role": "assistant", "content": "I think it is 80.", "reasoning_content": "Guess."}],
        "tools": ROW["tools"],
    }
    row = normalize(pair, "preference", RoleMapping(), "row 0")
    assert row["prompt"][3]["name"] == "calculator" and row["chosen"][1]["name"] == "calculator"
    sides = [
        masker(row["prompt"] + row[s], "row 0", train_from=4, tools=row["tools"])
        for s in ("chosen", "rejected")
    ]
    assert trained_runs(masker.tokenizer, sides) == [
        *EXPECTED["qwen3"][1:],
        "<think>\nGuess.\n</think>\n\nI think it is 80.<|im_end|>",
    ]
    assert parity.check_rows(masker, [(row, sides, "row 0")]).identical == 1


def test_cli_data_inspect_marks_trained_spans_and_reports_parity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from arctic_core.cli import cli
    from arctic_core.testing import save_tokenizer_files

    weather = {
        "type": "function",
        "function": {"name": "weather", "description": "Weather.", "parameters": {}},
    }
    rows = [
        ROW | {"messages": [*[m for m in ROW["messages"] if "thinking" not in m][:4], ROW["messages"][-1]]},
        {
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "w",
                            "type": "function",
                            "function": {"name": "weather", "arguments": {"city": "Oslo"}},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "w", "content": "Snow."},
                {"role": "assistant", "content": "Snow."},
            ],
            "tools": json.dumps([weather]),
        },
    ]
    rows[0]["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"expression": "12 + 30"}
    data = tmp_path / "agentic.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "train.py").write_text(
        "from arctic_core.trainer import Trainer\n\nclass DataOnly(Trainer):\n    name = 'agentic-inspect-test'\n"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"type: agentic-inspect-test\ncode: {tmp_path / 'train.py'}\n"
        f"model:\n  name_or_path: {save_tokenizer_files(tmp_path / 'model')}\n"
        f"tokenizer:\n  chat_template: {TEMPLATES / 'qwen3.jinja'}\n"
        f"data:\n  sources: ['{data}']\n  cache_dir: {tmp_path / 'cache'}\n  max_length: 1024\n"
        f"logger:\n  output_dir: {tmp_path / 'run'}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["data", "inspect", str(recipe), "-n", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "row 0 sample 0" in out and "row 1 sample 0" in out
    assert (
        '[[<think>\nAdd first.\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 + 30"}}'
        in out
    )
    # no null is rendered (tables that fill missing fields with nulls have them dropped)
    assert (
        '{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>]]' in out
        and "null" not in out
    )
    assert (
        "<tool_response>\nSnow.\n</tool_response>" in out
        and "[[<think>\n\n</think>\n\nSnow.<|im_end|>]]" in out
    )
    # Qwen3 serves the reasoning-free tool call with an empty think block, but renders it without one
    # once the answer follows: that turn trains in a sample of its own
    assert "row 1 sample 1" in out and '[[<think>\n\n</think>\n\n<tool_call>\n{"name": "weather"' in out
    assert "parity: 2/2 samples identical to serving (100%)" in out
