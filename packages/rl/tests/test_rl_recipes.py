"""The Text2SQL recipe trains a few steps here on the tiny policy (its reward stays 0: it cannot write SQL)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from rl_support import QUICKSTART, REPO

from arctic_core.evals import left_padded
from arctic_core.recipe import load_recipe
from arctic_core.testing import read_metrics
from arctic_rl.data import decode

RECIPES = REPO / "packages/rl/recipes"


@pytest.mark.slow
def test_text2sql_recipe_runs_two_steps_on_cpu_and_leaves_its_database_alone(tmp_path):
    database = RECIPES / "text2sql/shop.sqlite"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    sets = [
        f"model.name_or_path={QUICKSTART / 'policy'}",
        "model.dtype=fp32",
        "max_completion_length=16",
        "train_iters=2",
        "micro_batch_size=2",
        "num_generations=4",
        f"logger.output_dir={tmp_path / 'run'}",
        "checkpoint=[]",
        "logger.progress_bar=false",
    ]
    loaded = load_recipe(RECIPES / "text2sql.toml", sets)
    trainer = loaded.trainer_class()(loaded.config)
    trainer.train()
    records = read_metrics(trainer.config.metrics_path)
    assert [r["step"] for r in records] == [1, 2]
    for key in ("rewards/sql_execution/mean", "rewards/answer_format/mean", "rollout_seconds", "entropy"):
        assert key in records[-1]
    rows = [decode(row) for row in trainer.train_dataset]
    assert all(row["db_path"] == str(database) for row in rows)  # relative to the data file
    summary = json.loads((Path(trainer.config.run_dir) / "data_summary.json").read_text())
    prompt_tokens = left_padded(trainer.tokenizer, [row["prompt"] for row in rows], 0)["attention_mask"].sum()
    assert summary["train"]["samples"] == len(rows) and summary["train"]["tokens"] == int(prompt_tokens)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before
    assert (tmp_path / "run" / "rl_eval.jsonl").is_file()  # held-out rewards before and after


def test_arctic_rl_takes_grpo_recipes_and_lists_them_by_name():
    """`arctic rl train quickstart` (the issue's CLI) runs the bundled `type = "grpo"` recipes; other
    methods' recipes are still refused, and ArcticTraining's `biencoder` name lists embed's recipes."""
    from arctic_core.errors import RecipeError
    from arctic_core.recipe.bundled import find_recipe, method_recipes
    from arctic_core.recipe.loader import resolve_type

    assert {"quickstart", "text2sql"} <= set(method_recipes("rl"))
    assert find_recipe("quickstart", "rl") == str(RECIPES / "quickstart.toml")
    resolve_type("grpo", "quickstart.toml", method="rl")  # no error: rl is another name of grpo
    with pytest.raises(RecipeError, match="the recipe's type is 'sft'"):
        resolve_type("sft", "recipe.toml", method="rl")
    assert "quickstart" in method_recipes("biencoder")
    # a file listed under both names of one method is one recipe, not an ambiguity
    assert find_recipe("e5-base-unsupervised") == str(
        REPO / "packages/embed/recipes/e5-base-unsupervised.toml"
    )
