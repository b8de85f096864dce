"""Held-out scoring with the training rewards: greedy reward means, and sampled pass@k.

Each rank scores a share of the prompts (every rank runs as many generate calls:
`arctic_core.gather.sharded_map`, so ZeRO-3's collective gathers stay in step); sums are reduced.
Greedy: one completion per prompt, the mean total reward and each function's mean. Sampled
(`samples` = k > 0): k completions per prompt at the recipe's temperature/top-p, seeded per
prompt; pass@k is the share of prompts with at least one completion whose total reward reaches
`threshold`, and `sampled_reward` the mean over all k·n completions.
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_rl.data import PROMPT
from arctic_rl.rollout import Completions, generate, row_seed

EVAL_SEED_STEP = -1


class Scorer:
    """A policy with its tokenizer and the recipe's reward functions: sample completions and score them."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: Any,
        rewards: list[tuple[str, Any]],
        *,
        rank: int = 0,
        world_size: int = 1,
        synced_gpus: bool = False,
    ):
        self.model, self.tokenizer, self.config, self.rewards = model, tokenizer, config, rewards
        self.rank, self.world_size, self.synced_gpus = rank, world_size, synced_gpus

    def sample(self, prompts: list[Any], seeds: list[int] | None) -> Completions:
        """Completions of chat `prompts` (sampled with `seeds`, one per prompt; greedy when None)."""
        from arctic_core.engine.checkpoint import stop_token_ids

        model, config = self.model, self.config
        return generate(
            model,
            self.tokenizer,
            prompts,
            seeds=seeds,
            stop_ids=stop_token_ids(model.config, model.generation_config, self.tokenizer),
            max_new_tokens=config.max_completion_length,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            synced_gpus=self.synced_gpus,
        )

    def score_with(self, rows: list[dict[str, Any]], texts: list[str], repeats: int) -> torch.Tensor:
        """Rewards `[len(texts), functions]` of `repeats` completions per row in a row (NaN: None)."""
        from arctic_rl.rewards import score_rows

        return score_rows(self.rewards, rows, texts, repeats, self.config)  # type: ignore[no-any-return]

    def total_reward(self, rewards: torch.Tensor) -> torch.Tensor:
        """Σ_f w_f·r_f per completion; a function's None (NaN) counts 0."""
        weights = torch.tensor(self.config.weights, dtype=torch.float64)
        return (torch.nan_to_num(rewards, nan=0.0) * weights).sum(dim=1)


def _chunk_sums(scorer: Any, chunk: list[dict[str, Any]], samples: int, threshold: float) -> torch.Tensor:
    """[greedy total, per-function greedy sums..., passes, sampled total] over one chunk of prompts."""
    greedy = scorer.sample([row[PROMPT] for row in chunk], None)
    rewards = scorer.score_with(chunk, greedy.texts, 1)
    total = scorer.total_reward(rewards)
    values = [float(total.sum()), *torch.nan_to_num(rewards, nan=0.0).sum(0).tolist()]
    if samples:
        seeds = [
            row_seed(scorer.config.seed, EVAL_SEED_STEP, hash_row(r), j)
            for r in chunk
            for j in range(samples)
        ]
        sampled = scorer.sample([row[PROMPT] for row in chunk for _ in range(samples)], seeds)
        sampled_total = scorer.total_reward(scorer.score_with(chunk, sampled.texts, samples)).view(
            -1, samples
        )
        values += [float((sampled_total >= threshold).any(dim=1).sum()), float(sampled_total.sum())]
    return torch.tensor(values, dtype=torch.float64)


def hash_row(row: dict[str, Any]) -> int:
    """A stable number for a prompt (its text), so a prompt's samples do not depend on its rank."""
    import zlib

    return zlib.crc32(repr(row[PROMPT]).encode())


@torch.no_grad()
def score_prompts(
    scorer: Any, rows: list[dict[str, Any]], *, samples: int = 0, threshold: float = 1.0, batch_size: int = 16
) -> dict[str, float]:
    """Greedy reward means (and pass@k with `samples` = k) over `rows`, every rank together.

    `scorer` is a `Scorer` (its model in eval mode while this runs).
    """
    from arctic_core.engine import distributed
    from arctic_core.gather import sharded_map

    was_training = scorer.model.training
    scorer.model.eval()
    mine = rows[scorer.rank :: scorer.world_size]
    chunks = [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]
    width = 1 + len(scorer.rewards) + (2 if samples else 0)
    sums = [0.0] * width
    for part in sharded_map(
        lambda c: _chunk_sums(scorer, c, samples, threshold), chunks, filler=lambda: rows[:1]
    ):
        sums = [a + b for a, b in zip(sums, part.tolist())]
    sums = distributed.all_reduce_sum([*sums, float(len(mine))])
    scorer.model.train(was_training)
    n = max(sums[-1], 1.0)
    results = {"reward": sums[0] / n}
    for k, (name, _) in enumerate(scorer.rewards):
        results[f"rewards/{name}"] = sums[1 + k] / n
    if samples:
        results[f"pass@{samples}"] = sums[width - 2] / n
        results["sampled_reward"] = sums[width - 1] / (n * samples)
    return results


def run(config: Any, prompts_path: Any, *, samples: int, threshold: float) -> dict[str, Any]:
    """`arctic rl eval`: the recipe's model (one process) scored on held-out prompts."""
    from pathlib import Path

    from arctic_core.config import SourceConfig
    from arctic_core.data import load_tokenizer
    from arctic_core.engine.model import build_model
    from arctic_core.errors import RecipeError
    from arctic_rl.data import load_prompts
    from arctic_rl.rewards import load_rewards

    sources = (
        [SourceConfig(name_or_path=str(prompts_path))] if prompts_path else list(config.data.eval_sources)
    )
    if not sources:
        raise RecipeError(
            "no held-out prompts: pass --prompts FILE or set data.eval_sources", path="data.eval_sources"
        )
    torch.manual_seed(config.seed)
    rows = load_prompts(sources, "eval", Path(config.run_dir) / ".scratch-prompts")
    model = build_model(config.model, {}, seed=config.seed)
    scorer = Scorer(model, load_tokenizer(config), config, load_rewards(config.reward_funcs))
    results: dict[str, Any] = {"model": config.model.name_or_path, "prompts": len(rows)}
    results.update(score_prompts(scorer, rows, samples=samples, threshold=threshold))
    return results
