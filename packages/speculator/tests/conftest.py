"""Shared, trained once per session: the tiny pipeline's generated data and a trained MLP and LSTM speculator."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from arctic_core.recipe import bundled_recipes, load_recipe

pytest_plugins = ["arctic_core.testing.fixtures"]

PIPELINE = bundled_recipes("arctic_speculator") / "tiny-pipeline.toml"
LSTM = [
    "model.method=sum_lstm",
    "model.inner_dim=64",  # a small one: this one is only checked for exactness
    "model.tie_weights=true",
    "model.tie_lstm_embs=true",
]


def pipeline_config(root: Path, *overrides: str):
    return load_recipe(
        PIPELINE,
        [
            f"generate.output_dir={root / 'data'}",
            f'data.sources=[{{name_or_path="{root / "data"}", process=false}}]',
            "logger.progress_bar=false",
            *overrides,
        ],
    )


def train(root: Path, name: str, *overrides: str) -> Path:
    loaded = pipeline_config(root, f"logger.output_dir={root / name}", *overrides)
    trainer = loaded.trainer_class()(loaded.config)
    trainer.train()
    return root / name / "checkpoints" / "speculator"


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> SimpleNamespace:
    """Generated data (2048 prompts of train.jsonl, base greedy answers) and two speculators trained on it."""
    from arctic_speculator.generate import run_generation

    root = tmp_path_factory.mktemp("pipeline")
    config = pipeline_config(root, "generate.max_prompts=2048", "generate.gen_temp=0").config
    run_generation(config, log=lambda _: None)
    mlp = train(root, "mlp", "epochs=5", "optimizer.lr=6e-3")
    lstm = train(root, "lstm", "epochs=1", *LSTM)
    return SimpleNamespace(root=root, config=config, mlp=mlp, lstm=lstm)
