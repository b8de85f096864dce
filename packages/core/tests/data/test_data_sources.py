"""Sources: files and folders of every format, save_to_disk folders, hub layouts, sampling, splits."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from arctic_core.config import SourceConfig
from arctic_core.data import DataFactory
from arctic_core.data.errors import DataError
from arctic_core.data.sources import load_source, sample, split_of
from arctic_core.testing import (
    FORMATS,
    alpaca_rows,
    arithmetic_conversations,
    ultrafeedback_rows,
    write_dataset,
    write_hub_layout,
    write_rows,
)


def load(tmp_path: Path, role: str = "train", **source) -> datasets.Dataset:
    return load_source(SourceConfig(**source), role, tmp_path / "scratch")


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_of_every_format(tmp_path: Path, fmt: str) -> None:
    rows = alpaca_rows(6)
    path = write_rows(tmp_path / f"a.{fmt}", rows)
    table = load(tmp_path, name_or_path=str(path))
    assert table["output"] == [r["output"] for r in rows]
    assert load(tmp_path, name_or_path=str(path), split="train[2:4]")["output"] == [
        r["output"] for r in rows[2:4]
    ]


def test_folder_of_files(tmp_path: Path) -> None:
    write_rows(tmp_path / "d" / "part1.jsonl", alpaca_rows(3, seed=1))
    write_rows(tmp_path / "d" / "part2.jsonl", alpaca_rows(4, seed=2))
    assert len(load(tmp_path, name_or_path=str(tmp_path / "d"))) == 7


def test_save_to_disk_folders(tmp_path: Path) -> None:
    rows = alpaca_rows(8)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}
    ).save_to_disk(str(tmp_path / "many"))
    assert len(load(tmp_path, name_or_path=str(tmp_path / "one"), split="train[:50%]")) == 4
    assert len(load(tmp_path, name_or_path=str(tmp_path / "many"), split="test")) == 2
    with pytest.raises(DataError, match="no split 'dev'"):
        load(tmp_path, name_or_path=str(tmp_path / "many"), split="dev")


def test_hub_layout_with_known_split_names(tmp_path: Path) -> None:
    folder = write_hub_layout(
        tmp_path,
        "HuggingFaceH4/ultrachat_200k",
        {"train_sft": arithmetic_conversations(10, seed=1), "test_sft": arithmetic_conversations(3, seed=2)},
    )
    assert len(load(tmp_path, name_or_path=str(folder))) == 10  # train -> train_sft
    assert len(load(tmp_path, name_or_path=str(folder), split="train[:4]")) == 4
    assert len(load(tmp_path, "eval", name_or_path=str(folder))) == 3  # eval -> test_sft
    assert len(load(tmp_path, name_or_path=str(folder), split="test_sft[1:]")) == 2


def test_known_dataset_by_type_for_any_local_folder(tmp_path: Path) -> None:
    folder = write_hub_layout(
        tmp_path, "copy", {"train_prefs": ultrafeedback_rows(5), "test_prefs": ultrafeedback_rows(2)}
    )
    source = SourceConfig(name_or_path=str(folder), type="HuggingFaceH4/ultrafeedback_binarized")
    assert split_of(source, "train") == "train_prefs" and split_of(source, "eval") == "test_prefs"
    assert len(load_source(source, "train", tmp_path / "scratch")) == 5
    short = SourceConfig(name_or_path=str(folder), type="ultrafeedback_binarized", split="test")
    assert len(load_source(short, "train", tmp_path / "scratch")) == 2


def test_sampling_is_seeded(tmp_path: Path) -> None:
    table = datasets.Dataset.from_dict({"i": list(range(100))})
    one = sample(table, SourceConfig(name_or_path="x", sample_count=10, sample_seed=1))["i"]
    assert one == sample(table, SourceConfig(name_or_path="x", sample_count=10, sample_seed=1))["i"]
    assert one != sample(table, SourceConfig(name_or_path="x", sample_count=10, sample_seed=2))["i"]
    assert len(sample(table, SourceConfig(name_or_path="x", sample_ratio=0.25))) == 25


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot be loaded"):
        load(tmp_path, name_or_path=str(tmp_path / "nope" / "data"))


def test_sources_concatenate_and_split(tmp_path: Path, make_config, tokenizer) -> None:
    a = write_dataset(tmp_path / "a.jsonl", "chat", n=12, seed=1, max_turns=1)
    b = write_dataset(tmp_path / "b.parquet", "alpaca", n=8, seed=2)
    c = write_dataset(tmp_path / "c.csv", "alpaca", n=5, seed=3)
    config = make_config(
        a, {"name_or_path": str(b), "sample_count": 4}, train_eval_split=(0.75, 0.25), eval_sources=(c,)
    )
    factory = DataFactory(config, tokenizer)
    train, evaluation = factory.train_dataset(), factory.eval_dataset()
    assert len(train) + len(evaluation) == 12 + 4 + 5
    assert len(train) == 12  # 16 training samples, a quarter held out
    info = factory.summary()
    assert [s["rows"] for s in info["train"]["sources"]] == [12, 4]
    assert [s["format"] for s in info["train"]["sources"]] == ["chat", "alpaca"]
    assert info["eval"]["sources"][0]["rows"] == 5 and info["eval"]["samples"] == 9


def test_no_eval_data_gives_none(tmp_path: Path, make_config, tokenizer) -> None:
    config = make_config(write_dataset(tmp_path / "a.jsonl", "chat", n=4, max_turns=1))
    assert DataFactory(config, tokenizer).eval_dataset() is None


def test_source_strings_with_split_and_slice(tmp_path: Path, make_config, tokenizer) -> None:
    folder = write_hub_layout(
        tmp_path, "HuggingFaceH4/ultrachat_200k", {"train_sft": arithmetic_conversations(9)}
    )
    source = SourceConfig.from_string(f"{folder}:train[:4]")
    assert len(DataFactory(make_config(source), tokenizer).train_dataset()) == 4
