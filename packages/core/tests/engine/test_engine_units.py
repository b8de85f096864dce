"""Engine pieces on their own: DeepSpeed config, schedules, parameter groups, launcher arguments, refusals."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_support import read_metrics

from arctic_core.__main__ import reorder_local_rank
from arctic_core.config import SchedulerConfig
from arctic_core.engine.checkpoint import checkpoint_engine_class, end_of_turn_token_id
from arctic_core.engine.deepspeed_config import build_deepspeed_config
from arctic_core.engine.optimizer import parameter_groups
from arctic_core.engine.scheduler import lr_factor
from arctic_core.errors import ArcticError, RecipeError
from arctic_core.launch import relaunch_command, single_process
from arctic_core.recipe import load_recipe
from arctic_core.testing import IM_END_TOKEN

pytest_plugins = ["arctic_core.testing.fixtures"]


def config(**changes: Any) -> Any:
    data = {
        "model": {"name_or_path": "/nonexistent/model", "dtype": "fp32"},
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 3,
        **changes,
    }
    return load_recipe(None, data=data).config


def test_deepspeed_defaults_and_recipe_override():
    ds = build_deepspeed_config(config(), world_size=2)
    assert ds["train_batch_size"] == 12 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 1.0
    assert ds["zero_optimization"] == {"stage": 2} and ds["bf16"] == {"enabled": False}
    assert build_deepspeed_config(config(), world_size=1)["zero_optimization"] == {"stage": 0}
    ds = build_deepspeed_config(
        config(
            deepspeed={"gradient_clipping": 0.5, "zero_optimization": {"stage": 3, "overlap_comm": False}}
        ),
        world_size=2,
    )
    assert ds["gradient_clipping"] == 0.5 and ds["zero_optimization"] == {"stage": 3, "overlap_comm": False}
    assert build_deepspeed_config(config(model={"name_or_path": "x"}), world_size=1)["bf16"] == {
        "enabled": True
    }


@pytest.mark.parametrize(
    ("deepspeed", "path"),
    [
        ({"train_batch_size": 7}, "deepspeed.train_batch_size"),
        ({"train_micro_batch_size_per_gpu": 4}, "deepspeed.train_micro_batch_size_per_gpu"),
        ({"gradient_accumulation_steps": 1}, "deepspeed.gradient_accumulation_steps"),
        ({"bf16": {"enabled": True}}, "deepspeed.bf16.enabled"),
        ({"zero_optimization": {"stage": 4}}, "deepspeed.zero_optimization.stage"),
        ({"optimizer": {"type": "Adam"}}, "deepspeed.optimizer"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "optimizer.type"),
    ],
)
def test_contradictory_deepspeed_settings_name_the_key(deepspeed, path):
    with pytest.raises(RecipeError) as caught:
        build_deepspeed_config(config(deepspeed=deepspeed), world_size=2)
    assert caught.value.path == path


def test_fp16_on_cpu_exits_2_before_any_model_loads(tmp_path, capsys):
    from arctic_core.cli import main

    recipe = tmp_path / "fp16.toml"
    recipe.write_text(
        'type = "engine_test"\n[model]\nname_or_path = "/nonexistent/model"\ndtype = "fp16"\n'
        f'[logger]\noutput_dir = "{tmp_path / "run"}"\n'
    )
    with pytest.raises(SystemExit) as caught:
        main(["train", str(recipe)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    # both problems, found before any model loads (a load would fail on the path alone)
    assert "2 problems" in err and "model.dtype: fp16 needs a CUDA GPU" in err
    assert "model.name_or_path: /nonexistent/model does not exist" in err


def _factors(total: int, **kwargs: Any) -> list[float]:
    factor = lr_factor(SchedulerConfig(**kwargs), total)
    return [factor(s) for s in range(1, total + 1)]


def test_schedules_peak_at_the_last_warmup_step():
    for name in ("linear", "cosine", "constant_with_warmup", "wsd"):
        f = _factors(10, name=name, num_warmup_steps=3)
        assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and max(f) == 1.0, name
    assert _factors(10, name="linear", num_warmup_steps=0) == pytest.approx([1 - k / 10 for k in range(10)])
    assert _factors(10, name="constant_with_warmup", warmup_ratio=0.2)[2:] == [1.0] * 8
    assert _factors(10, name="constant", warmup_ratio=0.2) == [1.0] * 10  # transformers': no warmup
    wsd = _factors(10, name="wsd", num_warmup_steps=2, num_decay_steps=3, min_lr_ratio=0.1)
    assert wsd[:7] == pytest.approx([0.5, 1, 1, 1, 1, 1, 1]) and wsd[7] > wsd[8] > wsd[9] > 0.1
    cosine = _factors(10, name="cosine", warmup_ratio=0.1)
    assert cosine[0] == 1.0 and all(a > b for a, b in itertools.pairwise(cosine))


def test_no_decay_groups_hold_biases_norms_and_vectors():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False)
    )
    model[2].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model.named_parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3  # linear bias, norm weight, norm bias; the frozen matrix is left out


def test_launcher_arguments():
    assert single_process([]) and single_process(["--num_gpus", "1"]) and single_process(["--num_gpus=1"])
    assert not single_process(["--num_gpus", "2"]) and not single_process(["--hostfile", "hosts"])
    command = relaunch_command("r.toml", ["optimizer.lr=1e-4"], ["--num_gpus", "2"], "sft")
    assert command[:2] == ["--num_gpus", "2"] and "--master_port" in command
    assert command[-7:] == ["--module", "arctic_core", "sft", "train", "r.toml", "--set", "optimizer.lr=1e-4"]
    assert reorder_local_rank(["--local_rank=1", "train", "r.toml"]) == ["train", "r.toml", "--local_rank=1"]


def test_unknown_checkpoint_types_are_recipe_errors():
    with pytest.raises(
        RecipeError, match=r"unknown checkpoint type 'deepspeeed'; available: (.*, )?deepspeed\b"
    ) as caught:
        checkpoint_engine_class("deepspeeed", 1)
    assert caught.value.path == "checkpoint[1].type"


def test_end_of_turn_token_comes_from_the_chat_template(tiny_tokenizer):
    assert end_of_turn_token_id(tiny_tokenizer) == tiny_tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    tiny_tokenizer.chat_template = None
    assert end_of_turn_token_id(tiny_tokenizer) is None


def test_missing_tracker_package_is_named(tmp_path):
    from arctic_core.engine.metrics import MetricsWriter

    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed")
    recipe = config(wandb={"enable": True}, logger={"output_dir": str(tmp_path), "progress_bar": False})
    with pytest.raises(ArcticError, match="wandb is enabled in the recipe but not installed"):
        MetricsWriter(recipe, rank=0, total_steps=1)


@pytest.mark.slow
def test_one_rank_cli_run_needs_no_environment(tiny_model_dir, tmp_path):
    """`python -m arctic_core train` with no launcher variables set, as a user would type it."""
    support = Path(__file__).with_name("engine_support.py")
    recipe = tmp_path / "one.toml"
    recipe.write_text(
        f'type = "engine_test"\ncode = "{support}"\ntrain_iters = 2\nmicro_batch_size = 2\n'
        f'[model]\nname_or_path = "{tiny_model_dir}"\ndtype = "bf16"\n[data]\ndl_num_workers = 0\n'
        '[optimizer]\ntype = "adamw"\n'
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")
    }
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", "train", str(recipe)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(tmp_path / "runs" / "one" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(r["grad_norm"] > 0 for r in records)
    assert "mpi4py" not in result.stderr


@pytest.mark.slow
def test_cpu_adam_trains(tiny_model_dir, tmp_path):
    """DeepSpeed's CPUAdam (JIT-compiled once into TORCH_EXTENSIONS_DIR) matches torch AdamW closely."""
    from test_engine_training import losses, run

    adamw = losses(run(tiny_model_dir, tmp_path / "adamw", train_iters=3))
    cpu = losses(run(tiny_model_dir, tmp_path / "cpu", train_iters=3, optimizer={"type": "cpu_adam"}))
    assert cpu == pytest.approx(adamw, abs=1e-4)


def test_a_micro_batch_without_trainable_tokens_gives_zero_not_nan():
    from arctic_core.engine.loop import causal_lm_loss

    logits = torch.randn(2, 5, 7, requires_grad=True)
    loss = causal_lm_loss(logits, torch.full((2, 5), -100))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    labels = torch.tensor([[-100, 1, 2, -100, 3]])
    expected = torch.nn.functional.cross_entropy(logits[:1, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert float(causal_lm_loss(logits[:1], labels).detach()) == pytest.approx(
        float(expected.detach()), abs=1e-6
    )


def test_trainable_globs_and_an_empty_selection():
    from arctic_core.engine.model import select_trainable

    model = torch.nn.ModuleDict({"body": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 2)})
    assert select_trainable(model, ["head.*"], []) == ["head.weight", "head.bias"]
    assert select_trainable(model, [], ["head.bias"]) == ["head.weight"]
    with pytest.raises(RecipeError) as caught:
        select_trainable(model, ["nothing.*"], [])
    assert caught.value.path == "model.trainable_parameters"
