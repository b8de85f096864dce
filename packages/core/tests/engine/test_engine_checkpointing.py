"""Activation checkpointing `auto`: the memory estimate, the decision, and the recipe's override."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from arctic_core.engine.model import (
    activation_bytes,
    apply_activation_checkpointing,
    choose_activation_checkpointing,
    training_state_bytes,
)
from arctic_core.testing import tiny_model

GIB = 2**30
LLAMA = SimpleNamespace(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
)


def test_the_recipe_overrides_the_estimate_both_ways():
    huge, small = {"activations": 50 * GIB, "state": GIB}, {"activations": GIB // 10, "state": GIB // 10}
    assert choose_activation_checkpointing(False, **huge, available=10 * GIB)[0] is False
    assert choose_activation_checkpointing(True, **small, available=10 * GIB)[0] is True


@pytest.mark.parametrize(
    "activations,state,on",
    [(7 * GIB, GIB, False), (8 * GIB, GIB, True), (GIB, 8 * GIB, True), (0, 0, False)],
)
def test_auto_turns_it_on_only_when_activations_and_state_exceed_80_percent(activations, state, on):
    chosen, why = choose_activation_checkpointing(
        None, activations=activations, state=state, available=10 * GIB
    )
    assert chosen is on
    assert why.startswith("auto: estimated activations") and ("would not fit" in why) == on


def test_the_estimate_grows_with_tokens_layers_and_eager_attention():
    one = activation_bytes(LLAMA, 1000, sequence=1000, dtype="fp32")
    assert activation_bytes(LLAMA, 2000, sequence=1000, dtype="fp32") == 2 * one
    layers = {n: SimpleNamespace(**{**vars(LLAMA), "num_hidden_layers": n}) for n in (0, 4)}
    none, deeper = (activation_bytes(layers[n], 1000, sequence=1000, dtype="fp32") for n in (0, 4))
    assert deeper - one == one - none > 0  # linear in the layers
    assert activation_bytes(LLAMA, 1000, sequence=1000, dtype="bf16") < 0.6 * one
    eager = activation_bytes(LLAMA, 1000, sequence=1000, dtype="fp32", attn_implementation="eager")
    assert eager - one == 2 * 1000 * 4 * 1000 * 4  # layers x tokens x heads x sequence x 4 bytes


def test_training_state_is_partitioned_by_zero_stage():
    full = training_state_bytes(1000, dtype="fp32", zero_stage=0, dp_size=4)
    assert full == 1000 * 16  # weight, gradient, two AdamW moments
    assert training_state_bytes(1000, dtype="fp32", zero_stage=3, dp_size=4) == full // 4
    assert training_state_bytes(1000, dtype="bf16", zero_stage=0, dp_size=1) == 1000 * (2 + 2 + 12)


def recipe(micro_batch: int, max_length: int, disabled: bool | None) -> SimpleNamespace:
    model = SimpleNamespace(disable_activation_checkpoint=disabled, dtype="fp32", attn_implementation="sdpa")
    return SimpleNamespace(
        micro_batch_size=micro_batch, data=SimpleNamespace(max_length=max_length), model=model
    )


@pytest.mark.parametrize(
    "micro_batch,max_length,disabled,on",
    [(4, 128, None, False), (10**6, 10**6, None, True), (10**6, 10**6, True, False), (4, 128, False, True)],
    ids=["fits", "would-not-fit", "disabled-by-recipe", "asked-by-recipe"],
)
def test_the_trained_model_gets_what_was_chosen(micro_batch, max_length, disabled, on):
    model = tiny_model("llama", seed=0)
    chosen, why = apply_activation_checkpointing(
        model, recipe(micro_batch, max_length, disabled), device=torch.device("cpu"), zero_stage=0, dp_size=1
    )
    assert chosen is on and bool(model.is_activation_checkpointing) is on, why
