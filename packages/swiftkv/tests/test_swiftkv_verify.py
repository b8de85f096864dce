"""`arctic verify --shrink` on a SwiftKV recipe keeps the layers SwiftKV needs to have something to learn."""

from __future__ import annotations

from arctic_core.recipe import load_recipe
from arctic_core.recipe.bundled import find_recipe
from arctic_core.verify.shrink import load_shrink_kwargs


def test_shrink_keeps_the_kv_layers_and_two_groups_after_them() -> None:
    loaded = load_recipe(find_recipe("quickstart", "swiftkv"))
    trainer = loaded.trainer_class()
    model = loaded.config.model
    layers = trainer.shrink_layers(loaded.config)
    assert layers == model.num_key_value_layers + 2 * model.key_value_group_size == 4
    assert load_shrink_kwargs(model, layers=layers)["num_hidden_layers"] == 4
    grouped = load_recipe(
        find_recipe("quickstart", "swiftkv"),
        ["model.num_key_value_layers=1", "model.key_value_group_size=3"],
    )
    assert grouped.trainer_class().shrink_layers(grouped.config) == 7  # 1 + two groups of 3
