"""The bundled synth-tiny recipe end to end, shrunk: generate, clean, fine-tune on the result."""

from __future__ import annotations

import json

import pytest

from arctic_core.recipe import bundled_recipes
from arctic_core.testing import arctic, read_metrics

RECIPE = bundled_recipes("arctic_sft") / "synth-tiny.toml"
SHRINK = ["generate.max_prompts=16", "generate.shard_size=8", "generate.max_tokens=4"]


@pytest.mark.slow
def test_synth_tiny_generates_cleans_and_fine_tunes(tmp_path, monkeypatch):
    from arctic_core.recipe import load_recipe
    from arctic_core.synth.clean import run_clean
    from arctic_core.synth.generate import run_generate

    monkeypatch.chdir(tmp_path)
    config = load_recipe(RECIPE, SHRINK).config
    run_generate(config, log=lambda _: None)
    rows = [
        json.loads(line)
        for p in sorted((tmp_path / "synthetic-data").glob("shard-*.jsonl"))
        for line in p.open()
    ]
    assert len(rows) == 32 and all(r["messages"][-1]["role"] == "assistant" for r in rows)  # n = 2 each
    report = run_clean(config, log=lambda _: None)
    assert report["input_rows"] == 32 and [s["step"] for s in report["steps"]] == [
        "exact",
        "near",
        "length",
        "decontaminate",
    ]
    kept = (tmp_path / "clean-data" / "data.jsonl").read_text().splitlines()
    assert len(kept) == report["kept_rows"] > 0
    arctic("train", str(RECIPE), "--set", "train_iters=2", "--set", "micro_batch_size=4", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "runs" / "synth-tiny" / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
