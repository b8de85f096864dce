"""`load_tokenizer`: the recipe's tokenizer, with its chat template overridden where the recipe says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arctic_core.config import TrainerConfig
from arctic_core.errors import RecipeError


def resolve_chat_template(value: str) -> str:
    """`tokenizer.chat_template`: a Jinja template string, or the path of a file holding one."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise RecipeError(
        f"{value!r} is neither a Jinja template nor an existing file", path="tokenizer.chat_template"
    )


def load_tokenizer(config: TrainerConfig) -> Any:
    """`tokenizer.name_or_path` (default: the model's), with `tokenizer.chat_template` applied."""
    from transformers import AutoTokenizer

    name = config.tokenizer.name_or_path or config.model.name_or_path
    key = "tokenizer.name_or_path" if config.tokenizer.name_or_path else "model.name_or_path"
    revision = None if config.tokenizer.name_or_path else config.model.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=config.model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise RecipeError(f"cannot load a tokenizer from {name!r}: {exc}", path=key) from None
    if config.tokenizer.chat_template:
        tokenizer.chat_template = resolve_chat_template(config.tokenizer.chat_template)
    return tokenizer
