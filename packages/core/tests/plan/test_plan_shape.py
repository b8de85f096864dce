"""Parameter counts from a config equal those of the model transformers builds from it (meta device)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from arctic_core.plan.shape import ModelShape, lora_parameters

LLAMA_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)


def built(config: object) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [
        LlamaConfig(**LLAMA_8B),
        LlamaConfig(
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1024,
            tie_word_embeddings=True,
        ),
        LlamaConfig(
            hidden_size=96,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=3,
            head_dim=24,
            vocab_size=500,
            attention_bias=True,
            mlp_bias=True,
        ),
        Qwen2Config(
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            tie_word_embeddings=True,
        ),
    ],
    ids=["llama-3.1-8b", "tiny-tied-gqa", "biases-head-dim", "qwen2-qkv-bias"],
)
def test_parameter_count_matches_the_built_model(config: object) -> None:
    assert ModelShape.from_hf_config(config).parameters() == built(config)


def test_llama_8b_is_8_03_billion() -> None:
    assert ModelShape.from_hf_config(LlamaConfig(**LLAMA_8B)).parameters() == 8_030_261_248


def test_lora_count_matches_peft() -> None:
    from peft import LoraConfig, get_peft_model

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
    )
    for targets in (["q_proj", "v_proj"], "all-linear"):
        model = get_peft_model(
            AutoModelForCausalLM.from_config(config), LoraConfig(r=4, target_modules=targets)
        )
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert (
            lora_parameters(ModelShape.from_hf_config(config), {"r": 4, "target_modules": targets}) == trained
        )
