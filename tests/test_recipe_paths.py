"""Relative input paths in a recipe are read from the recipe file's folder, from any working directory."""

from __future__ import annotations

import json
from pathlib import Path

from arctic_core.recipe import bundled_recipes, load_recipe

REPO = Path(__file__).resolve().parents[1]

RECIPE = """
type = "demo"
code = "extra.py"

[model]
name_or_path = "model"

[tokenizer]
chat_template = "template.jinja"

[data]
sources = ["train.jsonl", "data:train", "HuggingFaceTB/smoltalk:all", {{ name_or_path = "more.jsonl" }}]
eval_sources = ["missing.jsonl"]

[generation_eval]
path = "heldout.jsonl"

[deepspeed]
path = "model"
"""


def write_recipe_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "data").mkdir()
    for name in ("train.jsonl", "more.jsonl", "heldout.jsonl"):
        (folder / name).write_text(json.dumps({"text": "hi"}) + "\n")
    (folder / "template.jinja").write_text("{{ messages }}")
    (folder / "extra.py").write_text("LOADED = True\n")
    recipe = folder / "recipe.toml"
    recipe.write_text(RECIPE.format())
    return recipe


def test_relative_inputs_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    write_recipe_folder(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_recipe(Path("..") / "recipes" / "recipe.toml").config  # a relative recipe path too
    assert config.code == str(folder / "extra.py")
    assert config.model.name_or_path == str(folder / "model")
    assert config.tokenizer.chat_template == str(folder / "template.jinja")
    sources = [(s.name_or_path, s.split) for s in config.data.sources]
    assert sources == [
        (str(folder / "train.jsonl"), None),
        (str(folder / "data"), "train"),
        ("HuggingFaceTB/smoltalk", "all"),  # a hub id: nothing of that name beside the recipe
        (str(folder / "more.jsonl"), None),
    ]
    assert config.data.eval_sources[0].name_or_path == "missing.jsonl"  # kept as given
    assert config.generation_eval.path == str(folder / "heldout.jsonl")
    assert config.deepspeed == {"path": "model"}  # passed through to DeepSpeed untouched
    assert config.logger.output_dir == "runs/recipe"  # outputs stay relative to the working directory


def test_set_overrides_stay_relative_to_the_working_directory(tmp_path, monkeypatch):
    recipe = write_recipe_folder(tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    config = load_recipe(recipe, ["model.name_or_path=model", "generation_eval.path=heldout.jsonl"]).config
    assert config.model.name_or_path == "model"
    assert config.generation_eval.path == "heldout.jsonl"


def test_bundled_quickstart_resolves_the_same_from_anywhere(tmp_path, monkeypatch):
    folder = bundled_recipes("arctic_sft")
    assert (folder / "quickstart.toml").is_file()
    monkeypatch.chdir(REPO)
    from_root = load_recipe("packages/sft/recipes/quickstart.toml").config  # the README's command
    monkeypatch.chdir(tmp_path)
    from_elsewhere = load_recipe(folder / "quickstart.toml").config
    assert from_root == from_elsewhere
    assert Path(from_root.model.name_or_path, "config.json").is_file()
    assert Path(from_root.data.sources[0].name_or_path).is_file()
    assert Path(from_root.generation_eval.path).is_file()
