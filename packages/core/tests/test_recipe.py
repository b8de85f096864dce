"""Recipe parsing: schema errors name the key path, overrides, formats, round trips."""

from __future__ import annotations

import textwrap

import pytest

from arctic_core.config import SourceConfig, TrainerConfig
from arctic_core.errors import RecipeError
from arctic_core.recipe import apply_overrides, load_recipe, read_recipe
from arctic_core.recipe.convert import structure
from arctic_core.recipe.render import render

BASE = {"model": {"name_or_path": "some/model"}}


def _error(data: dict) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        structure(data, TrainerConfig, source="r.toml")
    return info.value


def test_defaults_follow_arctictraining():
    config = structure(BASE, TrainerConfig)
    assert config.optimizer.lr == 5e-4
    assert config.optimizer.weight_decay == 0.1
    assert config.optimizer.betas == (0.9, 0.999)
    assert config.scheduler.warmup_ratio == 0.1
    assert config.seed == 42
    assert config.model.dtype == "bf16"
    assert config.model.disable_activation_checkpoint is None  # auto


def test_unknown_key_suggests_the_right_one():
    error = _error({**BASE, "micro_bach_size": 2})
    assert error.path == "micro_bach_size"
    assert "micro_batch_size" in str(error)


def test_wrong_type_names_the_field():
    error = _error({**BASE, "epochs": "two"})
    assert error.path == "epochs" and "integer" in str(error)


def test_out_of_range_names_the_nested_path():
    error = _error({**BASE, "optimizer": {"lr": -1}})
    assert error.path == "optimizer.lr"


def test_nested_list_paths_and_several_problems():
    error = _error(
        {**BASE, "data": {"sources": ["a", {"name_or_path": "b", "splt": "x"}, {"name_or_path": 3}]}}
    )
    assert "data.sources[1].splt" in str(error) and "'split'" in str(error)
    assert "data.sources[2].name_or_path" in str(error)


def test_missing_required_and_wrong_shape():
    assert _error({}).path == "model"
    assert _error({"model": {}}).path == "model.name_or_path"
    assert "table" in str(_error({"model": "x"}))


def test_strict_bools_and_strings():
    assert _error({**BASE, "data": {"pack_samples": "yes"}}).path == "data.pack_samples"
    assert _error({"model": {"name_or_path": 3}}).path == "model.name_or_path"


def test_choices_suggest():
    error = _error({"model": {"name_or_path": "m", "dtype": "bf17"}})
    assert error.path == "model.dtype" and "bf16" in str(error)


def test_cross_field_rules():
    error = _error({**BASE, "checkpoint": [{"type": "huggingface", "auto_resume": True}]})
    assert error.path == "checkpoint[0].auto_resume"
    assert _error({**BASE, "eval_interval": 10}).path == "eval_interval"
    assert _error({**BASE, "data": {"train_eval_split": [0.9, 0.2]}}).path == "data.train_eval_split"
    two = [{"type": "deepspeed", "auto_resume": True}] * 2
    assert _error({**BASE, "checkpoint": two}).path == "checkpoint"


def test_human_numbers_and_aliases():
    config = structure(
        {
            **BASE,
            "data": {"max_length": "4Ki"},
            "train_iters": "1_000",
            "optimizer": {"learning_rate": "3e-4"},
            "scheduler": {"warmup_ratio": "5%"},
            "model": {"name_or_path": "m", "dtype": "bfloat16"},
        },
        TrainerConfig,
    )
    assert config.data.max_length == 4096
    assert config.train_iters == 1000
    assert config.optimizer.lr == pytest.approx(3e-4)
    assert config.scheduler.warmup_ratio == pytest.approx(0.05)
    assert config.model.dtype == "bf16"
    assert (
        _error({**BASE, "optimizer": {"lr": 1e-3, "learning_rate": 1e-3}}).path == "optimizer.learning_rate"
    )


@pytest.mark.parametrize(
    ("text", "name", "split"),
    [
        ("HuggingFaceH4/ultrachat_200k:train_sft[:20]", "HuggingFaceH4/ultrachat_200k", "train_sft[:20]"),
        ("org/data", "org/data", None),
        ("./local/file.jsonl", "./local/file.jsonl", None),
        ("d:test[10%:]", "d", "test[10%:]"),
    ],
)
def test_source_strings(text, name, split):
    source = SourceConfig.from_string(text)
    assert (source.name_or_path, source.split) == (name, split)


def test_overrides():
    data = {"data": {"sources": ["a/b:train_sft[:5]", {"name_or_path": "c"}]}}
    apply_overrides(
        data,
        [
            "optimizer.lr=3e-4",
            "data.sources[0].split=train",
            "data.sources[1].sample_count=10",
            "model.name_or_path=some/path:with colon",
            "deepspeed.zero_optimization={stage = 3}",
            "data.sources[2]=extra",
        ],
    )
    assert data["optimizer"]["lr"] == 3e-4
    assert data["data"]["sources"][0] == {"name_or_path": "a/b", "split": "train"}
    tail = apply_overrides(
        {"data": {"sources": ["org/ds:test_sft[:5]"]}}, ["data.sources[0].name_or_path=/x"]
    )
    assert tail["data"]["sources"][0] == {"name_or_path": "/x", "split": "test_sft[:5]"}
    assert data["data"]["sources"][1]["sample_count"] == 10
    assert data["data"]["sources"][2] == "extra"
    assert data["model"]["name_or_path"] == "some/path:with colon"
    assert data["deepspeed"]["zero_optimization"] == {"stage": 3}
    for bad in ["nokey", "data.sources[9].split=x", "a..b=1"]:
        with pytest.raises(RecipeError):
            apply_overrides({"data": {"sources": []}}, [bad])


def test_toml_and_yaml_give_the_same_config(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text(
        textwrap.dedent("""
        type = "demo"
        micro_batch_size = 2
        [model]
        name_or_path = "m"
        [data]
        sources = ["org/ds:train[:20]"]
        max_length = "2Ki"
        [[checkpoint]]
        type = "huggingface"
        save_end_of_training = true
    """)
    )
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text(
        textwrap.dedent("""
        type: demo
        micro_batch_size: 2
        model:
          name_or_path: m
        data:
          sources: ["org/ds:train[:20]"]
          max_length: 2Ki
        checkpoint:
          - type: huggingface
            save_end_of_training: true
    """)
    )
    assert load_recipe(toml).config == load_recipe(yaml_path).config


def test_yaml_duplicate_keys_are_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  name_or_path: a\nmodel:\n  name_or_path: b\n")
    with pytest.raises(RecipeError, match="twice"):
        read_recipe(path)


def test_invalid_toml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nname_or_path = \n")
    with pytest.raises(RecipeError) as info:
        read_recipe(path)
    assert "bad.toml" in str(info.value) and "line 2" in str(info.value)


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_render_round_trips(tmp_path, fmt):
    recipe = tmp_path / "r.toml"
    recipe.write_text('type = "demo"\n[model]\nname_or_path = "m"\n[data]\nsources = ["a:train"]\n')
    config = load_recipe(recipe, ["optimizer.lr=3e-4"]).config
    shown = render(config, fmt)
    again = tmp_path / f"again.{fmt}"
    again.write_text(shown)
    assert render(load_recipe(again).config, fmt) == shown
    assert load_recipe(again).config == config


def test_unknown_type_lists_installed_types(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('type = "dmeo"\n[model]\nname_or_path = "m"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert info.value.path == "type"
    assert "demo" in str(info.value) and "did you mean 'demo'" in str(info.value)


def test_method_config_extends_core(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('type = "demo"\n[model]\nname_or_path = "m"\n[demo]\nrepeat = 3\n')
    config = load_recipe(recipe).config
    assert config.demo.repeat == 3
    assert type(config).__name__ == "DemoConfig"
    recipe.write_text('type = "demo"\n[model]\nname_or_path = "m"\n[demo]\nrepeet = 3\n')
    with pytest.raises(RecipeError, match=r"demo\.repeet.*'repeat'"):
        load_recipe(recipe)


def test_run_folder_defaults_to_recipe_stem(tmp_path):
    recipe = tmp_path / "my-run.toml"
    recipe.write_text('type = "demo"\n[model]\nname_or_path = "m"\n')
    config = load_recipe(recipe).config
    assert config.logger.output_dir == "runs/my-run"
    assert config.metrics_path == "runs/my-run/metrics.jsonl"


def test_recipe_reference_in_docs_is_current():
    from pathlib import Path

    from arctic_core.recipe.docs import embed

    page = Path(__file__).parents[3] / "docs" / "recipes.md"
    text = page.read_text()
    assert embed(text) == text, "run: python -m arctic_core.recipe.docs --write docs/recipes.md"
