"""`arctic rl eval`: greedy rewards agree with core's held-out exact-match accuracy; pass@k is consistent."""

from __future__ import annotations

import json

import pytest
from rl_support import QUICKSTART, REPO, recipe, write_prompts

from arctic_core.config import GenerationEvalConfig
from arctic_core.engine.checkpoint import stop_token_ids
from arctic_core.engine.model import build_model
from arctic_core.evals import generation_accuracy, read_references
from arctic_core.recipe import load_recipe
from arctic_core.testing import arctic
from arctic_rl.evaluate import run


def test_greedy_reward_is_core_exact_match_accuracy_and_pass_at_k_bounds_it(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join((QUICKSTART / "heldout.jsonl").read_text().splitlines()[:24]) + "\n")
    config = load_recipe(
        None, data=recipe(heldout, tmp_path / "run", max_completion_length=8, reward_funcs=["exact_match"])
    ).config
    results = run(config, heldout, samples=4, threshold=1.0)
    model = build_model(config.model, {}, seed=0)
    from arctic_core.data import load_tokenizer

    tokenizer = load_tokenizer(config)
    settings = GenerationEvalConfig(path=str(heldout))
    correct, total = generation_accuracy(
        model,
        tokenizer,
        read_references(settings),
        stop_ids=stop_token_ids(model.config, model.generation_config, tokenizer),
        max_new_tokens=8,
        batch_size=8,
    )
    assert results["prompts"] == total == 24
    assert results["reward"] == correct / total == results["rewards/exact_match"]
    assert 0 < results["pass@4"] <= 1 and results["sampled_reward"] <= results["pass@4"]


@pytest.mark.slow
def test_cli_writes_its_table(tmp_path):
    out, prompts = tmp_path / "eval.json", write_prompts(tmp_path / "prompts.jsonl", 8)
    text = arctic(
        "rl",
        "eval",
        str(REPO / "packages/rl/recipes/quickstart.toml"),
        "--set",
        "max_completion_length=8",
        "--prompts",
        str(prompts),
        "--output",
        str(out),
        "--set",
        f"logger.output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert "reward" in text and json.loads(out.read_text())["prompts"] == 8
