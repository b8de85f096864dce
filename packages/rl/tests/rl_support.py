"""Shared pieces of the arctic-rl tests: the bundled policy, a prompt file, recipes, a recording trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from arctic_core.engine.deepspeed_config import deep_merge
from arctic_core.recipe import load_recipe
from arctic_rl import reward
from arctic_rl.trainer import GRPOTrainer

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "packages/rl/recipes/quickstart"


@reward("test_length")
def length_reward(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """A reward with variance in every group (so every advantage is non-zero): the completion's length."""
    return [len(c) / 10 for c in completions]


def write_prompts(path: Path, count: int = 16) -> Path:
    """The first `count` rows of the quickstart's training prompts."""
    lines = (QUICKSTART / "train.jsonl").read_text().splitlines()[:count]
    path.write_text("\n".join(lines) + "\n")
    return path


def recipe(prompts: Path, out: Path, **changes: Any) -> dict[str, Any]:
    base = {
        "type": "grpo",
        "micro_batch_size": 4,
        "train_iters": 2,
        "seed": 0,
        "num_generations": 4,
        "max_completion_length": 6,
        "reward_funcs": ["test_length"],
        "model": {
            "name_or_path": str(QUICKSTART / "policy"),
            "dtype": "fp32",
            "disable_activation_checkpoint": True,
        },
        "data": {"sources": [str(prompts)], "dl_num_workers": 0, "max_length": 64},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "logger": {"output_dir": str(out), "progress_bar": False},
        "deepspeed": {"zero_optimization": {"stage": 0}},
    }
    return deep_merge(base, changes)


class Recording(GRPOTrainer):
    """GRPO that keeps each step's complete gradient and rollout token ids (not registered: no `name`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.grads: list[torch.Tensor] = []
        self.rollouts: list[list[list[int]]] = []
        """Each step's completions (token ids, up to the stop token), in the step's row order."""

    def before_optimizer_step(self) -> None:
        params = [p for p in self.engine.module.parameters() if p.grad is not None]
        self.grads.append(torch.cat([p.grad.detach().reshape(-1).clone() for p in params]))
        assert self.rollout is not None
        self.rollouts.append([completion for b in self.rollout.batches for completion in completions(b)])


def completions(batch: dict[str, Any]) -> list[list[int]]:
    """The completion token ids of each row of a training batch (its loss mask's tokens, unmasked)."""
    width = batch["prompt_width"]
    ids, mask = batch["input_ids"][:, width:].cpu(), batch["attention_mask"][:, width:].cpu()
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


def run(prompts: Path, out: Path, **changes: Any) -> Recording:
    loaded = load_recipe(None, data=recipe(prompts, out, **changes))
    trainer = Recording(loaded.config)
    trainer.train()
    return trainer
