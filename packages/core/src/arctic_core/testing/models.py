"""Tiny, deterministic models and the shipped tokenizer, for tests and the quickstart.

Every model has 2 layers, hidden size 64, 4 attention heads (2 KV heads), MLP width 128 and the
vocabulary of the tokenizer in `tokenizer/` (made by `packages/core/scripts/make_tokenizer.py`).
Weights depend only on the seed, never on the caller's RNG state, and building one leaves that
state untouched. Nothing here touches the network.
"""

from __future__ import annotations

import copy
import shutil
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    OlmoeConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3MoeConfig,
)

TOKENIZER_DIR: Path = Path(str(resources.files(__package__).joinpath("tokenizer")))
"""The folder of the shipped tokenizer (`tokenizer.json`, `tokenizer_config.json`)."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
BOS_TOKEN, EOS_TOKEN = "<|begin_of_text|>", "<|endoftext|>"
IM_START_TOKEN, IM_END_TOKEN = "<|im_start|>", "<|im_end|>"

CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "mistral": MistralConfig,
    "qwen3_moe": Qwen3MoeConfig,
    "mixtral": MixtralConfig,
    "olmoe": OlmoeConfig,
}

MOE_SIZES: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32},
    "olmoe": {"num_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32},
}
"""Mixture-of-experts archs: 8 experts of width 32, 2 chosen per token, in every layer."""

TINY_SIZES: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


@lru_cache(maxsize=1)
def _base_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A fresh copy of the shipped tokenizer (callers may mutate it, e.g. set a pad token)."""
    return copy.deepcopy(_base_tokenizer())


def _special_ids() -> dict[str, int]:
    vocab = _base_tokenizer().get_vocab()
    return {t: vocab[t] for t in (BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN)}


def tiny_config(arch: str = "llama", **overrides: Any) -> PretrainedConfig:
    """A 2-layer, hidden-64 config of `arch` (`CONFIG_CLASSES`: dense or MoE) for the shipped tokenizer.

    `overrides` are passed to the config class and win over the tiny defaults.
    """
    if arch not in CONFIG_CLASSES:
        raise ValueError(f"arch must be one of {sorted(CONFIG_CLASSES)}, got {arch!r}")
    ids = _special_ids()
    kwargs: dict[str, Any] = {
        **TINY_SIZES,
        "vocab_size": len(_base_tokenizer()),
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": ids[EOS_TOKEN],
        "pad_token_id": None,
        **MOE_SIZES.get(arch, {}),
    }
    kwargs.update(overrides)
    return CONFIG_CLASSES[arch](**kwargs)


def tiny_generation_config() -> GenerationConfig:
    """Generation stops at EOS or at the end-of-turn token `<|im_end|>`."""
    ids = _special_ids()
    return GenerationConfig(bos_token_id=ids[BOS_TOKEN], eos_token_id=[ids[EOS_TOKEN], ids[IM_END_TOKEN]])


def tiny_model(
    arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any
) -> PreTrainedModel:
    """A randomly initialised causal LM on CPU whose weights depend only on `seed`.

    The caller's global torch RNG state is the same afterwards as before.
    """
    config = tiny_config(arch, **overrides)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = tiny_generation_config()
    return model


def save_tokenizer_files(path: str | Path) -> Path:
    """Copy the shipped tokenizer's files into `path` (created if missing) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, path / name)
    return path


def save_tiny_model(
    path: str | Path,
    arch: str = "llama",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> Path:
    """Write a tiny model folder (safetensors, config, generation config, tokenizer) and return it.

    Both `AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)` load it.
    """
    path = Path(path)
    tiny_model(arch, seed=seed, dtype=dtype, **overrides).save_pretrained(path)
    return save_tokenizer_files(path)


def write_chat_task(
    folder: str | Path, model_config: dict[str, Any], *, n_train: int, n_heldout: int, family: str = "llama"
) -> Path:
    """A bundled quickstart's assets: `train.jsonl` and `heldout.jsonl` (arithmetic chats from seeds 0
    and 1) and `tiny-model/` (a `family` config with `model_config`, generation config, the shipped
    tokenizer; no weights: recipes build it with `model.from_config`)."""
    from arctic_core.testing.datasets import write_dataset

    folder = Path(folder)
    write_dataset(folder / "train.jsonl", "chat", n=n_train, seed=0)
    write_dataset(folder / "heldout.jsonl", "chat", n=n_heldout, seed=1)
    model_dir = folder / "tiny-model"
    tiny_config(family, **model_config).save_pretrained(model_dir)
    tiny_generation_config().save_pretrained(model_dir)
    save_tokenizer_files(model_dir)
    return folder
