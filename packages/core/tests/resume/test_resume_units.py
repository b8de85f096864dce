"""The pieces of resuming that need no training run: finding checkpoints, folders, metrics, sampler, signals."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from arctic_core.engine import checkpoint as ckpt
from arctic_core.engine.loaders import ResumableSampler
from arctic_core.engine.metrics import truncate_metrics
from arctic_core.engine.resume import STATE_FILE, newest_checkpoint
from arctic_core.engine.signals import StopRequest


def _complete(folder: Path, step: int, world_size: int = 1) -> Path:
    folder.mkdir(parents=True)
    state = {"global_step": step, "epoch": 0, "steps_in_epoch": step, "world_size": world_size}
    (folder / STATE_FILE).write_text(json.dumps(state))
    return folder


def test_newest_complete_checkpoint_ignores_unmarked_and_temporary_folders(tmp_path):
    assert newest_checkpoint(tmp_path / "missing") is None
    _complete(tmp_path / "global_step_2", 2)
    _complete(tmp_path / "epoch_1", 4)
    _complete(tmp_path / ".global_step_8.incomplete", 8)  # renamed only when complete
    (tmp_path / "global_step_6" / "state").mkdir(parents=True)  # no completion marker
    (tmp_path / "global_step_7").mkdir()
    (tmp_path / "global_step_7" / STATE_FILE).write_text('{"global_step": 7')  # torn marker
    found = newest_checkpoint(tmp_path)
    assert found is not None and found.folder.name == "epoch_1" and found.global_step == 4


def test_truncate_metrics_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo'
    )
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_atomic_folder_replaces_the_target_and_keeps_periodic_checkpoints(tmp_path):
    target = tmp_path / "out"
    (target / "global_step_2").mkdir(parents=True)
    (target / "old.txt").write_text("old")
    with ckpt.atomic_folder(target) as temp:
        assert temp.name == ".out.incomplete" and not (target / "new.txt").exists()
        (temp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["global_step_2", "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_folder_recovers_from_a_kill_between_the_fallback_renames(tmp_path, monkeypatch):
    target = tmp_path / "out"
    (tmp_path / ".out.old" / "model").mkdir(parents=True)  # killed after `target -> .old`
    (tmp_path / ".out.incomplete" / "global_step_2").mkdir(parents=True)  # a periodic one parked there
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)  # the two-rename path
    with ckpt.atomic_folder(target) as temp:
        (temp / "model").mkdir()
    assert sorted(p.name for p in target.iterdir()) == ["global_step_2", "model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resumable_sampler_skips_the_consumed_samples_once():
    sampler = ResumableSampler(list(range(20)), num_replicas=2, rank=1, shuffle=True, seed=3, drop_last=True)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.skip_next(4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full


def test_first_signal_sets_the_flag_and_the_handler_is_removed_after(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    request = StopRequest()
    request.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.agreed() == signal.SIGTERM
    finally:
        request.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("name", ["deepspeed", "huggingface"])
def test_checkpoint_types_are_registered(name):
    assert ckpt.checkpoint_engine_class(name, 0).type == name
