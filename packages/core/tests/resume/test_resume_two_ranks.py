"""Resuming with two real CPU ranks (`--num_gpus 2`, gloo): ZeRO-2, packed data, two loader workers per rank.

The run packs generated chat data (the real DataFactory) into 16 rows: 4 optimizer steps per epoch
(micro-batch 1, accumulation 2, 2 ranks), 2 epochs, a `deepspeed` checkpoint every 3 steps. Both
ranks SIGKILL themselves after step 5; the rerun resumes from step 3, redoes steps 4 (the end of
epoch 0) and 5, and must reproduce the uninterrupted run's metrics bit for bit. The checkpoint it
leaves, written by 2 ranks, is then refused by a 1-rank run (exit 2).

The uninterrupted reference runs as two nodes on one machine (DeepSpeed's launcher once per node,
one rank each), which saves a launch: its steps 1-5 must equal, bit for bit, those the one-node
`--num_gpus 2` run logged before it was killed (two nodes train as one node with two ranks), and
all 8 must equal the resumed run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def train_as_two_nodes(recipe: Path) -> None:
    """Issue 24 item 8: DeepSpeed's launcher once per node (`--no_ssh --node_rank`), a hostfile of two
    nodes with one slot each, both on this machine."""
    from arctic_core.engine.distributed import free_port

    hostfile = recipe.parent / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    launcher = ["--num_nodes", "2", "--num_gpus", "1", "--no_ssh", "--hostfile", str(hostfile)]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ARCTIC_TEST_")},
        "OMP_NUM_THREADS": "1",
    }
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "arctic_core", "train", str(recipe), *launcher, "--node_rank", str(rank)],
            env=env,
            cwd=recipe.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)


@pytest.fixture(scope="module")
def reference(runs: dict[str, Path]) -> list[dict]:
    """The uninterrupted run's metrics, trained as two one-rank nodes on this machine."""
    train_as_two_nodes(runs["reference"] / "recipe.toml")
    records = metrics(runs["reference"] / "run")
    assert [r["epoch"] for r in records] == [0, 0, 0, 0, 1, 1, 1, 1]
    return records


@pytest.fixture(scope="module")
def killed(runs: dict[str, Path]) -> list[dict]:
    """The one-node `--num_gpus 2` run, killed after step 5: the metrics it logged."""
    recipe = runs["killed"] / "recipe.toml"
    result = arctic_train(recipe, ranks=2, env={"ARCTIC_TEST_KILL_AT_STEP": "5"})
    assert result.returncode != 0, explain(result)
    run = recipe.parent / "run"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (run / "checkpoints/deepspeed").iterdir()) == ["global_step_3"]
    return metrics(run)


@pytest.fixture(scope="module")
def resumed(runs: dict[str, Path], killed: list[dict]) -> Path:
    recipe = runs["killed"] / "recipe.toml"
    again = arctic_train(recipe, ranks=2)
    assert again.returncode == 0, explain(again)
    assert "global_step_3 at step 3 (epoch 0, 3 of its 4 steps done)" in again.stderr
    return recipe.parent / "run"


def test_two_nodes_on_one_machine_train_as_one_node_with_two_ranks(killed, reference):
    """The per-step metrics of two one-rank nodes equal the one-node two-rank run's, bit for bit."""
    assert killed == reference[:5]


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


def test_several_nodes_without_a_hostfile_exit_2_with_the_fix(runs, capsys):
    from arctic_core.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(runs["killed"] / "recipe.toml"), "--num_nodes", "2", "--num_gpus", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "--num_nodes 2 needs a hostfile" in err and "--no_ssh --node_rank" in err
