"""Issue 24, items 1, 2 and 5: damaged checkpoints, a planted pickle, a full disk.

One trained run (resume_support's recipe: 12 steps, checkpoints every 4, `keep_last_n = 2`, so
`global_step_8` and `global_step_12` remain) is copied for each fault. The verification itself
is checked in-process on copies of the real checkpoints; three reruns check, end to end, the
fallback (exact metrics), the refusal to unpickle, and the full disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
from resume_support import arctic_train, explain, metrics, write_recipe

from arctic_core.engine.integrity import MANIFEST_FILE, write_manifest
from arctic_core.engine.resume import STATE_FILE, newest_checkpoint
from arctic_core.errors import RecipeError

pytest_plugins = ["arctic_core.testing.fixtures"]

MODEL_STATES = "state/mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def trained(one_rank_run: Path) -> Path:
    """conftest's `one_rank_run`: its two newest checkpoints, the model states in their manifests."""
    out = one_rank_run / "checkpoints/deepspeed"
    assert sorted(p.name for p in out.iterdir()) == ["global_step_12", "global_step_8"]
    manifest = json.loads((out / "global_step_12" / MANIFEST_FILE).read_text())["files"]
    assert MODEL_STATES in manifest and STATE_FILE not in manifest
    return one_rank_run


def copy_run(trained: Path, folder: Path, model: Path, data: Path) -> tuple[Path, Path]:
    shutil.copytree(trained, folder / "run")
    return write_recipe(folder, model=model, data=data), folder / "run/checkpoints/deepspeed"


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def test_damage_is_found_and_the_newest_good_checkpoint_taken(trained, tmp_path, caplog):
    out = tmp_path / "deepspeed"
    shutil.copytree(trained / "checkpoints/deepspeed", out)
    newest, older = out / "global_step_12", out / "global_step_8"
    cases = {
        "deleted": (lambda: (newest / MODEL_STATES).unlink(), f"{MODEL_STATES} is missing"),
        "truncated": (lambda: truncate(newest / MODEL_STATES), "(truncated?)"),
        "changed": (lambda: (newest / "latest").write_text("other"), "does not match its SHA-256"),
        "bad marker": (lambda: (newest / STATE_FILE).write_text("{"), f"its {STATE_FILE} is missing or unreadable"),
    }  # fmt: skip
    saved = tmp_path / "saved"
    shutil.copytree(newest, saved)
    for name, (damage, reason) in cases.items():
        shutil.rmtree(newest)
        shutil.copytree(saved, newest)
        assert newest_checkpoint(out).global_step == 12, name  # type: ignore[union-attr]
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="arctic"):
            point = newest_checkpoint(out)
        assert point is not None and point.folder == older, name
        assert f"checkpoint {newest} is damaged and is not used: " in caplog.text and reason in caplog.text, (
            name
        )
        assert f"resuming from {older}, an older checkpoint" in caplog.text, name

    truncate(older / MODEL_STATES)  # none good: exit 2, each named
    with pytest.raises(RecipeError) as error:
        newest_checkpoint(out, "checkpoint[0].auto_resume")
    assert error.value.exit_code == 2 and str(older) in str(error.value) and str(newest) in str(error.value)


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_and_the_rerun_is_exact(
    trained, tiny_model_dir, chat_data, tmp_path
):
    recipe, out = copy_run(trained, tmp_path, tiny_model_dir, chat_data)
    reference = metrics(trained)
    truncate(out / "global_step_12" / MODEL_STATES)
    rerun = arctic_train(recipe)
    assert rerun.returncode == 0, explain(rerun)
    assert f"checkpoint {out / 'global_step_12'} is damaged and is not used" in rerun.stderr
    assert "global_step_8 at step 8" in rerun.stderr
    assert metrics(tmp_path / "run") == reference  # steps 9..12 redone, bit for bit
    assert not (tmp_path / "run" / ".arctic.lock").exists()


class Planted:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_planted_pickle_is_refused_without_running(trained, tiny_model_dir, chat_data, tmp_path):
    recipe, out = copy_run(trained, tmp_path, tiny_model_dir, chat_data)
    marker = tmp_path / "code-ran"
    (out / "global_step_12" / MODEL_STATES).write_bytes(pickle.dumps({"module": Planted(marker)}))
    write_manifest(out / "global_step_12", STATE_FILE)  # whoever planted it rewrote the manifest too
    assert not marker.exists()
    result = arctic_train(recipe)
    assert result.returncode == 1, explain(result)
    assert f"refusing to load {out / 'global_step_12' / MODEL_STATES}" in result.stderr
    assert not marker.exists()  # no code from the run folder ran
    assert "Traceback" not in result.stderr


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_says_so_and_cleans_up(trained, tiny_model_dir, chat_data, tmp_path):
    recipe, out = copy_run(trained, tmp_path, tiny_model_dir, chat_data)
    shutil.rmtree(out / "global_step_12")  # the rerun resumes at 8 and saves step 12 again
    before = _fingerprint(out / "global_step_8")
    result = arctic_train(recipe, env={"ARCTIC_TEST_FAULT": "enospc@12"})
    assert result.returncode == 1, explain(result)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"arctic: error during checkpointing: no space left on the device while writing the checkpoint {out / 'global_step_12'}: it needs about "
    ), line
    assert " bytes are free (in " not in line and " are free (in " in line
    assert sorted(p.name for p in out.iterdir()) == ["global_step_8"]  # no .incomplete left
    assert _fingerprint(out / "global_step_8") == before
