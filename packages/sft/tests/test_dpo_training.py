"""DPO training on CPU: the step-0 identities, the reference model's modes, the shipped recipes,
and two ranks against one (real processes through `arctic dpo train --num_gpus 2`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from sft_support import REPO, arctic, read_metrics

from arctic_core.engine.deepspeed_config import deep_merge
from arctic_core.recipe import load_recipe
from arctic_core.testing import (
    preference_rows,
    save_tiny_model,
    ultrafeedback_rows,
    write_hub_layout,
    write_rows,
)

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", preference_rows(40, seed=0))


def recipe(model_dir: Path, pairs_file: Path, out: Path) -> dict[str, Any]:
    return {
        "type": "dpo",
        "micro_batch_size": 4,
        "train_iters": 3,
        "seed": 0,
        "model": {"name_or_path": str(model_dir), "dtype": "fp32"},
        "data": {
            "sources": [str(pairs_file)],
            "train_eval_split": [0.8, 0.2],
            "dl_num_workers": 0,
            "cache_dir": str(out.parent / "cache"),
        },
        "optimizer": {"lr": 1e-3},
        "logger": {"output_dir": str(out), "progress_bar": False},
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }


def build(model_dir: Path, pairs_file: Path, out: Path, **changes: Any) -> Any:
    loaded = load_recipe(None, data=deep_merge(recipe(model_dir, pairs_file, out), changes))
    return loaded.trainer_class()(loaded.config)


def train(model_dir: Path, pairs_file: Path, out: Path, **changes: Any) -> Any:
    trainer = build(model_dir, pairs_file, out, **changes)
    trainer.train()
    return trainer


def test_step0_loss_is_ln2_with_zero_rewards_when_policy_is_the_reference(tiny_model_dir, pairs, tmp_path):
    trainer = build(
        tiny_model_dir, pairs, tmp_path / "run", label_smoothing=0.2, eval_interval=1, train_iters=1
    )
    trainer.setup()
    before = trainer.evaluate()
    trainer.train()
    (first,) = read_metrics(trainer.config.metrics_path)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert first[key] == 0.0 and before[f"eval_{key}"] == 0.0
    assert first["logps/chosen"] < 0 and first["trainable_tokens"] > 0
    assert first["eval_loss"] != before["eval_loss"]  # one step later, the policy has moved


def test_ipo_step0_loss_is_the_squared_margin_target(tiny_model_dir, pairs, tmp_path):
    trainer = train(tiny_model_dir, pairs, tmp_path / "run", loss_type="ipo", beta=0.25, train_iters=2)
    records = read_metrics(trainer.config.metrics_path)
    assert records[0]["loss"] == pytest.approx((1 / (2 * 0.25)) ** 2, abs=1e-6)
    assert records[1]["loss"] < records[0]["loss"]  # the policy moves towards the target margin


def test_precomputed_reference_log_probs_match_the_live_reference(tiny_model_dir, pairs, tmp_path):
    live = train(tiny_model_dir, pairs, tmp_path / "live", eval_interval=3)
    pre = train(tiny_model_dir, pairs, tmp_path / "pre", eval_interval=3, precompute_ref_log_probs=True)
    assert pre.ref_model is None and live.ref_model is not None
    assert "ref_chosen_logps" in pre.train_dataset.column_names
    for a, b in zip(read_metrics(live.config.metrics_path), read_metrics(pre.config.metrics_path)):
        for key in (*METRICS, "eval_loss", "eval_rewards/accuracy"):
            assert a.get(key) == pytest.approx(b.get(key), abs=1e-5), key
    assert read_metrics(live.config.metrics_path)[-1]["rewards/accuracy"] > 0  # it did train


def test_ref_model_table_names_another_reference(tiny_model_dir, pairs, tmp_path):
    other = save_tiny_model(tmp_path / "other", "llama", seed=1)
    trainer = train(
        tiny_model_dir, pairs, tmp_path / "run", train_iters=1, ref_model={"name_or_path": str(other)}
    )
    (first,) = read_metrics(trainer.config.metrics_path)
    assert abs(first["loss"] - math.log(2)) > 1e-3 and first["rewards/chosen"] != 0.0
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


@pytest.mark.slow
def test_tiny_recipe_reaches_held_out_reward_accuracy(tmp_path):
    """The shipped recipe from random weights: >= 0.8 reward accuracy on 200 held-out pairs."""
    from arctic_sft.dpo_tiny import preference_pairs, write_dpo_tiny

    shipped = REPO / "packages/sft/recipes/dpo-tiny"
    fresh = write_dpo_tiny(tmp_path / "fresh")
    for name in ("train.jsonl", "heldout.jsonl", "tiny-model/config.json"):
        assert (shipped / name).read_text() == (fresh / name).read_text(), (
            f"{name} differs from its generator"
        )
    train_prompts = {row["prompt"] for row in preference_pairs(1000, seed=0)}
    assert len(train_prompts) == 1000

    arctic(
        "dpo",
        "train",
        str(REPO / "packages/sft/recipes/dpo-tiny.toml"),
        "--set",
        f"logger.output_dir={tmp_path / 'run'}",
        "--set",
        "logger.progress_bar=false",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        cwd=REPO,
    )
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in r]
    summary = (tmp_path / "run" / "data_summary.json").read_text()
    assert '"samples": 200' in summary
    assert evals[0]["eval_rewards/accuracy"] < evals[-1]["eval_rewards/accuracy"]
    assert evals[-1]["eval_rewards/accuracy"] >= 0.8, evals
    assert evals[-1]["eval_loss"] < math.log(2) - 0.2


@pytest.mark.slow
def test_ultrafeedback_recipe_runs_on_local_copies_of_its_model_and_data(tmp_path):
    model = save_tiny_model(tmp_path / "model", "llama", seed=0)
    folder = write_hub_layout(
        tmp_path,
        "HuggingFaceH4/ultrafeedback_binarized",
        {"train_prefs": ultrafeedback_rows(64, seed=0), "test_prefs": ultrafeedback_rows(8, seed=1)},
    )
    arctic(
        "dpo",
        "train",
        str(REPO / "packages/sft/recipes/dpo-ultrafeedback.toml"),
        "--set",
        f"model.name_or_path={model}",
        "--set",
        f'data.sources=["{folder}:train_prefs"]',
        "--set",
        f'data.eval_sources=["{folder}:test_prefs"]',
        "--set",
        "train_iters=2",
        "--set",
        "eval_interval=2",
        "--set",
        f"logger.output_dir={tmp_path / 'run'}",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert "eval_rewards/accuracy" in records[-1]
    assert (tmp_path / "run" / "checkpoints" / "huggingface" / "config.json").is_file()


TWO_RANKS = """
type = "dpo"
micro_batch_size = 2
gradient_accumulation_steps = 2
train_iters = 3
eval_interval = 3
seed = 0
beta = 0.5
label_smoothing = 0.1

[model]
name_or_path = "{model}"
dtype = "fp32"

[data]
sources = ["{data}"]
train_eval_split = [0.85, 0.15]
dl_num_workers = 0
cache_dir = "{cache}"

[optimizer]
lr = 2e-3

[logger]
output_dir = "{out}"
progress_bar = false

[deepspeed]
zero_optimization = {{ stage = 3 }}
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_match_one_rank_with_twice_the_micro_batch(tiny_model_dir, pairs, tmp_path):
    """ZeRO-3, the reference partitioned under its own optimizer-less engine; 7 eval pairs (uneven ranks)."""
    path = tmp_path / "two.toml"
    path.write_text(
        TWO_RANKS.format(model=tiny_model_dir, data=pairs, cache=tmp_path / "cache", out=tmp_path / "two")
    )
    arctic("dpo", "train", str(path), "--num_gpus", "2", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    one = read_metrics(
        train(
            tiny_model_dir,
            pairs,
            tmp_path / "one",
            **{
                "micro_batch_size": 4,
                "gradient_accumulation_steps": 2,
                "eval_interval": 3,
                "beta": 0.5,
                "label_smoothing": 0.1,
                "optimizer": {"lr": 2e-3},
                "data": {"train_eval_split": [0.85, 0.15]},
                "deepspeed": {"zero_optimization": {"stage": 3}},
            },
        ).config.metrics_path
    )
    assert len(two) == len(one) == 3
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        # Rewards and log-probs are sums over answer tokens (tens of nats): float32 sums reduced
        # in another order on two ranks agree to ~1e-6 relative, not to 1e-5 absolute.
        for key in (*METRICS[1:], "logps/chosen"):
            assert a[key] == pytest.approx(b[key], abs=1e-5, rel=1e-4), (key, a["step"])
    for key in ("eval_loss", "eval_rewards/accuracy", "eval_rewards/margin"):
        assert two[-1][key] == pytest.approx(one[-1][key], abs=1e-5), key
    assert (tmp_path / "two" / "logs" / "rank_1.log").is_file()
    assert os.path.getsize(tmp_path / "two" / "logs" / "rank_1.log") > 0


def test_ipo_compares_per_token_mean_log_probs(tiny_model_dir, pairs, tmp_path):
    from arctic_core.engine.loop import to_device
    from arctic_core.losses import sequence_log_probs
    from arctic_sft.dpo_loss import preference_losses

    other = save_tiny_model(tmp_path / "other", "llama", seed=1)
    trainer = build(
        tiny_model_dir,
        pairs,
        tmp_path / "run",
        loss_type="ipo",
        beta=0.5,
        ref_model={"name_or_path": str(other)},
    )
    trainer.setup()
    batch = to_device(trainer.collate([trainer.train_dataset[i] for i in range(4)]), trainer.device)
    losses, stats = trainer.pair_outputs(batch)
    with torch.no_grad():
        policy, counts = sequence_log_probs(trainer.model, batch)
        ref, _ = sequence_log_probs(trainer.ref_model, batch)
    assert len(set(counts.tolist())) > 1  # answers of different lengths: means differ from sums
    mean_p, mean_r = policy / counts, ref / counts
    expected, chosen, _ = preference_losses(
        mean_p[:4], mean_p[4:], mean_r[:4], mean_r[4:], beta=0.5, loss_type="ipo"
    )
    torch.testing.assert_close(losses.detach(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats[:, 0].float(), chosen, atol=1e-5, rtol=1e-5)
    summed, _, _ = preference_losses(policy[:4], policy[4:], ref[:4], ref[4:], beta=0.5, loss_type="ipo")
    assert not torch.allclose(losses.detach(), summed, atol=1e-3)


@pytest.mark.slow
def test_zero3_gives_the_same_steps_as_zero0(tiny_model_dir, pairs, tmp_path):
    """Absolute, not relative: ZeRO-3 must not lose gradients (the policy runs its root forward)."""
    runs = {}
    for stage in (0, 3):
        trainer = train(
            tiny_model_dir, pairs, tmp_path / f"z{stage}", deepspeed={"zero_optimization": {"stage": stage}}
        )
        runs[stage] = read_metrics(trainer.config.metrics_path)
    for a, b in zip(runs[0], runs[3], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
