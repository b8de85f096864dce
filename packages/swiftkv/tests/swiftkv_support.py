"""Shared pieces of the arctic-swiftkv tests: tiny teachers turned into SwiftKV models, a reference decoder."""

from __future__ import annotations

from typing import Any

import torch

from arctic_core.testing import tiny_model
from arctic_core.testing.runs import arctic, read_metrics  # noqa: F401  (re-exported to the tests)


def swiftkv_pair(
    arch: str = "llama", layers: int = 4, n_kv: int = 2, group: int = 1, attn: str = "sdpa", seed: int = 0
) -> tuple[Any, Any]:
    """(teacher, SwiftKV model with the teacher's weights and its new parameters initialised from them)."""
    from transformers import AutoModelForCausalLM

    from arctic_swiftkv.configuration import to_swiftkv_config
    from arctic_swiftkv.init import initialise_swiftkv

    teacher = tiny_model(
        arch, seed=seed, num_hidden_layers=layers, attn_implementation=attn, initializer_range=0.2
    )
    config = to_swiftkv_config(teacher.config, n_kv, group)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model.load_state_dict(teacher.state_dict(), strict=False)
    initialise_swiftkv(model, zero3=False)
    model.generation_config = teacher.generation_config
    return teacher.eval(), model.eval()


def left_padded_prompts(
    lengths: list[int], vocab: int = 1000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(3, vocab, (n,), generator=generator)
        mask[row, width - n :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def greedy_without_cache(model: Any, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by running the full forward (no cache, every position) on every prefix."""
    for _ in range(steps):
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return ids
