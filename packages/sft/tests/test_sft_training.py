"""arctic-sft on core's loop: the chunked loss at ZeRO-3, custom trainers, causal LM, the CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from sft_support import arctic, read_metrics, train_in_process

from arctic_core.trainer import Trainer

RECIPE = """
type = "{type}"
micro_batch_size = 2
gradient_accumulation_steps = 2
train_iters = 4
seed = 3

[model]
name_or_path = "{model}"
dtype = "fp32"

[data]
sources = ["{data}"]
max_length = 256
div_length = 8
dl_num_workers = 0

[optimizer]
lr = 1e-3

[logger]
progress_bar = false
"""


class PlainLossTrainer(Trainer):
    """Core's default loss: full logits, then cross-entropy (the reference for the chunked loss)."""

    name = "sft_test_plain_loss"
    from arctic_sft.config import SFTConfig as config_class


def write_recipe(folder: Path, **fields: object) -> Path:
    path = folder / "recipe.toml"
    path.write_text(RECIPE.format(**fields))
    return path


@pytest.mark.slow
def test_chunked_loss_equals_plain_loss_at_zero3_with_tied_embeddings(tmp_path, tiny_model_dirs, chat_data):
    model = tiny_model_dirs["tied"]
    runs = {}
    for kind in ("sft", "sft_test_plain_loss"):
        recipe = write_recipe(tmp_path, type=kind, model=model, data=chat_data)
        out = tmp_path / kind
        overrides = [
            f"logger.output_dir={out}",
            "deepspeed.zero_optimization.stage=3",
            "loss_chunk_size=5",
        ]
        train_in_process(recipe, overrides)
        runs[kind] = read_metrics(out / "metrics.jsonl")
    chunked, plain = runs["sft"], runs["sft_test_plain_loss"]
    assert len(chunked) == len(plain) == 4
    for a, b in zip(chunked, plain):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert chunked[-1]["loss"] < chunked[0]["loss"]


CUSTOM = """
from arctic_sft import SFTTrainer


class CustomTrainer(SFTTrainer):
    name = "my_custom_trainer"

    def loss(self, batch):
        return 2 * super().loss(batch)
"""


CLIPPING_OFF = ["--set", "deepspeed.gradient_clipping=0.0"]


@pytest.fixture(scope="module")
def plain_sft_run(tmp_path_factory, tiny_model_dirs, chat_data) -> tuple[Path, list[float]]:
    """The recipe of the custom-trainer tests, trained once as plain sft: (recipe, its losses)."""
    folder = tmp_path_factory.mktemp("seed-readme")
    base = write_recipe(folder, type="sft", model=tiny_model_dirs["untied"], data=chat_data)
    arctic("train", str(base), *CLIPPING_OFF, "--set", f"logger.output_dir={folder / 'sft'}", cwd=folder)
    return base, [m["loss"] for m in read_metrics(folder / "sft" / "metrics.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("via", ["code", "train.py"])
def test_custom_trainer_from_the_seed_readme(tmp_path, plain_sft_run, via):
    base, sft = plain_sft_run
    work = tmp_path / "custom"
    work.mkdir()
    if via == "code":
        (tmp_path / "custom_trainers.py").write_text(textwrap.dedent(CUSTOM))
        extra = ["--set", f"code={tmp_path / 'custom_trainers.py'}"]
    else:
        (work / "train.py").write_text(textwrap.dedent(CUSTOM))
        extra = []
    arctic(
        "sft",
        "train",
        str(base),
        *CLIPPING_OFF,
        *extra,
        "--set",
        "type=my_custom_trainer",
        "--set",
        f"logger.output_dir={work / 'run'}",
        cwd=work,
    )
    custom = [m["loss"] for m in read_metrics(work / "run" / "metrics.jsonl")]
    assert len(custom) == len(sft) == 4
    assert custom[0] == 2 * sft[0]  # the same first batch and weights: exactly twice
    # Adam is invariant to the loss scale up to its epsilon, so later steps stay twice as large.
    assert custom == pytest.approx([2 * x for x in sft], rel=1e-4)


def test_causal_trains_on_packed_plain_text(tmp_path, tiny_model_dirs):
    from arctic_core.testing.datasets import write_dataset

    data = write_dataset(tmp_path / "text.jsonl", "text", n=96, seed=0)
    recipe = write_recipe(tmp_path, type="causal", model=tiny_model_dirs["untied"], data=data)
    out = tmp_path / "run"
    trainer = train_in_process(recipe, [f"logger.output_dir={out}", "data.max_length=128", "train_iters=6"])
    assert trainer.config.data.pack_samples and not trainer.config.data.mask_inputs
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    assert all(len(row["input_ids"]) <= 128 for row in rows)
    assert any(row["position_ids"].count(0) > 1 for row in rows), "some rows hold several documents"
    batch = trainer.collate([trainer.train_dataset[i] for i in range(2)])
    assert "attention_mask" not in batch  # packed: kept apart by position ids
    assert trainer.engine.module.config._attn_implementation == "arctic_packed_sdpa"  # one sample at a time
    log = (out / "logs" / "rank_0.log").read_text()
    assert "packed samples: attended one at a time" in log
    assert "host memory: freed blocks up to 1 GiB stay in the process" in log  # CPU: engine.host_memory
    assert int((batch["labels"] != -100).sum()) > 0.8 * int((batch["position_ids"] > 0).sum())
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl")]
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_cpu_ranks_train_sft(tmp_path, tiny_model_dirs, chat_data):
    recipe = write_recipe(tmp_path, type="sft", model=tiny_model_dirs["untied"], data=chat_data)
    out = tmp_path / "run"
    arctic("train", str(recipe), "--set", f"logger.output_dir={out}", "--num_gpus", "2", cwd=tmp_path)
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    log_files = sorted(p.name for p in (out / "logs").glob("*.log"))
    assert log_files == ["rank_0.log", "rank_1.log"]
