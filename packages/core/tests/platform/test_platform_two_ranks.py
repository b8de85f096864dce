"""Core's extension points used by methods defined here, on two real CPU ranks (`--num_gpus 2`, gloo).

- A two-tower contrastive method on pre-batched data (no `input_ids`): 2 ranks x 4 queries give
  the same losses, accuracies and weights as 1 rank x 8 (the gradient flows through the gathered
  documents to the rank that embedded them), and a run killed after step 3 resumes from its step-2
  checkpoint to the uninterrupted run's metrics, bit for bit (the pre-batched loader's own state).
  Splitting stored batches into accumulation micro-batches, and resuming inside them, is checked
  without processes in test_loaders.py.
- A sequence-parallel size of 2 on 2 ranks: both ranks receive identical batches, the loss split
  between them reduces to the one-rank loss, and the steps equal a one-rank run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_core.testing import datasets

pytest_plugins = ["arctic_core.testing.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SUPPORT = Path(__file__).with_name("platform_support.py")
TIMING = {"seconds", "tokens_per_s", "peak_memory_gb", "tflops", "mfu", "grad_norm"}

CONTRASTIVE = """
type = "contrastive_test"
code = "{code}"
micro_batch_size = 1
gradient_accumulation_steps = {gas}
epochs = 2
seed = 5
eval_interval = 3

[model]
name_or_path = "two-towers"
dtype = "fp32"

[data]
sources = ["unused"]
eval_sources = ["unused"]

[optimizer]
lr = 0.05

[logger]
output_dir = "{out}"
progress_bar = false

[[checkpoint]]
type = "deepspeed"
auto_resume = true
save_every_n_steps = 2
"""

SEQUENCE_PARALLEL = """
type = "sp_test"
code = "{code}"
micro_batch_size = 2
gradient_accumulation_steps = 2
train_iters = 3
seed = 3

[model]
name_or_path = "{model}"
dtype = "fp32"

[data]
sources = ["{data}"]
max_length = 96
div_length = 16
num_proc = 1
dl_num_workers = 0

[optimizer]
lr = 3e-3

[logger]
output_dir = "{out}"
progress_bar = false
"""


def _train(folder: Path, text: str, *, ranks: int, env: dict[str, str] | None = None):
    """`python -m arctic_core train recipe.toml [--num_gpus 2]` as a real process, in the recipe's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.toml"
    recipe.write_text(text.format(code=SUPPORT, out=folder / "run"))
    command = [sys.executable, "-m", "arctic_core", "train", str(recipe)]
    if ranks > 1:
        command += ["--num_gpus", str(ranks)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARCTIC_TEST_")}
    return subprocess.run(
        command,
        env={**clean, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


def _metrics(folder: Path) -> list[dict]:
    lines = (folder / "run" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _record(folder: Path, name: str, rank: int) -> list:
    path = folder / "run" / "record" / f"{name}_rank_{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def contrastive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contrastive")
    runs = {
        "one": (CONTRASTIVE.replace("{gas}", "1"), 1, None),
        "two": (CONTRASTIVE.replace("{gas}", "1"), 2, None),
        "killed": (CONTRASTIVE.replace("{gas}", "1"), 2, {"ARCTIC_TEST_KILL_AT_STEP": "3"}),
    }
    for name, (text, ranks, env) in runs.items():
        result = _train(root / name, text, ranks=ranks, env=env)
        assert (result.returncode != 0) == (name == "killed"), explain(result)
    resumed = _train(root / "killed", runs["killed"][0], ranks=2)
    assert resumed.returncode == 0, explain(resumed)
    assert "resumed from" in resumed.stderr and "at step 2" in resumed.stderr
    return {name: root / name for name in runs}


def test_contrastive_two_ranks_equal_one_rank_of_the_global_batch(contrastive):
    one, two = _metrics(contrastive["one"]), _metrics(contrastive["two"])
    assert len(one) == len(two) == 12 and "tokens" in one[0] and one[0]["tokens"] == 0
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "accuracy", "eval_loss", "eval_accuracy"):
            assert (key in a) == (key in b)
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=2e-6), (key, a["step"])
    assert one[-1]["loss"] < one[0]["loss"] - 0.5  # it learns
    assert "eval_perplexity" not in one[2] and "eval_accuracy" in one[2]


def test_contrastive_ranks_get_their_share_of_each_stored_batch(contrastive):
    ranks = [_record(contrastive["two"], "queries", r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6 * 2  # micro-batches: 1 per step, 6 steps, 2 epochs
    assert not set(ranks[0]) & set(ranks[1])  # disjoint shares


def test_contrastive_resumes_exactly_from_the_loader_state(contrastive):
    reference, resumed = _metrics(contrastive["two"]), _metrics(contrastive["killed"])
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert resumed == reference
    state = contrastive["killed"] / "run" / "checkpoints" / "deepspeed" / "global_step_12" / "loader"
    assert json.loads((state / "rank_1.json").read_text()) == {"epoch": 1, "micro_batches": 6}


@pytest.fixture(scope="module")
def sequence_parallel(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sp")
    data = datasets.write_dataset(root / "chat.jsonl", "chat", n=24, seed=0)
    text = SEQUENCE_PARALLEL.replace("{model}", str(tiny_model_dir)).replace("{data}", str(data))
    folders = {}
    for name, ranks, sp in (("sp2", 2, "2"), ("one", 1, "1")):
        result = _train(root / name, text, ranks=ranks, env={"ARCTIC_TEST_SP": sp})
        assert result.returncode == 0, explain(result)
        folders[name] = root / name
    return folders


def test_sequence_parallel_ranks_see_the_same_batches_and_reduce_to_one_rank(sequence_parallel):
    sp2 = sequence_parallel["sp2"]
    seen = [_record(sp2, "batches", r) for r in (0, 1)]
    assert len(seen[0]) == 6 and seen[0] == seen[1]  # 3 steps x 2 micro-batches, identical on both
    assert seen[0] == _record(sequence_parallel["one"], "batches", 0)  # the one-rank run's samples
    split, whole = _metrics(sp2), _metrics(sequence_parallel["one"])
    for a, b in zip(split, whole, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["trainable_tokens"] == b["trainable_tokens"]
    log = (sp2 / "run" / "logs" / "rank_0.log").read_text()
    assert "2 rank(s) (1 data-parallel x 2 sequence-parallel)" in log
