"""Exact greedy speculative decoding with a speculator, and the acceptance measures.

One round, batch 1, with the base model's KV cache holding every token before x (the base model's
greedy next token, from hidden state h):

1. draft: the speculator's heads run from h and x, each reading the previous head's greedy token:
   d_1 ... d_k;
2. verify: one base forward over [x, d_1 ... d_k] with the cache gives the base's greedy token
   g_j after each of them;
3. accept the longest prefix with d_j = g_{j-1}: m tokens; emit x, d_1 ... d_m, and g_m becomes
   the next x (so every round emits at least one token);
4. roll the cache back to the accepted tokens (`DynamicCache.crop`), h = the hidden state at d_m.

Every emitted token is the base model's argmax given the emitted prefix, so the output is the
plain greedy decoding's, token for token (up to floating-point ties). `greedy_decode` is that
plain decoding (one base forward per token, same cache), the baseline for the speed-up.

`teacher_forced_acceptance` measures, over the base model's own greedy continuations, head i's
accuracy and its acceptance p_i = P(head i right | heads before it right) with the true tokens
fed in (exactly what a drafting round sees while the heads agree), and the expected accepted
length tau = sum_k prod_{i<=k} p_i.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from arctic_speculator.modeling import Speculator


@dataclass
class Decoded:
    """One prompt's decoding: the new tokens, base forwards (prefill included), accepted drafts per round."""

    tokens: list[int]
    forwards: int = 0
    accepted: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _base(model: Any) -> tuple[Any, Any]:
    from arctic_core.losses import backbone_and_head

    return backbone_and_head(model)


_KEYWORDS: dict[Any, str] = {}


def _cache_keyword(cls: Any) -> str:
    """The backbone's keyword for the KV cache: `cache` in newer transformers, `past_key_values` before."""
    if cls not in _KEYWORDS:
        _KEYWORDS[cls] = (
            "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
        )
    return _KEYWORDS[cls]


def _run(backbone: Any, ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """The backbone's last hidden states for `ids`, extending `cache`."""
    out: torch.Tensor = backbone(
        input_ids=ids, use_cache=True, **{_cache_keyword(type(backbone)): cache}
    ).last_hidden_state
    return out


def _roll_back(cache: Any, length: int) -> None:
    """Drop the cache's entries past `length` tokens (`crop(-n)` removes n in every transformers version)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _cut(tokens: list[int], stop: set[int], limit: int) -> tuple[list[int], bool]:
    """`tokens` up to the first stop token (kept) and at most `limit`; whether it ended."""
    for i, t in enumerate(tokens[:limit]):
        if t in stop:
            return tokens[: i + 1], True
    return tokens[:limit], len(tokens) >= limit


@torch.no_grad()
def greedy_decode(
    model: Any, prompt: Sequence[int], max_new_tokens: int, stop: Sequence[int] = ()
) -> Decoded:
    """Plain greedy decoding with a KV cache: one base forward per token."""
    from transformers import DynamicCache

    backbone, head = _base(model)
    start, stops = time.perf_counter(), set(stop)
    cache = DynamicCache()
    ids = torch.tensor([list(prompt)])
    out: list[int] = []
    forwards = 0
    while True:
        hidden = _run(backbone, ids, cache)
        forwards += 1
        token = int(head(hidden[:, -1]).argmax(-1))
        out.append(token)
        if token in stops or len(out) >= max_new_tokens:
            break
        ids = torch.tensor([[token]])
    return Decoded(out, forwards, seconds=time.perf_counter() - start)


@torch.no_grad()
def speculative_decode(
    model: Any,
    speculator: Speculator,
    prompt: Sequence[int],
    max_new_tokens: int,
    stop: Sequence[int] = (),
    k: int | None = None,
) -> Decoded:
    """Greedy speculative decoding (module docstring); output identical to `greedy_decode`'s."""
    from transformers import DynamicCache

    backbone, head = _base(model)
    k = k or speculator.n_predict
    start, stops = time.perf_counter(), set(stop)
    cache = DynamicCache()
    state = _run(backbone, torch.tensor([list(prompt)]), cache)[:, -1]  # h at the last prompt token
    token = head(state).argmax(-1)  # x: the base model's next token
    result = Decoded([], forwards=1)
    out, done = [int(token)], int(token) in stops
    while not done and len(out) < max_new_tokens:
        drafts = speculator.draft(state, token, k)  # [1, k]
        kept = cache.get_seq_length()
        verify = torch.cat([token.view(1, 1), drafts], dim=1)
        states = _run(backbone, verify, cache)[0]
        result.forwards += 1
        greedy = head(states).argmax(-1)  # g_j after x, d_1 ... d_k
        m = 0
        while m < k and int(drafts[0, m]) == int(greedy[m]):
            m += 1
        result.accepted.append(m)
        _roll_back(cache, kept + 1 + m)  # keep x and d_1 ... d_m
        state, token = states[m : m + 1], greedy[m : m + 1]
        out, done = _cut([*out, *drafts[0, :m].tolist(), int(token)], stops, max_new_tokens)
    result.tokens = out[:max_new_tokens]
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def teacher_forced_acceptance(
    model: Any, speculator: Speculator, sequences: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> dict[str, Any]:
    """Per-head accuracy and acceptance, and tau, over (prompt, base greedy continuation) pairs."""
    backbone, _ = _base(model)
    n = speculator.n_predict
    correct_rows = []
    for prompt, continuation in sequences:
        ids = torch.tensor([[*prompt, *continuation]])
        length, first = ids.shape[1], len(prompt) - 1  # position t = first predicts continuation[0]
        steps = length - n - 1
        if steps <= first:
            continue
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state[:, :steps]
        logits = speculator(hidden, ids[:, 1:])  # [n, 1, steps, V]
        guesses = logits.argmax(-1)[:, 0, first:]  # head i at t guesses x_{t+2+i}
        targets = torch.stack([ids[0, first + 2 + i : steps + 2 + i] for i in range(n)])
        correct_rows.append((guesses == targets).T)  # [positions, n]
    if not correct_rows:
        raise ValueError("no continuation is long enough to score every head")
    correct = torch.cat(correct_rows).float()
    leading = torch.cumprod(correct, dim=1)  # heads 0..i all right
    accuracy = correct.mean(0).tolist()
    reached = torch.cat([torch.tensor([float(correct.shape[0])]), leading.sum(0)[:-1]])
    acceptance = (leading.sum(0) / reached.clamp(min=1)).tolist()
    tau = float(leading.sum(1).mean())
    return {"positions": int(correct.shape[0]), "accuracy": accuracy, "acceptance": acceptance, "tau": tau}


def decode_report(plain: Sequence[Decoded], spec: Sequence[Decoded]) -> dict[str, Any]:
    """The real decoding loop's figures: accepted length, tokens per base forward, speed-up, identity."""
    tokens = sum(len(d.tokens) for d in spec)
    rounds = [m for d in spec for m in d.accepted]
    plain_s, spec_s = sum(d.seconds for d in plain), sum(d.seconds for d in spec)
    return {
        "prompts": len(spec),
        "tokens": tokens,
        "identical": all(a.tokens == b.tokens for a, b in zip(plain, spec, strict=True)),
        "mean_accepted_length": sum(rounds) / max(len(rounds), 1),
        "tokens_per_base_forward": tokens / max(sum(d.forwards for d in spec), 1),
        "plain_tokens_per_base_forward": sum(len(d.tokens) for d in plain)
        / max(sum(d.forwards for d in plain), 1),
        "plain_seconds": plain_s,
        "speculative_seconds": spec_s,
        "speedup": plain_s / spec_s if spec_s else 0.0,
    }
