"""The training loop against a plain PyTorch loop, and the loop's bookkeeping (one process, CPU, gloo).

Every run trains the tiny Llama (2 layers, hidden 64) saved by the testing kit on in-memory rows
whose micro-batches hold very different numbers of trainable tokens.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_support import RecorderTrainer, collate, make_rows, read_metrics
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from arctic_core.engine.deepspeed_config import deep_merge
from arctic_core.errors import ArcticError
from arctic_core.recipe import load_recipe
from arctic_core.testing import IM_END_TOKEN
from arctic_core.trainer import Trainer

pytest_plugins = ["arctic_core.testing.fixtures"]

LR, WEIGHT_DECAY, WARMUP, STEPS = 2e-3, 0.1, 2, 5


def base_recipe(model_dir: Path, out: Path) -> dict[str, Any]:
    return {
        "type": "engine_test",
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "train_iters": STEPS,
        "model": {"name_or_path": str(model_dir), "dtype": "fp32"},
        "data": {"dl_num_workers": 0},
        "optimizer": {"lr": LR, "weight_decay": WEIGHT_DECAY},
        "scheduler": {"name": "linear", "num_warmup_steps": WARMUP},
        "logger": {"output_dir": str(out), "progress_bar": False},
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }


def run(model_dir: Path, out: Path, trainer_class: type = RecorderTrainer, **changes: Any) -> RecorderTrainer:
    recipe = load_recipe(None, data=deep_merge(base_recipe(model_dir, out), changes))
    trainer = trainer_class(recipe.config)
    trainer.train()
    return trainer


def losses(trainer: RecorderTrainer) -> list[float]:
    return [r["loss"] for r in read_metrics(trainer.config.metrics_path)]


def reference_losses(model_dir: Path, *, global_batch: int, steps: int) -> tuple[list[float], list[float]]:
    """A plain PyTorch AdamW loop: token-mean loss of each global batch, clipping 1.0, no decay on 1-D params."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    rows = make_rows(32, seed=1)
    order = torch.randperm(
        len(rows), generator=torch.Generator().manual_seed(42)
    ).tolist()  # data.seed, epoch 0
    factors = [
        s / WARMUP if s <= WARMUP else 1 - (s - WARMUP) / (steps - WARMUP + 1) for s in range(1, steps + 1)
    ]
    out, norms = [], []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = LR * factors[step]
        batch = collate([rows[i] for i in order[step * global_batch : (step + 1) * global_batch]])
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
        )
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        opt.zero_grad()
        out.append(float(loss.detach()))
    return out, norms


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> tuple[list[float], list[float]]:
    return reference_losses(tiny_model_dir, global_batch=4, steps=STEPS)


@pytest.mark.slow
def test_losses_match_plain_pytorch_at_every_zero_stage(tiny_model_dir, tmp_path, reference):
    expected, norms = reference
    assert max(norms) > 1.0, "gradient clipping must be exercised"
    assert expected[-1] < expected[0]
    for stage in (0, 1, 2, 3):
        trainer = run(
            tiny_model_dir, tmp_path / f"z{stage}", deepspeed={"zero_optimization": {"stage": stage}}
        )
        counts = trainer.micro_counts
        assert max(counts) >= 5 * min(counts), "micro-batches must differ in trainable tokens"
        assert losses(trainer) == pytest.approx(expected, abs=1e-5), f"ZeRO stage {stage}"
        grad_norms = [r["grad_norm"] for r in read_metrics(trainer.config.metrics_path)]
        assert grad_norms == pytest.approx(norms, rel=1e-4), f"ZeRO stage {stage}"


@pytest.mark.slow
def test_bf16_stays_close_to_fp32(tiny_model_dir, tmp_path):
    long = {
        "train_iters": 20,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "scheduler": {"name": "constant", "num_warmup_steps": 0},
        "optimizer": {"lr": 1e-2},
    }
    fp32 = losses(
        run(tiny_model_dir, tmp_path / "fp32", **long, deepspeed={"zero_optimization": {"stage": 2}})
    )
    bf16 = losses(
        run(
            tiny_model_dir,
            tmp_path / "bf16",
            **deep_merge(long, {"model": {"dtype": "bf16"}}),
            deepspeed={"zero_optimization": {"stage": 2}},
        )
    )
    assert fp32[-1] < 0.8 * fp32[0], "the run must learn for the comparison to mean something"
    assert abs(bf16[-1] - fp32[-1]) / fp32[-1] < 0.05
    assert bf16 != fp32


def _assert_same_grads(
    a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]], atol: float
) -> None:
    assert len(a) == len(b) and a
    for step_a, step_b in zip(a, b):
        assert step_a.keys() == step_b.keys()
        for name in step_a:
            torch.testing.assert_close(step_a[name], step_b[name], atol=atol, rtol=0, msg=name)


def test_accumulation_equals_a_bigger_micro_batch(tiny_model_dir, tmp_path):
    accumulated = run(tiny_model_dir, tmp_path / "gas4", micro_batch_size=1, gradient_accumulation_steps=4)
    single = run(tiny_model_dir, tmp_path / "gas1", micro_batch_size=4, gradient_accumulation_steps=1)
    assert max(accumulated.micro_counts) >= 5 * min(accumulated.micro_counts)
    assert losses(accumulated) == pytest.approx(losses(single), abs=1e-5)
    _assert_same_grads(accumulated.grads, single.grads, atol=1e-5)


def test_activation_checkpointing_changes_nothing(tiny_model_dir, tmp_path):
    on = run(tiny_model_dir, tmp_path / "on", train_iters=3, model={"disable_activation_checkpoint": False})
    off = run(tiny_model_dir, tmp_path / "off", train_iters=3, model={"disable_activation_checkpoint": True})
    auto = run(tiny_model_dir, tmp_path / "auto", train_iters=1)  # a tiny model fits: auto leaves it off
    assert on.model.is_activation_checkpointing and not off.model.is_activation_checkpointing
    assert not auto.model.is_activation_checkpointing
    logged = (tmp_path / "auto" / "logs" / "rank_0.log").read_text()
    assert logged.count("activation checkpointing off: auto: planned peak") == 1, logged
    assert "per device: fits without" in logged
    assert losses(on) == pytest.approx(losses(off), abs=1e-7)
    _assert_same_grads(on.grads, off.grads, atol=1e-7)


def test_metrics_lines_schedule_epochs_and_determinism(tiny_model_dir, tmp_path):
    common = {
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "train_iters": 16,
        "scheduler": {"name": "cosine", "num_warmup_steps": 3},
        "logger": {"progress_bar": True},
    }
    first = run(tiny_model_dir, tmp_path / "a", **common)
    records = read_metrics(first.config.metrics_path)
    assert [r["step"] for r in records] == list(range(1, 17))
    assert [r["epoch"] for r in records] == [0] * 8 + [1] * 8  # 32 rows / (1 x 4) = 8 steps per epoch
    lrs = [r["lr"] for r in records]
    assert lrs[2] == pytest.approx(LR) and max(lrs) == lrs[2] and lrs[1] < LR and lrs[3] < LR
    for key in (
        "loss",
        "grad_norm",
        "tokens",
        "trainable_tokens",
        "tokens_per_s",
        "seconds",
        "peak_memory_gb",
    ):
        assert all(isinstance(r[key], (int, float)) and r[key] > 0 for r in records), key
    assert sum(r["trainable_tokens"] for r in records[:8]) == sum(first.micro_counts[:32])
    epoch_one, epoch_two = first.seen[:32], first.seen[32:]
    assert epoch_one != epoch_two and sorted(epoch_one) == sorted(epoch_two)
    first_lines = Path(first.config.metrics_path).read_text()
    second = run(tiny_model_dir, tmp_path / "a", **common)  # the same folder: the first run is kept aside
    assert losses(first) == losses(second)
    run_dir = Path(first.config.run_dir)
    assert (run_dir / "recipe.yaml").is_file()
    assert (run_dir / "logs" / "rank_0.log").read_text().count("training finished") == 1
    (kept,) = (run_dir / "previous").iterdir()
    assert (kept / "metrics.jsonl").read_text() == first_lines
    assert (kept / "recipe.yaml").is_file() and (kept / "logs" / "rank_0.log").is_file()


def test_frozen_parameters_stay_bit_identical(tiny_model_dir, tmp_path):
    frozen = ["model.embed_tokens.*", "model.layers.0.*"]
    trainer = run(
        tiny_model_dir,
        tmp_path / "frozen",
        train_iters=3,
        model={"frozen_parameters": frozen},
        deepspeed={"zero_optimization": {"stage": 2}},
    )
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    after = trainer.engine.module.state_dict()
    frozen_names = [n for n in before if n.startswith(("model.embed_tokens.", "model.layers.0."))]
    assert frozen_names and all(torch.equal(before[n], after[n]) for n in frozen_names)
    assert not torch.equal(
        before["model.layers.1.mlp.up_proj.weight"], after["model.layers.1.mlp.up_proj.weight"]
    )
    assert set(trainer.grads[0]) == set(trainer.trainable_names)
    assert not any(n.startswith("model.layers.0.") for n in trainer.trainable_names)


class NanTrainer(RecorderTrainer):
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        value = super().loss(batch)
        return value * float("nan") if self.global_step == 2 else value


def test_non_finite_loss_stops_naming_the_step(tiny_model_dir, tmp_path):
    with pytest.raises(ArcticError, match="step 3: the loss is nan"):
        run(tiny_model_dir, tmp_path / "nan", NanTrainer)
    assert len(read_metrics(tmp_path / "nan" / "metrics.jsonl")) == 2


def test_eval_is_token_weighted_over_every_sample(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ARCTIC_TEST_EVAL_ROWS", "7")
    trainer = run(
        tiny_model_dir,
        tmp_path / "eval",
        train_iters=2,
        eval_interval=2,
        data={"train_eval_split": [0.9, 0.1]},
    )
    records = read_metrics(trainer.config.metrics_path)
    assert "eval_loss" not in records[0]
    module, rows = trainer.engine.module, make_rows(7, seed=2)
    total = weighted = 0.0
    with torch.no_grad():
        for row in rows:
            batch = collate([row])
            logits = module(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            n = int(batch["num_trainable_tokens"])
            loss = torch.nn.functional.cross_entropy(
                logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100
            )
            weighted, total = weighted + float(loss) * n, total + n
    assert records[1]["eval_loss"] == pytest.approx(weighted / total, abs=1e-5)
    assert records[1]["eval_perplexity"] == pytest.approx(math.exp(weighted / total), rel=1e-5)


def test_huggingface_checkpoint_reloads_with_transformers(tiny_model_dir, tmp_path):
    trainer = run(
        tiny_model_dir,
        tmp_path / "hf",
        train_iters=9,
        checkpoint=[
            {
                "type": "huggingface",
                "save_end_of_training": True,
                "save_every_n_steps": 2,
                "save_every_n_epochs": 1,
                "keep_last_n": 2,
            }
        ],
    )
    out = tmp_path / "hf" / "checkpoints" / "huggingface"
    assert {p.name for p in out.iterdir()} >= {
        "global_step_6",
        "global_step_8",
        "epoch_1",
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "arctic_recipe.yaml",
    }
    assert not [p for p in out.parent.rglob("*") if "incomplete" in p.name or p.name.endswith(".old")]
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in out.iterdir() if p.is_file()} == {0o666 & ~umask}
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    probe = trainer.probe_logits()
    torch.testing.assert_close(
        reloaded(input_ids=torch.tensor([[11, 57, 300, 42, 999, 123, 7, 64]])).logits,
        probe,
        atol=1e-5,
        rtol=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert tokenizer.convert_tokens_to_ids(IM_END_TOKEN) in eos and tokenizer.eos_token_id in eos
    assert not (out / "epoch_2").exists()  # step 9 ends training part-way through epoch 2
    assert not (out / "global_step_2").exists() and not (out / "global_step_4").exists()  # keep_last_n = 2
    step6 = AutoModelForCausalLM.from_pretrained(out / "global_step_6", dtype=torch.float32)
    assert not torch.equal(step6.lm_head.weight, reloaded.lm_head.weight)


class PartitionProbe(RecorderTrainer):
    """Records, in the `transform_model` hook, the built model: partitioned by ZeRO-3? its initial output layer."""

    def transform_model(self, model: torch.nn.Module) -> torch.nn.Module:
        self.partitioned_at_build = all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())
        self.initial_head = model.lm_head.weight.detach().clone()
        return model


@pytest.mark.parametrize(
    ("model", "layers", "random"),
    [
        ({}, 2, False),
        ({"hf_config_kwargs": {"num_hidden_layers": 1}}, 1, True),
        ({"from_config": True}, 2, True),
    ],
)
def test_pretrained_weights_or_random_init_from_the_config(tiny_model_dir, tmp_path, model, layers, random):
    trainer = run(tiny_model_dir, tmp_path / "init", PartitionProbe, train_iters=1, model=model)
    assert trainer.model.config.num_hidden_layers == layers
    pretrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert torch.equal(trainer.initial_head, pretrained.lm_head.weight) != random


def test_zero3_partitions_while_building_and_exit_iteration_stops(tiny_model_dir, tmp_path):
    trainer = run(
        tiny_model_dir,
        tmp_path / "z3",
        PartitionProbe,
        exit_iteration=2,
        deepspeed={"zero_optimization": {"stage": 3}},
    )
    assert trainer.partitioned_at_build
    assert [r["step"] for r in read_metrics(trainer.config.metrics_path)] == [1, 2]
    stage0 = run(tiny_model_dir, tmp_path / "z0", PartitionProbe, train_iters=1)
    assert not stage0.partitioned_at_build


class PlainTrainer(Trainer):  # the core Trainer: data from arctic_core.data.DataFactory
    name = "engine_plain"


def test_trains_on_the_data_pipeline_with_eval(tiny_model_dir, chat_jsonl, tmp_path):
    recipe = load_recipe(
        None,
        data={
            "type": "engine_plain",
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "train_iters": 3,
            "eval_interval": 3,
            "model": {"name_or_path": str(tiny_model_dir), "dtype": "fp32"},
            "data": {
                "sources": [str(chat_jsonl)],
                "train_eval_split": [0.75, 0.25],
                "max_length": 256,
                "dl_num_workers": 0,
                "cache_dir": str(tmp_path / "cache"),
            },
            "logger": {"output_dir": str(tmp_path / "run"), "progress_bar": False},
        },
    )
    trainer = PlainTrainer(recipe.config)
    trainer.train()
    records = read_metrics(trainer.config.metrics_path)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["eval_loss"] > 0
    assert all(0 < r["trainable_tokens"] < r["tokens"] for r in records)
