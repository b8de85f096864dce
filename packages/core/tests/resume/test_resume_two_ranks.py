"""Resuming with two real CPU ranks (`--num_gpus 2`, gloo): ZeRO-2, packed data, two loader workers per rank.

The run packs generated chat data (the real DataFactory) into 16 rows: 4 optimizer steps per epoch
(micro-batch 1, accumulation 2, 2 ranks), 2 epochs, a `deepspeed` checkpoint every 3 steps. Both
ranks SIGKILL themselves after step 5; the rerun resumes from step 3, redoes steps 4 (the end of
epoch 0) and 5, and must reproduce the uninterrupted run's metrics bit for bit. The checkpoint it
leaves, written by 2 ranks, is then refused by a 1-rank run (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from resume_support import arctic_train, explain, metrics, write_recipe

from arctic_core.testing import datasets

pytest_plugins = ["arctic_core.testing.fixtures"]

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
TWO_RANKS = {"mbs": 1, "pack": "true", "workers": 2, "every": 3, "stage": 2}


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data = datasets.write_dataset(tmp_path_factory.mktemp("data2") / "chat.jsonl", "chat", n=24, seed=0)
    folders = {}
    for name in ("reference", "killed"):
        folders[name] = tmp_path_factory.mktemp(name)
        write_recipe(folders[name], model=tiny_model_dir, data=data, **TWO_RANKS)
    return folders


@pytest.fixture(scope="module")
def reference(runs: dict[str, Path]) -> list[dict]:
    result = arctic_train(runs["reference"] / "recipe.toml", ranks=2)
    assert result.returncode == 0, explain(result)
    records = metrics(runs["reference"] / "run")
    assert [r["epoch"] for r in records] == [0, 0, 0, 0, 1, 1, 1, 1]
    return records


@pytest.fixture(scope="module")
def resumed(runs: dict[str, Path]) -> Path:
    recipe = runs["killed"] / "recipe.toml"
    killed = arctic_train(recipe, ranks=2, env={"ARCTIC_TEST_KILL_AT_STEP": "5"})
    assert killed.returncode != 0, explain(killed)
    run = recipe.parent / "run"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (run / "checkpoints/deepspeed").iterdir()) == ["global_step_3"]
    again = arctic_train(recipe, ranks=2)
    assert again.returncode == 0, explain(again)
    assert "global_step_3 at step 3 (epoch 0, 3 of its 4 steps done)" in again.stderr
    return run


def test_two_ranks_zero2_packed_with_workers_resume_exactly(resumed, reference):
    assert metrics(resumed) == reference
    final = resumed / "checkpoints/deepspeed/global_step_8"
    assert json.loads((final / "arctic_state.json").read_text())["world_size"] == 2
    assert {p.name for p in (final / "rng").iterdir()} == {"rank_0.pt", "rank_1.pt"}


def test_resuming_on_another_number_of_ranks_is_refused(resumed):
    result = arctic_train(resumed.parent / "recipe.toml", ranks=1)
    assert result.returncode == 2, explain(result)
    message = result.stderr
    assert "checkpoint[0].auto_resume" in message and "written by 2 rank(s)" in message and "has 1" in message
    assert "Traceback" not in message
