"""Issue 24, item 6: data files that are not UTF-8 text, and rows far longer than `max_length`,
are refused or dropped before tokenization, named by file and line, in bounded memory and time."""

from __future__ import annotations

import json
import logging
import time
import tracemalloc
from pathlib import Path

import pytest

from arctic_core.config import DataConfig, ModelConfig, SourceConfig, TrainerConfig
from arctic_core.data.errors import DataError
from arctic_core.data.factory import DataFactory
from arctic_core.data.screen import screen_file
from arctic_core.testing import tiny_tokenizer
from arctic_core.testing.datasets import arithmetic_conversations


def config(source: Path, cache: Path, **data: object) -> TrainerConfig:
    data_config = DataConfig(
        sources=[SourceConfig(name_or_path=str(source))], cache_dir=str(cache), max_length=128, **data
    )
    return TrainerConfig(model=ModelConfig(name_or_path="tiny"), data=data_config)


def chat_lines(n: int) -> list[str]:
    return [json.dumps(row) for row in arithmetic_conversations(n)]


def test_a_binary_file_named_jsonl_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(("\n".join(chat_lines(3)) + "\n").encode() + bytes(range(256)) * 40)
    factory = DataFactory(config(data, tmp_path / "cache"), tiny_tokenizer())
    with pytest.raises(DataError) as error:
        factory.prepare()
    assert f"{data}:4: " in str(error.value) and "not a text data file in UTF-8" in str(error.value)


def test_a_10_mb_line_is_dropped_before_tokenization_fast_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = chat_lines(8)
    huge = json.dumps(
        {"messages": [{"role": "user", "content": "x" * (10 << 20)}, {"role": "assistant", "content": "y"}]}
    )
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([*lines[:3], huge, *lines[3:]]) + "\n")
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="arctic"):
        factory = DataFactory(config(data, tmp_path / "cache"), tiny_tokenizer())
        factory.prepare()
    elapsed = time.perf_counter() - started
    assert factory.summary()["train"]["samples"] == 8  # every other row kept
    assert f"{data}:4: row of {len(huge) + 1:,} bytes dropped before tokenization" in caplog.text
    assert elapsed < 10, elapsed

    tracemalloc.start()  # the screening itself holds at most one bounded piece of the line
    screen_file(data, bound=64 * 128, scratch=tmp_path / "scratch")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_under_strict_a_too_long_line_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join([*chat_lines(2), json.dumps({"messages": [{"role": "user", "content": "x" * 20_000}]})])
    )
    factory = DataFactory(config(data, tmp_path / "cache", strict=True), tiny_tokenizer())
    with pytest.raises(DataError, match=rf"{data}:3: a row of 20,\d+ bytes, longer than 8,192 bytes"):
        factory.prepare()


def test_plain_text_documents_are_not_dropped_for_length(tmp_path: Path) -> None:
    data = tmp_path / "text.jsonl"
    data.write_text(json.dumps({"text": "one two three " * 2000}) + "\n")
    assert screen_file(data, bound=8192, scratch=tmp_path / "scratch") == data
