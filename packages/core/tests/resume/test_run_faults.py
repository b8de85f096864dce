"""Issue 24, items 3 and 7, with real processes: two runs into one folder, SIGTERM while tokenizing.

Both use resume_support's recipe (the tiny Llama, generated chat data, 12 optimizer steps).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from resume_support import arctic_train, explain, metrics, start_train, write_recipe

from arctic_core.engine.runlock import LOCK_FILE, RunLock, read_lock
from arctic_core.testing import datasets

pytest_plugins = ["arctic_core.testing.fixtures"]


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return datasets.write_dataset(tmp_path_factory.mktemp("faults-data") / "chat.jsonl", "chat", n=24, seed=0)


def wait_for(condition, process: subprocess.Popen[str], seconds: float = 240) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-4000:]
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_exits_2_naming_the_first(tiny_model_dir, chat_data, tmp_path):
    recipe = write_recipe(tmp_path, model=tiny_model_dir, data=chat_data)
    run = tmp_path / "run"
    first = start_train(recipe, {"ARCTIC_TEST_STEP_SLEEP": "3"})  # 12 steps: slower than the second's start
    wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 1, first)

    second = arctic_train(recipe)
    assert second.returncode == 2, explain(second)
    assert f"is in use by another run: pid {first.pid} on " in second.stderr, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    assert first.poll() is None  # the first was running all along

    first.send_signal(signal.SIGTERM)  # no need to wait out its steps: it stops with a checkpoint
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    done = len(metrics(run))
    assert [r["step"] for r in metrics(run)] == list(range(1, done + 1))  # one run's lines, in order
    assert (run / f"checkpoints/deepspeed/global_step_{done}/arctic_state.json").is_file()
    assert not (run / "previous").exists()  # the second never moved the first's outputs aside
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_sigterm_while_tokenizing_prints_one_line_naming_the_phase(tiny_model_dir, chat_data, tmp_path):
    recipe = write_recipe(tmp_path, model=tiny_model_dir, data=chat_data)
    marker = tmp_path / "tokenizing"
    env = {"ARCTIC_TEST_FAULT": "tokenize-wait", "ARCTIC_TEST_MARKER": str(marker)}
    process = start_train(recipe, {**env, "ARCTIC_CACHE_DIR": str(tmp_path / "cache")})  # not cached yet
    wait_for(marker.exists, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    assert (
        stderr.rstrip().splitlines()[-1] == "arctic: stopped by SIGTERM during data preparation (tokenizing)"
    )
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # the folder is free for the rerun
    assert not list((tmp_path / "cache").rglob("summary.json"))  # no half-built entry taken as done


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / LOCK_FILE).write_text(
        f'{{"pid": {gone.stdout.strip()}, "host": "{os.uname().nodename}", "started": {time.time() - 60}}}'
    )
    with caplog.at_level("WARNING", logger="arctic"), RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()  # type: ignore[index]
    assert f"taking over the lock of {tmp_path}: its run is gone (pid {gone.stdout.strip()}" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_lock_or_one_from_another_host_is_never_taken(tmp_path):
    from arctic_core.errors import RecipeError

    for holder in (f'"pid": {os.getpid()}, "host": "{os.uname().nodename}"', '"pid": 1, "host": "elsewhere"'):
        (tmp_path / LOCK_FILE).write_text(
            f'{{{holder}, "started": {time.time()}, "command": "arctic train"}}'
        )
        with pytest.raises(RecipeError, match="in use by another run"):
            RunLock(tmp_path).acquire()
