"""The recipe reference, generated from the config classes (docs/recipes.md embeds it)."""

from __future__ import annotations

import typing
from typing import Any

import attrs

from arctic_core.config import SourceConfig, TrainerConfig


def _type_name(tp: Any) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    return text.replace("typing.", "").replace("arctic_core.config.", "").replace(" | ", " or ")


def _default(field: attrs.Attribute) -> str:
    if field.default is attrs.NOTHING:
        return "required"
    if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        value = field.default.factory()  # type: ignore[union-attr]
        return "(table)" if attrs.has(type(value)) else f"`{value!r}`"
    return f"`{field.default!r}`"


def _rows(cls: type, prefix: str) -> list[str]:
    rows: list[str] = []
    hints = typing.get_type_hints(cls)
    nested: list[tuple[str, type]] = []
    for field in attrs.fields(cls):
        hint = hints[field.name]
        args = typing.get_args(hint)
        inner = args[0] if args and attrs.has(args[0]) else hint
        if attrs.has(inner):
            nested.append((f"{prefix}{field.name}" + ("[]" if args else ""), inner))
            continue
        doc = field.metadata.get("doc", "")
        rows.append(f"| `{prefix}{field.name}` | {_type_name(hint)} | {_default(field)} | {doc} |")
    for name, inner in nested:
        rows.extend(_rows(inner, f"{name}."))
    return rows


def reference(cls: type = TrainerConfig) -> str:
    """A markdown table of every key of `cls`, nested tables flattened to dotted paths."""
    header = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    source_note = f"\nA source may also be a plain string: {SourceConfig.from_string.__doc__}\n"
    return "\n".join(header + _rows(cls, "")) + "\n" + source_note


BEGIN, END = "<!-- BEGIN GENERATED KEYS -->", "<!-- END GENERATED KEYS -->"


def embed(page: str) -> str:
    """`page` with the text between the BEGIN/END markers replaced by the current reference."""
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{reference()}{END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        target = Path(sys.argv[2])
        target.write_text(embed(target.read_text()))
    else:
        print(reference())
