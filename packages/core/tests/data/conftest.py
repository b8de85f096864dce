"""Shared helpers for the data pipeline tests: recipe configs, tokenizers with other chat templates."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from data_helpers import tokenizer_with

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Any]:
    """`make_config(*sources, eval_sources=(), **data)`: a TrainerConfig caching under tmp_path."""
    from arctic_core.config import DataConfig, ModelConfig, SourceConfig, TrainerConfig

    def source(value: Any) -> SourceConfig:
        if isinstance(value, SourceConfig):
            return value
        if isinstance(value, dict):
            return SourceConfig(**value)
        return SourceConfig(name_or_path=str(value))

    def make(*sources: Any, eval_sources: tuple[Any, ...] = (), **data: Any) -> TrainerConfig:
        data.setdefault("cache_dir", str(tmp_path / "cache"))
        data.setdefault("max_length", 128)
        data_config = DataConfig(
            sources=[source(s) for s in sources], eval_sources=[source(s) for s in eval_sources], **data
        )
        return TrainerConfig(model=ModelConfig(name_or_path="tiny"), data=data_config)

    return make


@pytest.fixture
def tokenizer() -> Any:
    return tokenizer_with(None)
