"""Messages as chat templates expect them: tool calls, tool results, reasoning and tool schemas.

One message becomes a dict with `role` and `content` (a string, or None for an assistant turn
that only calls tools) and, where the source has them:

- `tool_calls`: OpenAI layout, `[{"id", "type": "function", "function": {"name", "arguments"}}]`,
  with `arguments` always an object (a JSON string in the source is parsed; templates print it
  with `tojson`);
- `tool_call_id` and `name` on `tool` messages (the name is filled in from the call it answers);
- `reasoning_content` (also read from `thinking` or `reasoning`);
- `train`: false when the source's `train` is false or its `weight` is 0 (Axolotl's fields).

ShareGPT's `function_call` turns (a JSON call, or a list of them) become assistant tool calls
and its `observation` turns tool results. A conversation's `tools` (a list of JSON schemas, or
a JSON string holding one) is passed to the template as `apply_chat_template(tools=...)`.
Tables loaded through `datasets` fill fields a row lacks with nulls; those nulls are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from arctic_core.data.errors import DataError

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "tool": "tool",
    "ipython": "tool",
    "observation": "tool",
    "function_call": "assistant",
}
Message = dict[str, Any]


def drop_nulls(value: Any) -> Any:
    """`value` with every null-valued key of every nested object removed."""
    if isinstance(value, Mapping):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _json(text: str, what: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: {what} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r:.120}"
        ) from None


def parse_tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """A conversation's `tools`: None, a list of schemas, or a JSON string holding that list."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = _json(value, "the `tools` column", where)
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise DataError(f"{where}: `tools` must be a list of JSON schema objects, got {value!r:.120}")
    return [drop_nulls(dict(t)) for t in value]


def tool_call(item: Any, where: str) -> dict[str, Any]:
    """One tool call in OpenAI layout, from OpenAI's layout or a bare `{"name", "arguments"}`."""
    if isinstance(item, str):
        item = _json(item, "a tool call", where)
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: a tool call must be an object, got {item!r:.120}")
    inner = item.get("function")
    function: Mapping[str, Any] = inner if isinstance(inner, Mapping) else item
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: a tool call needs a function name, got {dict(item)!r:.120}")
    arguments = function.get("arguments", function.get("parameters"))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        arguments = (
            _json(arguments, f"the arguments of tool call {name!r}", where) if arguments.strip() else {}
        )
    if not isinstance(arguments, Mapping):
        raise DataError(
            f"{where}: the arguments of tool call {name!r} must be a JSON object, got {arguments!r:.80}"
        )
    call: dict[str, Any] = {
        "type": "function",
        "function": {"name": name, "arguments": drop_nulls(dict(arguments))},
    }
    if item.get("id") is not None:
        call = {"id": str(item["id"]), **call}
    return call


def _tool_calls(raw: Mapping[str, Any], role: str, content: Any, where: str) -> list[dict[str, Any]] | None:
    if role == "function_call":  # ShareGPT: the turn's value is the call (or a list of calls)
        calls = _json(content, "a function_call turn", where) if isinstance(content, str) else content
        return [tool_call(c, where) for c in (calls if isinstance(calls, list) else [calls])]
    calls = raw.get("tool_calls")
    if calls is None and isinstance(raw.get("function_call"), Mapping):  # OpenAI's legacy single call
        calls = [raw["function_call"]]
    if calls is None:
        return None
    if isinstance(calls, str):
        calls = _json(calls, "`tool_calls`", where)
    if not isinstance(calls, Sequence):
        raise DataError(f"{where}: `tool_calls` must be a list, got {calls!r:.80}")
    return [tool_call(c, where) for c in calls] or None


def _trains(raw: Mapping[str, Any], where: str) -> bool:
    train, weight = raw.get("train"), raw.get("weight")
    if train is not None and not isinstance(train, bool):
        raise DataError(f"{where}: a message's `train` must be true or false, got {train!r}")
    if weight is not None and weight not in (0, 1):
        raise DataError(f"{where}: a message's `weight` must be 0 or 1, got {weight!r}")
    return train is not False and weight != 0


def message(raw: Mapping[str, Any], role: str, content: Any, where: str) -> Message:
    """One message in the layout templates expect; `role`/`content` were read with the source's field names."""
    canonical = ROLE_ALIASES.get(role.lower(), role)
    calls = _tool_calls(raw, role.lower(), content, where)
    if role.lower() == "function_call":
        content = None
    if content is not None and not isinstance(content, str):
        raise DataError(f"{where}: a message's content must be a string or null, got {content!r:.120}")
    if content is None and not (canonical == "assistant" and calls):
        raise DataError(
            f"{where}: a {canonical} message has no content (only an assistant calling tools may)"
        )
    out: Message = {"role": canonical, "content": content}
    if calls:
        out["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if canonical == "tool" and raw.get(key) is not None:
            out[key] = str(raw[key])
    reasoning = next((raw[k] for k in REASONING_FIELDS if raw.get(k) is not None), None)
    if reasoning is not None:
        if canonical != "assistant" or not isinstance(reasoning, str):
            raise DataError(
                f"{where}: reasoning belongs to assistant messages as a string, got {reasoning!r:.80}"
            )
        out["reasoning_content"] = reasoning
    if not _trains(raw, where):
        if canonical != "assistant":
            raise DataError(
                f"{where}: `train`/`weight` apply to assistant messages only (this is {canonical})"
            )
        out["train"] = False
    return out


def link_tool_results(messages: list[Message], where: str) -> list[Message]:
    """Check that every tool result answers an earlier call of the same assistant turn; fill in its name."""
    pending: list[dict[str, Any]] = []
    answered = 0
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            pending, answered = list(m.get("tool_calls") or []), 0
        elif m["role"] == "tool":
            if not pending:
                raise DataError(f"{where}: message {i} is a tool result with no preceding tool call")
            by_id: dict[str, dict[str, Any]] = {c["id"]: c for c in pending if c.get("id") is not None}
            call = by_id.get(m.get("tool_call_id") or "") or pending[min(answered, len(pending) - 1)]
            if m.get("tool_call_id") is not None and by_id and m["tool_call_id"] not in by_id:
                raise DataError(
                    f"{where}: message {i} answers tool call {m['tool_call_id']!r}, which the preceding "
                    f"assistant turn did not make (its calls: {sorted(by_id)})"
                )
            m.setdefault("name", call["function"]["name"])
            answered += 1
        else:
            pending, answered = [], 0
    return messages
