"""DataFactory end to end: bad input, drops and the summary, tokenizer loading, `arctic data prepare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arctic_core.config import ModelConfig, TokenizerConfig, TrainerConfig
from arctic_core.data import DataError, DataFactory, load_tokenizer
from arctic_core.errors import RecipeError
from arctic_core.testing import (
    arithmetic_conversations,
    save_tokenizer_files,
    ultrafeedback_rows,
    write_dataset,
    write_hub_layout,
    write_rows,
)

IGNORE = -100


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path, make_config, tokenizer) -> None:
    path = write_dataset(tmp_path / "a.jsonl", "chat", n=5)
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:-2]  # cut the closing brackets of line 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{path}:4: malformed JSON line"):
        DataFactory(make_config(path), tokenizer).train_dataset()


def test_empty_source_is_an_error(tmp_path: Path, make_config, tokenizer) -> None:
    full = write_dataset(tmp_path / "full.jsonl", "chat", n=3)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"data.sources\[1\] .*empty.jsonl.* no rows"):
        DataFactory(make_config(full, tmp_path / "empty.jsonl"), tokenizer).train_dataset()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "part.jsonl").write_text("")
    with pytest.raises(DataError, match=r"data.sources\[0\] .*folder: no rows"):
        DataFactory(make_config(tmp_path / "folder"), tokenizer).train_dataset()
    with pytest.raises(DataError, match=r"data.sources\[1\] .*full.jsonl: .*corresponds to no data"):
        DataFactory(
            make_config(full, {"name_or_path": str(full), "split": "train[:0]"}), tokenizer
        ).train_dataset()


def test_source_with_nothing_left_is_an_error(tmp_path: Path, make_config, tokenizer) -> None:
    config = make_config(write_dataset(tmp_path / "a.jsonl", "chat", n=3), max_length=8)
    with pytest.raises(DataError, match=r"yields no samples \(3 rows, dropped: \{'too_long': 3\}\)"):
        DataFactory(config, tokenizer).train_dataset()


def test_drops_are_counted_in_the_summary(tmp_path: Path, make_config, tokenizer) -> None:
    rows = arithmetic_conversations(6, seed=1, max_turns=1, system_prob=0.0)
    rows.append({"messages": [{"role": "user", "content": "Hi"}]})  # nothing to train on
    rows.append(
        {"messages": [{"role": "user", "content": "1 2 3 " * 30}, {"role": "assistant", "content": "x"}]}
    )
    path = write_rows(tmp_path / "a.jsonl", rows)
    run_dir = tmp_path / "run"
    factory = DataFactory(make_config(path, max_length=64, pack_samples=True), tokenizer, run_dir=run_dir)
    assert len(factory.train_dataset()) >= 1
    saved = json.loads((run_dir / "data_summary.json").read_text())
    source = saved["train"]["sources"][0]
    assert source["rows"] == 8 and source["samples"] == 6
    assert source["dropped"] == {"no_trainable_tokens": 1, "too_long": 1}
    assert set(source["length"]) == {"p50", "p90", "p99", "max"} and source["length"]["max"] <= 64
    assert 0 < source["trainable_fraction"] < 1
    assert 0 <= saved["train"]["packing_padding_fraction"] < 1


def test_strict_makes_drops_errors(tmp_path: Path, make_config, tokenizer) -> None:
    rows = [*arithmetic_conversations(2, max_turns=1), {"messages": [{"role": "user", "content": "Hi"}]}]
    config = make_config(write_rows(tmp_path / "a.jsonl", rows), strict=True)
    with pytest.raises(DataError, match=r"row 2: no trainable token \(data.strict"):
        DataFactory(config, tokenizer).train_dataset()


def test_without_filtering_long_samples_are_truncated(tmp_path: Path, make_config, tokenizer) -> None:
    config = make_config(
        write_dataset(tmp_path / "a.jsonl", "chat", n=4, max_turns=3), max_length=40, filter_samples=False
    )
    factory = DataFactory(config, tokenizer)
    assert all(len(r["input_ids"]) <= 40 for r in factory.train_dataset())
    source = factory.summary()["train"]["sources"][0]
    assert source["truncated"] > 0 and source["samples"] + sum(source["dropped"].values()) == 4


def test_text_documents_are_cut_into_pieces(tmp_path: Path, make_config, tokenizer) -> None:
    path = write_rows(tmp_path / "t.jsonl", [{"text": "12 + 7 = 19\n" * 30}])
    dataset = DataFactory(make_config(path, max_length=32), tokenizer).train_dataset()
    assert len(dataset) > 3 and all(len(r["input_ids"]) <= 32 for r in dataset)
    assert all(r["labels"][1:] == r["input_ids"][1:] for r in dataset)


def test_chat_source_without_template_names_the_key(tmp_path: Path, make_config, tokenizer) -> None:
    tokenizer.chat_template = None
    with pytest.raises(RecipeError, match=r"tokenizer.chat_template: .*no chat template"):
        DataFactory(make_config(write_dataset(tmp_path / "a.jsonl", "chat", n=2)), tokenizer).train_dataset()


def test_preference_pairs_from_a_known_hub_layout(tmp_path: Path, make_config, tokenizer) -> None:
    folder = write_hub_layout(
        tmp_path,
        "HuggingFaceH4/ultrafeedback_binarized",
        {"train_prefs": ultrafeedback_rows(4), "test_prefs": ultrafeedback_rows(2, seed=1)},
    )
    factory = DataFactory(make_config(folder, eval_sources=(folder,)), tokenizer)
    row = factory.train_dataset()[0]
    assert len(factory.train_dataset()) == 4 and len(factory.eval_dataset()) == 2
    for side in ("chosen", "rejected"):
        trained = tokenizer.decode([t for t in row[f"{side}_labels"] if t != IGNORE])
        assert trained.endswith("<|im_end|>") and "What is" not in trained
    assert row["chosen_input_ids"] != row["rejected_input_ids"]


def test_load_tokenizer_defaults_and_template_override(tmp_path: Path) -> None:
    model_dir = save_tokenizer_files(tmp_path / "model")
    template_file = tmp_path / "t.jinja"
    template_file.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    config = TrainerConfig(
        model=ModelConfig(name_or_path=str(model_dir)),
        tokenizer=TokenizerConfig(chat_template=str(template_file)),
    )
    tokenizer = load_tokenizer(config)
    assert tokenizer.chat_template == template_file.read_text()
    with pytest.raises(RecipeError, match=r"tokenizer.chat_template: 'nope.jinja' is neither"):
        load_tokenizer(
            TrainerConfig(
                model=ModelConfig(name_or_path=str(model_dir)),
                tokenizer=TokenizerConfig(chat_template="nope.jinja"),
            )
        )
    with pytest.raises(RecipeError, match=r"model.name_or_path: cannot load a tokenizer"):
        load_tokenizer(TrainerConfig(model=ModelConfig(name_or_path=str(tmp_path / "missing"))))


def test_cli_data_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from arctic_core.cli import cli

    model_dir = save_tokenizer_files(tmp_path / "model")
    data = write_dataset(tmp_path / "a.jsonl", "chat", n=5, max_turns=1)
    (tmp_path / "train.py").write_text(
        "from arctic_core.trainer import Trainer\n\nclass DataOnly(Trainer):\n    name = 'data-only-test'\n"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"type: data-only-test\ncode: {tmp_path / 'train.py'}\nmodel:\n  name_or_path: {model_dir}\n"
        f"data:\n  sources: ['{data}']\n  cache_dir: {tmp_path / 'cache'}\n  max_length: 128\n"
        f"logger:\n  output_dir: {tmp_path / 'run'}\n"
    )
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "prepare", str(recipe)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "data built" in result.output and "train: 5 samples" in result.output
    assert (tmp_path / "run" / "data_summary.json").is_file()
    again = runner.invoke(cli, ["data", "prepare", str(recipe), "--set", "data.div_length=8"])
    assert "already cached" in again.output


def test_pretokenized_source_keeps_its_tokens(tmp_path: Path, make_config, tokenizer) -> None:
    rows = [
        {"input_ids": [5, 6, 7, 8]},
        {"input_ids": [9, 10], "labels": [-100, 10]},
        {"input_ids": list(range(200))},
    ]
    path = write_rows(tmp_path / "tok.jsonl", rows)
    factory = DataFactory(make_config({"name_or_path": str(path), "process": False}), tokenizer)
    dataset = factory.train_dataset()
    assert [r["input_ids"] for r in dataset] == [[5, 6, 7, 8], [9, 10]]
    assert dataset[0]["labels"] == [-100, 6, 7, 8]
    assert factory.summary()["train"]["sources"][0]["dropped"] == {"too_long": 1}


def test_mixing_preference_pairs_with_chat_is_an_error(tmp_path: Path, make_config, tokenizer) -> None:
    chat = write_dataset(tmp_path / "c.jsonl", "chat", n=2)
    prefs = write_dataset(tmp_path / "p.jsonl", "preference", n=2)
    with pytest.raises(DataError, match="different kinds of samples"):
        DataFactory(make_config(chat, prefs), tokenizer).train_dataset()
    factory = DataFactory(make_config(prefs), tokenizer)
    with pytest.raises(DataError, match="need their method's data factory"):
        factory.collate([factory.train_dataset()[0]])


def test_template_failure_names_the_row(tmp_path: Path, make_config, tokenizer) -> None:
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}"
        "{% endif %}{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}] * 2
    rows.append({"messages": [{"role": "system", "content": "s"}, *rows[0]["messages"]]})
    with pytest.raises(
        DataError, match=r"row 2: the chat template .* failed on this conversation: no system"
    ):
        DataFactory(make_config(write_rows(tmp_path / "a.jsonl", rows)), tokenizer).train_dataset()


def test_bad_role_mapping_names_the_recipe_key(tmp_path: Path, make_config, tokenizer) -> None:
    source = {
        "name_or_path": str(write_dataset(tmp_path / "a.jsonl", "chat", n=2)),
        "role_mapping": {"usr": "x"},
    }
    with pytest.raises(RecipeError, match=r"data.sources\[0\].role_mapping.usr: unknown key"):
        DataFactory(make_config(source), tokenizer).train_dataset()


def test_declared_format_and_column_mapping(tmp_path: Path, make_config, tokenizer) -> None:
    path = write_rows(tmp_path / "docs.jsonl", [{"body": "1 + 1 = 2", "messages": "not a list"}])
    source = {"name_or_path": str(path), "format": "text", "role_mapping": {"text": "body"}}
    factory = DataFactory(make_config(source), tokenizer)
    row = factory.train_dataset()[0]
    assert tokenizer.decode(row["input_ids"]) == "<|begin_of_text|>1 + 1 = 2<|endoftext|>"
    assert factory.summary()["train"]["sources"][0]["format"] == "text"
    qa = write_rows(tmp_path / "qa.csv", [{"question": "Q?", "answer": "A."}])
    mapped = {"name_or_path": str(qa), "role_mapping": {"user": "question", "assistant": "answer"}}
    row = DataFactory(make_config(mapped), tokenizer).train_dataset()[0]
    assert tokenizer.decode([t for t in row["labels"] if t != IGNORE]) == "A.<|im_end|>"
