"""`arctic speculator generate`: prompts as ArcticTraining cuts them, killed + rerun = uninterrupted, ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_core.recipe import bundled_recipes, load_recipe

PIPELINE = bundled_recipes("arctic_speculator") / "tiny-pipeline.toml"
SMALL = ["generate.max_prompts=40", "generate.shard_size=8", "generate.batch_size=4", "generate.max_tokens=6"]


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def shards(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("shard-*.jsonl"))}


def test_chunks_are_the_templated_conversation_cut_into_equal_prompts(tiny_tokenizer):
    import attrs

    from arctic_speculator.generate import conversation_prompts

    config = load_recipe(PIPELINE, ["generate.prompts=chunks", "generate.gen_prompt_length=8"]).config
    messages = [
        {"role": "user", "content": "What is 1 + 2?"},
        {"role": "assistant", "content": "1 + 2 = 3"},
        {"role": "user", "content": "What is 4 - 1?"},
        {"role": "assistant", "content": "4 - 1 = 3"},
    ]
    ids = list(tiny_tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])
    chunks = conversation_prompts(messages, tiny_tokenizer, config.generate)
    assert chunks == [ids[i : i + 8] for i in range(0, len(ids) // 8 * 8, 8)] and len(chunks) >= 2
    turns = conversation_prompts(messages, tiny_tokenizer, attrs.evolve(config.generate, prompts="turns"))
    assert len(turns) == 2 and turns[1][: len(turns[0])] == turns[0]
    assert tiny_tokenizer.decode(turns[1]).rstrip().endswith("assistant")


def generate_here(folder: Path, *overrides: str, rank: int = 0, world: int = 1) -> dict[str, str]:
    from arctic_speculator.generate import run_generation

    config = load_recipe(PIPELINE, [*SMALL, f"generate.output_dir={folder}", *overrides]).config
    run_generation(config, rank, world, log=lambda _: None)
    return shards(folder)


@pytest.mark.slow
def test_killed_generation_rerun_equals_an_uninterrupted_run_and_ranks_share_the_shards(tmp_path):
    from arctic_core.errors import RecipeError

    expected = generate_here(tmp_path / "whole")
    assert len(expected) == 5  # 40 prompts, 8 per shard
    # a real process, SIGKILLed by the tests' fault injection (tests/fixtures/arctic-demo/src/
    # sitecustomize.py) as it starts batch 6: shards 0 and 1 done (2 batches of 4 each), shard 2 half
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "arctic_core",
            "speculator",
            "generate",
            str(PIPELINE),
            *sets(*SMALL, f"generate.output_dir={tmp_path / 'resumed'}"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ARCTIC_TEST_KILL_AT_BATCH": "6"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(shards(tmp_path / "resumed")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    partial = (tmp_path / "resumed" / ".shard-00002.jsonl.partial").read_text()
    assert partial.count("\n") == 4  # half a shard (its first batch of 4) was written
    logged: list[str] = []
    from arctic_speculator.generate import run_generation

    config = load_recipe(PIPELINE, [*SMALL, f"generate.output_dir={tmp_path / 'resumed'}"]).config
    run_generation(config, log=logged.append)
    assert logged[:2] == ["shard 0: done already", "shard 1: done already"] and logged[2].startswith(
        "shard 2: 8"
    )
    assert shards(tmp_path / "resumed") == expected

    generate_here(tmp_path / "ranks", rank=1, world=2)  # shards 1 and 3
    assert sorted(shards(tmp_path / "ranks")) == ["shard-00001.jsonl", "shard-00003.jsonl"]
    assert generate_here(tmp_path / "ranks", rank=0, world=2) == expected

    with pytest.raises(RecipeError, match="other settings") as refused:
        generate_here(tmp_path / "whole", "generate.max_tokens=7")
    assert refused.value.path == "generate.output_dir"


@pytest.mark.slow
def test_generated_rows_mask_the_prompt_and_training_reads_them_untokenized(trained):
    import json

    rows = [
        json.loads(line) for p in sorted((trained.root / "data").glob("shard-*.jsonl")) for line in p.open()
    ]
    assert len(rows) == 2048
    for row in rows[:50]:
        prompt = sum(1 for label in row["labels"] if label == -100)
        assert prompt > 0 and row["labels"][prompt:] == row["input_ids"][prompt:]
    metrics = (trained.root / "mlp" / "metrics.jsonl").read_text().splitlines()
    assert metrics and "head2_accuracy" in metrics[-1]


def test_vllm_backend_without_vllm_is_a_recipe_error_naming_the_key():
    from arctic_core.errors import RecipeError
    from arctic_speculator.generate import use_vllm

    config = load_recipe(PIPELINE, ["generate.backend=vllm"]).config
    with pytest.raises(RecipeError, match="vllm") as refused:
        use_vllm(config.generate)
    assert refused.value.path == "generate.backend"


# sha256 of the shards the speculator's own generate wrote for SMALL (turns) before it moved onto
# core's pipeline (commit d5d727d): `arctic data generate` must write the same bytes for the same seed
OLD_OUTPUT = "03808f085a84d65f6d87e363e8a2bb1a3f53617c8cca7e4d0337daf47e9895d6"


def test_arctic_data_generate_writes_the_speculators_old_output_for_the_same_seed(tmp_path):
    import hashlib

    from click.testing import CliRunner

    from arctic_core.cli import cli

    folder = tmp_path / "data"
    result = CliRunner().invoke(
        cli, ["data", "generate", str(PIPELINE), *sets(*SMALL, f"generate.output_dir={folder}")]
    )
    assert result.exit_code == 0, result.output
    written = b"".join(p.read_bytes() for p in sorted(folder.glob("shard-*.jsonl")))
    assert len(shards(folder)) == 5 and hashlib.sha256(written).hexdigest() == OLD_OUTPUT
