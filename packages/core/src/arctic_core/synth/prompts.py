"""Prompts for generation, from any of core's sources and formats (`[generate] prompts`).

- `turns`: one prompt per assistant turn of each conversation: the messages before it (chat,
  ShareGPT, Alpaca, prompt/completion rows; preference rows give their prompt). A row whose last
  message is the user's also gives that whole conversation as a prompt.
- `template`: `prompt_template`, a Jinja template, rendered over each row's columns, as the user
  message (after `system_prompt`, when set).
- `chunks` (ArcticTraining's speculator data): each conversation chat-templated and cut into
  `gen_prompt_length`-token pieces, the remainder dropped; token ids only.

`max_prompts` keeps the first N.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from arctic_core.config import GenerateConfig, SourceConfig
from arctic_core.errors import RecipeError

Messages = list[dict[str, Any]]


@attrs.frozen
class Prompt:
    """One prompt: chat messages (text backends), token ids (local backends), or both."""

    messages: Messages | None = None
    ids: list[int] | None = None


def read_rows(
    sources: Sequence[SourceConfig], scratch: Path, key: str, canonical: bool = True
) -> list[tuple[dict[str, Any], Any]]:
    """Every row of `sources` with its canonical form (`arctic_core.data.formats.normalize`; None
    when not `canonical`: a template reads the columns, whatever they are)."""
    from arctic_core.data.formats import RoleMapping, detect_format, normalize
    from arctic_core.data.sources import load_source

    rows: list[tuple[dict[str, Any], Any]] = []
    for index, source in enumerate(sources):
        table = load_source(source, "train", scratch)
        if not canonical:
            rows += [(dict(row), None) for row in table]
            continue
        mapping = RoleMapping.parse(source.role_mapping, f"{key}[{index}].role_mapping")
        fmt = source.format or detect_format(table.column_names, mapping, source.name_or_path)
        for row_index, row in enumerate(table):
            where = f"source {source.name_or_path!r} row {row_index}"
            rows.append((dict(row), normalize(row, fmt, mapping, where)))
    return rows


def read_conversations(sources: Sequence[SourceConfig], scratch: Path) -> list[Messages]:
    """The chat messages of every row of `sources` (chat, ShareGPT or Alpaca layouts)."""
    from arctic_core.data.errors import DataError

    conversations = []
    for row_index, (_, canonical) in enumerate(read_rows(sources, scratch, "generate.sources")):
        if canonical.get("kind") != "chat":
            raise DataError(
                f"row {row_index}: generation needs chat rows (messages), not {canonical.get('kind')}"
            )
        conversations.append(canonical["messages"])
    return conversations


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return [int(t) for t in ids]


def prompt_ids(messages: Messages, tokenizer: Any) -> list[int]:
    """The chat-templated token ids of `messages`, with the generation prompt."""
    return _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))


def conversation_prompts(messages: Messages, tokenizer: Any, gen: GenerateConfig) -> list[list[int]]:
    """The token-id prompts one conversation gives (`chunks` or `turns`, module docstring)."""
    if gen.prompts == "chunks":
        ids = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        size = gen.gen_prompt_length
        return [ids[start : start + size] for start in range(0, len(ids) // size * size, size)]
    return [prompt_ids(turns, tokenizer) for turns in turn_prompts(messages)]


def turn_prompts(messages: Messages) -> list[Messages]:
    """The conversation before each assistant turn; the whole one when it ends with the user."""
    prompts = [messages[:j] for j, m in enumerate(messages) if m["role"] == "assistant" and j > 0]
    if messages and messages[-1]["role"] == "user":
        prompts.append(list(messages))
    return prompts


def _row_prompts(row: dict[str, Any], canonical: Any, gen: GenerateConfig, template: Any) -> list[Messages]:
    system = [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
    if template is not None:
        return [[*system, {"role": "user", "content": template.render(**row)}]]
    kind = canonical.get("kind")
    if kind == "chat":
        return turn_prompts(canonical["messages"])
    if kind == "preference":
        return [canonical["prompt"]]
    if kind == "prompt_completion":
        return [[*system, {"role": "user", "content": canonical["prompt"]}]]
    return [[*system, {"role": "user", "content": canonical["text"]}]]


def collect_prompts(gen: GenerateConfig, tokenizer: Any, scratch: Path) -> list[Prompt]:
    """Every prompt `[generate]` asks for, in source order (module docstring)."""
    if not gen.sources:
        raise RecipeError("lists no data to take prompts from", path="generate.sources")
    if gen.prompts == "chunks":
        chunks = [
            p
            for m in read_conversations(gen.sources, scratch)
            for p in conversation_prompts(m, tokenizer, gen)
        ]
        prompts = [Prompt(ids=ids) for ids in chunks]
    else:
        template = None
        if gen.prompts == "template":
            import jinja2

            try:
                template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
                    gen.prompt_template
                )
            except jinja2.TemplateSyntaxError as exc:
                raise RecipeError(f"not a Jinja template: {exc}", path="generate.prompt_template") from None
        rows = read_rows(gen.sources, scratch, "generate.sources", canonical=template is None)
        prompts = []
        for index, (row, canonical) in enumerate(rows):
            try:
                prompts += [Prompt(messages=m) for m in _row_prompts(row, canonical, gen, template)]
            except Exception as exc:  # jinja2's UndefinedError names the missing column
                if template is None:
                    raise
                raise RecipeError(f"row {index}: {exc}", path="generate.prompt_template") from None
    prompts = prompts[: gen.max_prompts] if gen.max_prompts else prompts
    if tokenizer is not None and gen.prompts != "chunks":
        prompts = [attrs.evolve(p, ids=prompt_ids(p.messages or [], tokenizer)) for p in prompts]
    return prompts
