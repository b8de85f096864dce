"""pytest fixtures for Arctic tests. Enable them in a conftest.py:

    pytest_plugins = ["arctic_core.testing.fixtures"]

Loading the plugin forces the offline environment (`OFFLINE_ENV`) before any test module imports
huggingface_hub, which reads it once at import; the autouse `offline_env` fixture checks it holds.
Heavy imports happen inside the fixtures, so loading the plugin stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Environment every Arctic test runs under: no hub access, no tokenizer thread pools."""


def apply_offline_env() -> None:
    """Set `OFFLINE_ENV` in `os.environ`, overriding what is there."""
    os.environ.update(OFFLINE_ENV)


def pytest_configure(config: pytest.Config) -> None:
    apply_offline_env()


@pytest.fixture(scope="session", autouse=True)
def offline_env() -> Iterator[dict[str, str]]:
    """The offline environment variables, (re)applied at the start of the session."""
    apply_offline_env()
    yield dict(OFFLINE_ENV)


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A fresh copy of the shipped tiny tokenizer (no pad token; safe to mutate)."""
    from arctic_core.testing import models

    return models.tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny llama (seed 0) with its tokenizer; shared by the session, so do not write into it."""
    from arctic_core.testing import models

    return models.save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-row arithmetic chat dataset (`messages` rows) as jsonl; shared by the session."""
    from arctic_core.testing import datasets

    return datasets.write_dataset(tmp_path_factory.mktemp("data") / "chat.jsonl", "chat", n=32, seed=0)
