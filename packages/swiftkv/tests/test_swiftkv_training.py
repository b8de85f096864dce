"""Distillation end to end: the bundled quickstart halves the held-out KL, trains only the new
parameters, exports a folder that reloads bit-identical; ZeRO-3 on two ranks = ZeRO-0 on one."""

from __future__ import annotations

import pytest
import torch
from swiftkv_support import arctic, read_metrics
from transformers import AutoModelForCausalLM

from arctic_core.recipe import bundled_recipes, load_recipe

QUICKSTART = bundled_recipes("arctic_swiftkv") / "quickstart.toml"


@pytest.mark.slow
def test_quickstart_halves_heldout_kl_and_trains_only_swiftkv_parameters(tmp_path):
    loaded = load_recipe(QUICKSTART, [f"logger.output_dir={tmp_path / 'run'}", "logger.progress_bar=false"])
    trainer = loaded.trainer_class()(loaded.config)
    trainer.setup()
    assert trainer.trainable_names and all("_swiftkv." in n for n in trainer.trainable_names)
    before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    kl_before = trainer.evaluate()["eval_kl"]
    trainer.train()
    kl_after = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["eval_kl"]
    assert kl_after <= 0.5 * kl_before, (kl_before, kl_after)
    module = trainer.engine.module
    for name, param in module.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == ("_swiftkv." in name), name
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "huggingface")
    assert reloaded.config.swiftkv and reloaded.config.model_type == "llama_swiftkv"
    ids = torch.randint(3, 1000, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(module.eval()(input_ids=ids).logits, reloaded(input_ids=ids).logits)


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_two_ranks_match_zero0_one_rank_with_twice_the_micro_batch(tmp_path):
    from arctic_core.testing import save_tiny_model
    from arctic_swiftkv.quickstart import MODEL_CONFIG

    # Saved weights: a random init under ZeRO-3 (partitioned as built) differs from a plain one.
    teacher = save_tiny_model(tmp_path / "teacher", "llama", seed=0, **MODEL_CONFIG)
    common = [
        "train_iters=3",
        "eval_interval=0",
        "logger.progress_bar=false",
        "checkpoint=[]",
        f"model.name_or_path={teacher}",
        "model.from_config=false",
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
    arctic("swiftkv", "train", str(QUICKSTART), "--num_gpus", "2", *sets(two), cwd=tmp_path)
    arctic("swiftkv", "train", str(QUICKSTART), *sets(one), cwd=tmp_path)
    a, b = read_metrics(tmp_path / "two" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for key in ("loss", "kl", "hidden_mse"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), (x["step"], key)
    assert a[-1]["loss"] != a[0]["loss"]  # it trained


def test_key_value_layers_covering_every_layer_are_refused_naming_the_key(tmp_path):
    from arctic_core.errors import RecipeError

    loaded = load_recipe(
        QUICKSTART, [f"logger.output_dir={tmp_path / 'run'}", "model.num_key_value_layers=4"]
    )
    trainer = loaded.trainer_class()(loaded.config)
    with pytest.raises(RecipeError, match="model has 4 layers") as caught:
        trainer.setup()
    assert caught.value.path == "model.num_key_value_layers"
