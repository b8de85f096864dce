"""Rollouts: G completions per prompt from the current policy, with HF `generate` and its KV cache.

Sampling is seeded per completion: completion j of training row r (its index in the training data)
at step s draws from its own generator, seeded by (recipe seed, s, r, j). So a resumed run re-samples
exactly the completions the uninterrupted run sampled, and the completions do not depend on how
the global batch is split over ranks and micro-batches (the accumulation and rank equivalences
hold with sampling on). The draw is made by a logits processor (`RowSampler`: temperature, top-k,
top-p, then one multinomial draw per row from that row's generator) that leaves only the drawn
token, which `generate` then picks greedily; `generate` keeps the cache, stopping and padding.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def row_seed(seed: int, step: int, prompt: int, generation: int) -> int:
    """The generator seed of one completion: a mix of (seed, step, prompt's row index, generation index)."""
    value = seed & _MASK
    for part in (step, prompt, generation):
        value = ((value ^ (part + 1)) * _MIX + 0x632BE59BD9B4E019) & _MASK
        value ^= value >> 29
    return value


class RowSampler:
    """A `generate` logits processor that samples each row from its own seeded generator.

    Returns scores that are 0 at the drawn token and -inf elsewhere, so greedy decoding picks it.
    """

    def __init__(
        self, seeds: list[int], device: torch.device, *, temperature: float, top_p: float, top_k: int
    ):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(filtered(scores.float() / self.temperature, self.top_p, self.top_k), dim=-1)
        drawn = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, drawn, 0.0)


def filtered(scores: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Scores with tokens outside the top-k and outside the top-p nucleus set to -inf."""
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # mass before this token already enough
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


@attrs.frozen
class Completions:
    """A generated batch: left-padded prompts, right-padded completions, masks and decoded texts."""

    prompt_ids: torch.Tensor  # [n, P]
    prompt_mask: torch.Tensor  # [n, P]
    completion_ids: torch.Tensor  # [n, C]
    completion_mask: torch.Tensor  # [n, C]: tokens up to and including the stop token
    truncated: torch.Tensor  # [n] bool: no stop token within max_completion_length
    texts: list[str]


def completion_mask(ids: torch.Tensor, stop_ids: list[int], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask up to and including each row's first stop token, rows with no stop token within `limit`)."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids, device=ids.device))
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    first = torch.where(is_stop, positions, ids.shape[1]).min(dim=1).values
    mask = (positions <= first.unsqueeze(1)).long()
    truncated = (first >= ids.shape[1]) & (ids.shape[1] >= limit)
    return mask, truncated


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    *,
    seeds: list[int] | None,
    stop_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    synced_gpus: bool = False,
) -> Completions:
    """Complete chat `prompts` (one row each) with `model`: sampled with `seeds`, or greedy when None."""
    from arctic_core.evals import left_padded

    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in left_padded(tokenizer, prompts, stop_ids[0]).items()}
    processors = []
    if seeds is not None:
        processors.append(RowSampler(seeds, device, temperature=temperature, top_p=top_p, top_k=top_k))
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        logits_processor=processors,
        eos_token_id=stop_ids,
        pad_token_id=stop_ids[0],
        use_cache=True,
        synced_gpus=synced_gpus,
    )
    width = inputs["input_ids"].shape[1]
    ids = output[:, width:]
    mask, truncated = completion_mask(ids, stop_ids, max_new_tokens)
    texts = [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(ids, mask)]
    return Completions(inputs["input_ids"], inputs["attention_mask"], ids, mask, truncated, texts)


def training_batch(done: Completions, advantages: torch.Tensor, *, mask_truncated: bool) -> dict[str, Any]:
    """The micro-batch the loss trains on: prompt + completion rows, their positions, the loss mask."""
    input_ids = torch.cat([done.prompt_ids, done.completion_ids], dim=1)
    attention_mask = torch.cat([done.prompt_mask, done.completion_mask], dim=1)
    loss_mask = done.completion_mask.clone()
    if mask_truncated:
        loss_mask[done.truncated] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(dim=1) - 1).clamp(min=0),
        "prompt_width": int(done.prompt_ids.shape[1]),
        "loss_mask": loss_mask,
        "advantages": advantages.to(torch.float32),
        "num_sequences": int(input_ids.shape[0]),
        "num_trainable_tokens": int(loss_mask.sum()),
    }
