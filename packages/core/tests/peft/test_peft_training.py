"""LoRA training on the tiny Llama (one CPU rank): what trains, what stays, what is exported.

One module-scoped ZeRO-0 run (activation checkpointing on, merge_adapters on) is checked for: only
adapter parameters train and enter the optimizer; base weights come out bit-identical (after the
exports too); the loss falls; the adapter folder reloads with `PeftModel.from_pretrained` and gives
the trained model's logits; the merged folder is a plain transformers model with the same logits.
Then: activation checkpointing off gives the same losses and gradients; ZeRO-3 (model built under
zero.Init) trains the same way and exports a loadable adapter and merged model; a LoRA run stopped
after step 3 resumes from its `deepspeed` checkpoint to the uninterrupted run's losses and adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from peft_support import LORA, PROBE, PeftTestTrainer, read_metrics
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from arctic_core.engine.deepspeed_config import deep_merge
from arctic_core.engine.peft import MERGED_DIR
from arctic_core.recipe import load_recipe

pytest_plugins = ["arctic_core.testing.fixtures"]

STEPS = 6


def recipe(model_dir: Path, out: Path, **changes: Any) -> dict[str, Any]:
    base = {
        "type": "peft_test",
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "train_iters": STEPS,
        "model": {"name_or_path": str(model_dir), "dtype": "fp32", "peft_config": LORA},
        "data": {"dl_num_workers": 0},
        "optimizer": {"lr": 2e-2},
        "scheduler": {"name": "constant", "num_warmup_steps": 0},
        "logger": {"output_dir": str(out), "progress_bar": False},
        "checkpoint": [{"type": "huggingface", "save_end_of_training": True, "merge_adapters": True}],
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }
    return deep_merge(base, changes)


def run(model_dir: Path, out: Path, **changes: Any) -> PeftTestTrainer:
    trainer = PeftTestTrainer(load_recipe(None, data=recipe(model_dir, out, **changes)).config)
    trainer.train()
    return trainer


def losses(trainer: PeftTestTrainer) -> list[float]:
    return [r["loss"] for r in read_metrics(trainer.config.metrics_path)]


def export_dir(trainer: PeftTestTrainer) -> Path:
    return Path(trainer.config.run_dir) / "checkpoints" / "huggingface"


def base_model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE, use_cache=False).logits.float()


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PeftTestTrainer:
    # checkpointing on (auto would leave it off at this size): adapters inside checkpointed layers
    return run(
        tiny_model_dir,
        tmp_path_factory.mktemp("lora") / "run",
        model={"disable_activation_checkpoint": False},
    )


def test_only_adapter_parameters_train_and_enter_the_optimizer(lora_run: PeftTestTrainer) -> None:
    module = lora_run.engine.module
    adapters = {n for n, _ in module.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert len(adapters) == 8  # q_proj and v_proj of 2 layers, A and B
    assert set(lora_run.trainable_names) == adapters
    trainable = {id(p) for n, p in module.named_parameters() if n in adapters}
    in_optimizer = {id(p) for group in lora_run.engine.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == trainable


def test_base_weights_bit_identical_and_loss_falls(lora_run: PeftTestTrainer, tiny_model_dir: Path) -> None:
    original = load_file(tiny_model_dir / "model.safetensors")
    trained = lora_run.engine.module.get_base_model().state_dict()
    for name, tensor in original.items():
        key = name.replace("q_proj.weight", "q_proj.base_layer.weight").replace(
            "v_proj.weight", "v_proj.base_layer.weight"
        )
        assert torch.equal(trained[key], tensor), name
    history = losses(lora_run)
    assert len(history) == STEPS
    assert history[-1] < history[0] - 0.1, history
    # the adapter did learn: B starts at zero and is no longer zero
    b = dict(lora_run.engine.module.named_parameters())[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    ]
    assert b.abs().max() > 0


def test_adapter_export_reloads_with_peft(lora_run: PeftTestTrainer, tiny_model_dir: Path) -> None:
    folder = export_dir(lora_run)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "arctic_recipe.yaml"):
        assert (folder / name).is_file(), name
    assert not (folder / "model.safetensors").exists()  # the adapter alone, not the base model
    saved = load_file(folder / "adapter_model.safetensors")
    assert len(saved) == 8 and all("lora_" in k for k in saved)
    reloaded = PeftModel.from_pretrained(base_model(tiny_model_dir), folder).eval()
    expected = lora_run.probe_logits()
    assert torch.allclose(logits_of(reloaded), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(
        logits_of(base_model(tiny_model_dir)), expected, atol=1e-3
    )  # the adapter matters


def test_merged_export_gives_base_plus_adapter_logits(
    lora_run: PeftTestTrainer, tiny_model_dir: Path
) -> None:
    folder = export_dir(lora_run) / MERGED_DIR
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with_adapter = PeftModel.from_pretrained(base_model(tiny_model_dir), export_dir(lora_run)).eval()
    assert torch.allclose(logits_of(merged), logits_of(with_adapter), atol=1e-5, rtol=0)


def test_activation_checkpointing_off_gives_same_losses_and_grads(
    lora_run: PeftTestTrainer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = lora_run.engine.module.get_base_model()
    assert (
        base.is_activation_checkpointing and base._require_grads_hooks
    )  # inputs of checkpointed layers need grad
    off = run(
        tiny_model_dir,
        tmp_path / "run",
        model={"disable_activation_checkpoint": True},
        checkpoint=[],
    )
    assert not off.engine.module.get_base_model().is_activation_checkpointing
    assert losses(off) == pytest.approx(losses(lora_run), abs=1e-6)
    assert len(off.grads) == len(lora_run.grads) == STEPS
    for on_step, off_step in zip(lora_run.grads, off.grads):
        assert on_step.keys() == off_step.keys()
        for name in on_step:
            assert on_step[name].abs().max() > 0 or "lora_A" in name, name
            torch.testing.assert_close(on_step[name], off_step[name], atol=1e-6, rtol=1e-5)


def test_zero3_lora_trains_and_exports_a_loadable_adapter(
    lora_run: PeftTestTrainer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    z3 = run(tiny_model_dir, tmp_path / "run", deepspeed={"zero_optimization": {"stage": 3}})
    assert z3.built_partitioned and not lora_run.built_partitioned  # the base was built under zero.Init
    adapters = [p for n, p in z3.engine.module.named_parameters() if "lora_" in n]
    assert len(adapters) == 8 and all(hasattr(p, "ds_id") for p in adapters)  # DeepSpeed partitioned them
    assert losses(z3) == pytest.approx(losses(lora_run), abs=1e-5)
    expected = z3.probe_logits()
    folder = export_dir(z3)
    reloaded = PeftModel.from_pretrained(base_model(tiny_model_dir), folder).eval()
    assert torch.allclose(logits_of(reloaded), expected, atol=1e-5, rtol=0)
    merged = AutoModelForCausalLM.from_pretrained(folder / MERGED_DIR, dtype=torch.float32).eval()
    assert torch.allclose(logits_of(merged), expected, atol=1e-5, rtol=0)
    original = load_file(tiny_model_dir / "model.safetensors")
    merged_weights = load_file(folder / MERGED_DIR / "model.safetensors")
    assert torch.equal(
        merged_weights["model.layers.0.mlp.up_proj.weight"], original["model.layers.0.mlp.up_proj.weight"]
    )


def test_lora_run_resumes_like_the_uninterrupted_run(
    lora_run: PeftTestTrainer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    state = {"type": "deepspeed", "save_every_n_steps": 3, "auto_resume": True}
    first = run(tiny_model_dir, tmp_path / "run", exit_iteration=3, checkpoint=[state])
    assert first.global_step == 3
    resumed = run(tiny_model_dir, tmp_path / "run", checkpoint=[state])
    assert resumed.global_step == STEPS
    assert len(resumed.grads) == STEPS - 3  # it went on from step 3, not from scratch
    assert losses(resumed) == pytest.approx(losses(lora_run), abs=1e-6)
    expected = dict(lora_run.engine.module.named_parameters())
    for name, param in resumed.engine.module.named_parameters():
        assert torch.equal(param, expected[name]) or torch.allclose(param, expected[name], atol=1e-7), name
