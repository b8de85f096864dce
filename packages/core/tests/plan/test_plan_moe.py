"""Mixture-of-experts shapes: total parameters equal the built model's; active parameters count k experts.

Active parameters are checked by building the model and counting what one token runs through: every
parameter except the routed experts, plus k of each layer's E experts (E x 3-D expert tensors / E x k).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GptOssConfig, Qwen2MoeConfig, Qwen3MoeConfig

from arctic_core.plan.shape import ModelShape, active_parameters
from arctic_core.testing.models import tiny_config

SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)

QWEN3_30B_A3B = dict(
    hidden_size=2048,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    num_experts=128,
    num_experts_per_tok=8,
    vocab_size=151936,
    tie_word_embeddings=False,
)
"""Qwen3-30B-A3B's published config.json shape (docs/moe.md plans it)."""


def counts(config: object) -> tuple[int, int]:
    """(total, active per token) of the model transformers builds on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = active = 0
    k, experts = config.num_experts_per_tok, ModelShape.from_hf_config(config).experts
    for name, param in model.named_parameters():
        total += param.numel()
        routed = ".experts." in name and "shared" not in name
        active += param.numel() * k // experts if routed else param.numel()
    return total, active


@pytest.mark.parametrize(
    "config",
    [
        tiny_config("qwen3_moe"),
        tiny_config("mixtral"),
        tiny_config("olmoe"),
        Qwen2MoeConfig(
            **SMALL,
            num_hidden_layers=3,
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            intermediate_size=96,
            mlp_only_layers=[1],
        ),
        GptOssConfig(**SMALL, num_hidden_layers=2, head_dim=16, num_local_experts=8, intermediate_size=32),
    ],
    ids=["qwen3-moe", "mixtral", "olmoe", "qwen2-moe-shared-dense-layer", "gpt-oss-biases-sinks"],
)
def test_total_and_active_parameters_match_the_built_model(config: object) -> None:
    shape = ModelShape.from_hf_config(config)
    assert (shape.parameters(), shape.active_parameters()) == counts(config)
    assert shape.active_parameters() < shape.parameters()


def test_qwen3_30b_a3b_is_30_5b_with_3_3b_active() -> None:
    config = Qwen3MoeConfig(**QWEN3_30B_A3B)
    shape = ModelShape.from_hf_config(config)
    assert round(shape.parameters() / 1e9, 1) == 30.5 and round(active_parameters(config) / 1e9, 1) == 3.4
    assert shape.largest_layer_params() > 128 * 3 * 2048 * 768  # ZeRO-3 gathers every expert of a layer


def test_dense_model_is_all_active() -> None:
    config = tiny_config("llama")
    assert active_parameters(config) == ModelShape.from_hf_config(config).parameters()


def test_lora_on_expert_tensors_counts_as_peft_builds_it() -> None:
    from peft import LoraConfig, get_peft_model

    from arctic_core.plan.shape import lora_parameters

    settings = {
        "r": 4,
        "target_modules": ["q_proj"],
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    }
    config = tiny_config("qwen3_moe")
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(**settings))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameters(ModelShape.from_hf_config(config), settings) == trained
