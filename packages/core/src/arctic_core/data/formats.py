"""Row formats: detection from a source's columns and normalisation to one canonical row.

Every row becomes one of four shapes (the `kind` key says which):

- `chat`: `messages`, a list of `{"role", "content"}` with roles system/user/assistant/tool
  (or any other role the template knows), with tool calls, tool results and reasoning as
  `arctic_core.data.messages` describes, and the conversation's `tools` when it has them;
  from chat, sharegpt, alpaca, message-list prompt/completion rows, or rows whose roles come
  from columns (`role_mapping`).
- `prompt_completion`: two strings, tokenized without a chat template.
- `text`: one string, for causal language modelling.
- `preference`: `prompt` messages plus `chosen` and `rejected` continuations (messages, tool
  calls included), and `tools` when the row has them.

`role_mapping` (per source) maps Arctic's names to the source's:

- column names: `messages`, `conversations`, `instruction`, `input`, `output`, `prompt`,
  `completion`, `text`, `chosen`, `rejected`, `tools` -> the source's column, e.g.
  `{messages = "dialog"}`;
- message fields: `role`, `content` -> the keys inside each message, e.g.
  `{role = "speaker", content = "utterance"}` (default: role|from and content|value|text|message);
- roles: `system`, `user`, `assistant` -> either a column holding that single turn
  (`{user = "question", assistant = "answer"}`) or an `array.field.value` path selecting the
  turns of a list column (`{user = "dialog.speaker.human", assistant = "dialog.speaker.bot"}`),
  kept in their order. Role mappings make the format `chat`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from arctic_core.data.errors import DataError
from arctic_core.data.messages import link_tool_results, message, parse_tools
from arctic_core.errors import RecipeError

FORMATS = ("chat", "sharegpt", "alpaca", "prompt_completion", "text", "preference")
COLUMN_KEYS = (
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "text",
    "chosen",
    "rejected",
    "tools",
)
FIELD_KEYS = ("role", "content")
ROLE_KEYS = ("system", "user", "assistant")
ROLE_FIELDS = ("role", "from")
CONTENT_FIELDS = ("content", "value", "text", "message")
Row = dict[str, Any]


@attrs.frozen
class RoleMapping:
    """A source's `role_mapping`, split by what each key names."""

    columns: dict[str, str] = attrs.field(factory=dict)
    fields: dict[str, str] = attrs.field(factory=dict)
    roles: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, mapping: Mapping[str, str], path: str) -> RoleMapping:
        """Split `mapping`; `path` (e.g. `data.sources[0].role_mapping`) names it in errors."""
        parts: dict[str, dict[str, str]] = {"columns": {}, "fields": {}, "roles": {}}
        for key, value in mapping.items():
            group = "columns" if key in COLUMN_KEYS else "fields" if key in FIELD_KEYS else "roles"
            if group == "roles" and key not in ROLE_KEYS:
                known = ", ".join((*COLUMN_KEYS, *FIELD_KEYS, *ROLE_KEYS))
                raise RecipeError(f"unknown key {key!r}; expected one of {known}", path=f"{path}.{key}")
            if not isinstance(value, str) or not value:
                raise RecipeError(f"expected a column or field name, got {value!r}", path=f"{path}.{key}")
            parts[group][key] = value
        return cls(**parts)

    def column(self, key: str) -> str:
        return self.columns.get(key, key)


def detect_format(columns: Sequence[str], mapping: RoleMapping, source: str) -> str:
    """The format of a source from its column names (after `role_mapping`)."""
    if mapping.roles:
        return "chat"
    present = {key for key in COLUMN_KEYS if mapping.column(key) in columns}
    if {"chosen", "rejected"} <= present:
        return "preference"
    for fmt, needed in (
        ("chat", {"messages"}),
        ("sharegpt", {"conversations"}),
        ("alpaca", {"instruction", "output"}),
        ("prompt_completion", {"prompt", "completion"}),
        ("text", {"text"}),
    ):
        if needed <= present:
            return fmt
    raise DataError(
        f"{source}: cannot tell the format from its columns {list(columns)}; set `format` "
        f"({', '.join(FORMATS)}) and, for other column names, `role_mapping`"
    )


def _get(row: Mapping[str, Any], column: str, where: str, fmt: str) -> Any:
    value = row.get(column)
    if value is None:
        raise DataError(f"{where}: missing field {column!r} (format {fmt})")
    return value


def _message(item: Any, mapping: RoleMapping, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: expected a message object, got {item!r:.80}")
    role_key = mapping.fields.get("role") or next((k for k in ROLE_FIELDS if k in item), "role")
    content_key = mapping.fields.get("content") or next(
        (k for k in CONTENT_FIELDS if item.get(k) is not None), "content"
    )
    role = item.get(role_key)
    if not isinstance(role, str):
        raise DataError(f"{where}: a message needs a string {role_key!r}, got {dict(item)!r:.120}")
    return message(item, role, item.get(content_key), where)


def _messages(value: Any, mapping: RoleMapping, where: str, *, link: bool = True) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, Sequence):
        raise DataError(f"{where}: expected a list of messages, got {value!r:.80}")
    messages = [_message(item, mapping, where) for item in value]
    return link_tool_results(messages, where) if link else messages


def _chat(messages: list[dict[str, Any]], row: Mapping[str, Any], mapping: RoleMapping, where: str) -> Row:
    """A `chat` row, with the conversation's `tools` when the source has them."""
    out: Row = {"kind": "chat", "messages": messages}
    tools = parse_tools(row.get(mapping.column("tools")), where)
    if tools:
        out["tools"] = tools
    return out


def _from_roles(row: Mapping[str, Any], mapping: RoleMapping, where: str) -> list[dict[str, Any]]:
    paths = {role: spec.split(".") for role, spec in mapping.roles.items()}
    if all(len(p) == 3 for p in paths.values()) and len({p[0] for p in paths.values()}) == 1:
        array, field = next(iter(paths.values()))[:2]
        by_value = {p[2]: role for role, p in paths.items()}
        messages = []
        for item in _get(row, array, where, "chat"):
            role = by_value.get(str(item.get(field))) if isinstance(item, Mapping) else None
            if role is not None:
                content_key = mapping.fields.get("content") or next(
                    (k for k in CONTENT_FIELDS if k in item), "content"
                )
                messages.append({"role": role, "content": _get(item, content_key, where, "chat")})
        return messages
    order = [r for r in ROLE_KEYS if r in mapping.roles]
    return [
        {"role": r, "content": _get(row, mapping.roles[r], where, "chat")}
        for r in order
        if r != "system" or row.get(mapping.roles[r])
    ]


def _alpaca(row: Mapping[str, Any], mapping: RoleMapping, where: str) -> list[dict[str, Any]]:
    instruction = _get(row, mapping.column("instruction"), where, "alpaca")
    extra = row.get(mapping.column("input")) or ""
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _get(row, mapping.column("output"), where, "alpaca")},
    ]


def _continuation(value: Any, mapping: RoleMapping, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _messages(value, mapping, where, link=False)


def _preference(row: Mapping[str, Any], mapping: RoleMapping, where: str) -> Row:
    chosen = _continuation(_get(row, mapping.column("chosen"), where, "preference"), mapping, where)
    rejected = _continuation(_get(row, mapping.column("rejected"), where, "preference"), mapping, where)
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared:  # ultrafeedback-style: both lists start with the prompt turns
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    else:
        prompt = _messages(
            _get(row, mapping.column("prompt"), where, "preference"), mapping, where, link=False
        )
    for side in (chosen, rejected):
        link_tool_results(prompt + side, where)
    out: Row = {"kind": "preference", "prompt": prompt, "chosen": chosen, "rejected": rejected}
    tools = parse_tools(row.get(mapping.column("tools")), where)
    if tools:
        out["tools"] = tools
    return out


def _prompt_completion(row: Mapping[str, Any], mapping: RoleMapping, where: str) -> Row:
    prompt = _get(row, mapping.column("prompt"), where, "prompt_completion")
    completion = _get(row, mapping.column("completion"), where, "prompt_completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"kind": "prompt_completion", "prompt": prompt, "completion": completion}
    messages = _messages(prompt, mapping, where, link=False) + _continuation(completion, mapping, where)
    return _chat(link_tool_results(messages, where), row, mapping, where)


def normalize(row: Mapping[str, Any], fmt: str, mapping: RoleMapping, where: str) -> Row:
    """One source row as a canonical row (see the module docstring); `where` names it in errors."""
    if mapping.roles:
        return {"kind": "chat", "messages": _from_roles(row, mapping, where)}
    if fmt in ("chat", "sharegpt"):
        column = mapping.column("messages" if fmt == "chat" else "conversations")
        return _chat(_messages(_get(row, column, where, fmt), mapping, where), row, mapping, where)
    if fmt == "alpaca":
        return {"kind": "chat", "messages": _alpaca(row, mapping, where)}
    if fmt == "prompt_completion":
        return _prompt_completion(row, mapping, where)
    if fmt == "text":
        text = _get(row, mapping.column("text"), where, "text")
        if not isinstance(text, str):
            raise DataError(f"{where}: field {mapping.column('text')!r} must be a string, got {text!r:.80}")
        return {"kind": "text", "text": text}
    if fmt == "preference":
        return _preference(row, mapping, where)
    raise RecipeError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
