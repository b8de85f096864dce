"""The method end to end: the bundled quickstart raises head-0 accuracy; only the speculator trains."""

from __future__ import annotations

import pytest
import torch

from arctic_core.recipe import bundled_recipes, load_recipe
from arctic_core.testing.runs import read_metrics

QUICKSTART = bundled_recipes("arctic_speculator") / "quickstart.toml"


@pytest.mark.slow
def test_quickstart_raises_head0_accuracy_and_trains_only_the_speculator(tmp_path):
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
    after = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert before["eval_head0_accuracy"] < 0.05 and after["eval_head0_accuracy"] > 0.3, (before, after)
    assert after["eval_loss"] < 0.5 * before["eval_loss"]
    assert all(f"head{i}_accuracy" in after and f"eval_head{i}_accuracy" in after for i in range(3))
    for name, param in base.named_parameters():
        assert torch.equal(param, base_before[name]), name  # the base is bit-identical
    for name, param in module.named_parameters():
        assert not torch.equal(param, spec_before[name]), name  # every speculator parameter moved
