"""Crash safety and resuming on one rank, with real processes (`python -m arctic_core train`).

The recipe (resume_support.RECIPE) trains the tiny Llama in fp32 for 2 epochs of 6 optimizer
steps on generated chat data through the real data pipeline, with a `deepspeed` checkpoint
every 4 steps (`auto_resume`, `keep_last_n = 2`, `save_end_of_training`). Every restart is the
same command; its metrics must equal the uninterrupted run's, line for line, bit for bit. One
run killed after step 7 (`killed_at_7`) is copied for the tests that resume from it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from resume_support import arctic_train, explain, metrics, start_train, write_recipe

pytest_plugins = ["arctic_core.testing.fixtures"]

pytestmark = pytest.mark.slow
STEPS, STEPS_PER_EPOCH = 12, 6


@pytest.fixture(scope="module")
def reference(one_rank_run: Path) -> list[dict]:
    """The uninterrupted run's metrics lines (timings left out); the run is conftest's `one_rank_run`."""
    records = metrics(one_rank_run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert sum(r["epoch"] == 0 for r in records) == STEPS_PER_EPOCH
    assert records[-1]["loss"] < records[0]["loss"]
    return records


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints" / "deepspeed").iterdir())


@pytest.fixture(scope="module")
def killed_at_7(tiny_model_dir, chat_data, tmp_path_factory, reference) -> Path:
    """A run SIGKILLed right after step 7 (its last checkpoint: step 4); tests resume copies of it."""
    folder = tmp_path_factory.mktemp("killed")
    killed = arctic_train(
        write_recipe(folder, model=tiny_model_dir, data=chat_data), env={"ARCTIC_TEST_KILL_AT_STEP": "7"}
    )
    assert killed.returncode == -signal.SIGKILL, explain(killed)
    assert metrics(folder / "run") == reference[:7]
    assert checkpoints(folder / "run") == ["global_step_4"]
    return folder / "run"


def copy_of(killed: Path, folder: Path, model: Path, data: Path) -> Path:
    """The killed run's folder copied under `folder`, with the same recipe pointing at it."""
    shutil.copytree(killed, folder / "run")
    return write_recipe(folder, model=model, data=data)


def test_sigkill_between_checkpoints_then_rerun_continues_exactly(
    tiny_model_dir, chat_data, tmp_path, reference, killed_at_7
):
    recipe = copy_of(killed_at_7, tmp_path, tiny_model_dir, chat_data)
    run = tmp_path / "run"
    resumed = arctic_train(recipe)  # steps 5..7 are redone, across the end of epoch 0
    assert resumed.returncode == 0, explain(resumed)
    assert (
        "resumed from" in resumed.stderr and "global_step_4 at step 4 (epoch 0, 4 of its 6" in resumed.stderr
    )
    assert metrics(run) == reference
    assert checkpoints(run) == ["global_step_12", "global_step_8"]  # keep_last_n = 2
    state = json.loads((run / "checkpoints/deepspeed/global_step_12/arctic_state.json").read_text())
    assert state["world_size"] == 1 and state["global_step"] == STEPS


def test_kill_inside_checkpoint_writing_keeps_the_previous_one(
    tiny_model_dir, chat_data, tmp_path, reference
):
    recipe = write_recipe(tmp_path, model=tiny_model_dir, data=chat_data)
    run = tmp_path / "run"
    killed = arctic_train(recipe, env={"ARCTIC_TEST_FAULT": "checkpoint-write@8"})
    assert killed.returncode == -signal.SIGKILL, explain(killed)
    half = run / "checkpoints/deepspeed/.global_step_8.incomplete"
    assert (half / "state").is_dir() and not (half / "arctic_state.json").exists()
    assert checkpoints(run) == [".global_step_8.incomplete", "global_step_4"]

    resumed = arctic_train(recipe)
    assert resumed.returncode == 0, explain(resumed)
    assert "global_step_4 at step 4" in resumed.stderr
    assert metrics(run) == reference
    assert checkpoints(run) == ["global_step_12", "global_step_8"]


def test_sigterm_stops_after_the_step_with_a_checkpoint(tiny_model_dir, chat_data, tmp_path, reference):
    recipe = write_recipe(tmp_path, model=tiny_model_dir, data=chat_data)
    run = tmp_path / "run"
    process = start_train(recipe, {"ARCTIC_TEST_STEP_SLEEP": "0.5"})
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").is_file() and len(metrics(run)) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-4000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    done = len(metrics(run))
    assert 2 <= done < STEPS and metrics(run) == reference[:done]
    assert f"arctic: stopped: SIGTERM: stopped after step {done}" in stderr
    assert "Traceback" not in stderr
    state = json.loads((run / f"checkpoints/deepspeed/global_step_{done}/arctic_state.json").read_text())
    assert state["global_step"] == done


def _fingerprints(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_nan_loss_exits_1_and_leaves_the_last_good_checkpoint(
    tiny_model_dir, chat_data, tmp_path, reference, killed_at_7
):
    recipe = copy_of(killed_at_7, tmp_path, tiny_model_dir, chat_data)
    run = tmp_path / "run"
    good = run / "checkpoints/deepspeed/global_step_4"
    before = _fingerprints(good)

    failed = arctic_train(recipe, env={"ARCTIC_TEST_NAN_AT_STEP": "6"})  # resumes at 4, step 6 is NaN
    assert failed.returncode == 1, explain(failed)
    assert "step 6: the loss is nan" in failed.stderr and "Traceback" not in failed.stderr
    assert _fingerprints(good) == before
    assert checkpoints(run) == ["global_step_4"]  # no end-of-training or stop save after the NaN
    assert metrics(run) == reference[:5]


def test_resume_refuses_a_recipe_that_changes_the_data_order_unless_allowed(
    tiny_model_dir, chat_data, tmp_path, killed_at_7
):
    recipe = copy_of(killed_at_7, tmp_path, tiny_model_dir, chat_data)
    write_recipe(tmp_path, model=tiny_model_dir, data=chat_data, mbs=1, workers=1)  # same folder, new recipe
    changed = recipe.read_text().replace("seed = 7", "seed = 8")
    recipe.write_text(changed)
    run = tmp_path / "run"
    before = (run / "metrics.jsonl").read_text()

    refused = arctic_train(recipe)
    assert refused.returncode == 2, explain(refused)
    assert "checkpoint[0].auto_resume" in refused.stderr and "Traceback" not in refused.stderr
    assert "other micro_batch_size, seed;" in refused.stderr  # not data.dl_num_workers: loading speed only
    assert (run / "metrics.jsonl").read_text() == before  # nothing of the run was touched

    recipe.write_text(
        changed.replace("auto_resume = true", "auto_resume = true\nallow_recipe_changes = true")
    )
    allowed = arctic_train(recipe)
    assert allowed.returncode == 0, explain(allowed)
    assert "resumed from" in allowed.stderr and "global_step_4 at step 4" in allowed.stderr
