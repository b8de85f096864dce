"""The method end to end: the quickstart trains only the speculator and exports it; ZeRO-3 on two ranks."""

from __future__ import annotations

import pytest
import torch

from arctic_core.recipe import bundled_recipes, load_recipe
from arctic_core.testing.runs import arctic, read_metrics

QUICKSTART = bundled_recipes("arctic_speculator") / "quickstart.toml"


@pytest.mark.slow
def test_quickstart_raises_head_accuracy_trains_only_the_speculator_and_exports_it(tmp_path):
    from arctic_speculator.export import load_speculator
    from arctic_speculator.modeling import MLPSpeculator

    loaded = load_recipe(QUICKSTART, [f"logger.output_dir={tmp_path / 'run'}", "logger.progress_bar=false"])
    trainer = loaded.trainer_class()(loaded.config)
    trainer.setup()
    module = trainer.engine.module
    assert isinstance(module, MLPSpeculator) and module.n_predict == 3
    assert trainer.trainable_names == [n for n, _ in module.named_parameters()]
    base = trainer.base.module
    assert not any(p.requires_grad for p in base.parameters())
    base_before = {n: p.detach().clone() for n, p in base.named_parameters()}
    spec_before = {n: p.detach().clone() for n, p in module.named_parameters()}
    before = trainer.evaluate()
    trainer.train()
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    after = metrics[-1]
    assert all(m["tflops"] > 0 for m in metrics)  # SpeculatorTrainer.step_flops: base + heads
    assert before["eval_head0_accuracy"] < 0.1 and after["eval_head0_accuracy"] > 0.5, (before, after)
    assert after["eval_loss"] < 0.5 * before["eval_loss"]
    assert all(f"head{i}_accuracy" in after and f"eval_head{i}_accuracy" in after for i in range(3))
    for name, param in base.named_parameters():
        assert torch.equal(param, base_before[name]), name  # the base is bit-identical
    for name, param in module.named_parameters():
        assert not torch.equal(param, spec_before[name]), name  # every speculator parameter moved
    exported = load_speculator(tmp_path / "run" / "checkpoints" / "speculator", base=base)
    hidden, ids = torch.randn(1, 6, 64), torch.randint(0, 1024, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(exported(hidden, ids), module(hidden, ids), atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_two_ranks_match_one_rank_with_twice_the_micro_batch(tmp_path):
    """LSTM speculator (tied weights) on the frozen base, both partitioned at ZeRO-3; exports gathered."""
    common = [
        "train_iters=3",
        "eval_interval=0",
        "logger.progress_bar=false",
        "model.method=sum_lstm",
        "model.tie_weights=true",
        "model.tie_lstm_embs=true",
        "loss_chunk_size=64",
    ]
    two = [
        *common,
        "micro_batch_size=4",
        "deepspeed.zero_optimization.stage=3",
        f"logger.output_dir={tmp_path / 'two'}",
    ]
    one = [
        *common,
        "micro_batch_size=8",
        "deepspeed.zero_optimization.stage=0",
        f"logger.output_dir={tmp_path / 'one'}",
    ]
    sets = lambda overrides: [a for o in overrides for a in ("--set", o)]  # noqa: E731
    arctic("speculator", "train", str(QUICKSTART), "--num_gpus", "2", *sets(two), cwd=tmp_path)
    loaded = load_recipe(QUICKSTART, one)  # the reference run in this process (no second start-up)
    loaded.trainer_class()(loaded.config).train()
    a, b = read_metrics(tmp_path / "two" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), (x["step"], key)
    assert a[-1]["loss"] != a[0]["loss"]  # it trained
    from safetensors.torch import load_file

    zero3 = load_file(str(tmp_path / "two" / "checkpoints" / "speculator" / "model.safetensors"))
    plain = load_file(str(tmp_path / "one" / "checkpoints" / "speculator" / "model.safetensors"))
    assert zero3.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(zero3[name], plain[name], rtol=1e-4, atol=1e-6)
