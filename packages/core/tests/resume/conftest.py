"""Shared by the one-rank resume and checkpoint-fault tests: their data and one trained run.

Both files compare reruns with the same uninterrupted run of resume_support's recipe (12 optimizer
steps on one rank, checkpoints every 4, `keep_last_n = 2`): it is trained once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from resume_support import arctic_train, explain, write_recipe

from arctic_core.testing import datasets


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated chat rows (seed 0), the data of every run of resume_support's recipe here."""
    return datasets.write_dataset(tmp_path_factory.mktemp("resume-data") / "chat.jsonl", "chat", n=24, seed=0)


@pytest.fixture(scope="session")
def one_rank_run(tiny_model_dir: Path, chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of resume_support's recipe trained uninterrupted on one rank; copy it to change it."""
    recipe = write_recipe(tmp_path_factory.mktemp("one-rank-run"), model=tiny_model_dir, data=chat_data)
    result = arctic_train(recipe)
    assert result.returncode == 0, explain(result)
    return recipe.parent / "run"
