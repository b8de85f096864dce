"""Recipes of the `grpo` method: core's keys plus the rollout, reward and objective settings.

Key names follow TRL's `GRPOConfig` where it has one (`num_generations`, `temperature`, `top_p`,
`max_completion_length`, `reward_funcs`, `reward_weights`, `scale_rewards`, `loss_type`,
`epsilon`, `epsilon_high`, `beta`, `num_iterations`, `mask_truncated_completions`).
`micro_batch_size` counts prompts: each micro-batch trains on its prompts' whole groups.
"""

from __future__ import annotations

import attrs

from arctic_core.config import (
    DataConfig,
    ModelConfig,
    TrainerConfig,
    at_least,
    between,
    greater_than,
    one_of,
    setting,
)
from arctic_core.errors import FieldError

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


@attrs.frozen(kw_only=True)
class GRPODataConfig(DataConfig):
    """[data] for prompts: never packed (the rollouts are the training rows)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.pack_samples:
            raise FieldError("pack_samples", "grpo trains on its own rollouts, never packed; set it to false")


@attrs.frozen(kw_only=True)
class GRPOConfig(TrainerConfig):
    """A GRPO recipe: prompts from [data], G sampled completions per prompt, rewards, clipped objective."""

    type: str = setting("grpo", doc="Method or registered trainer name.")
    data: GRPODataConfig = setting(factory=GRPODataConfig, doc="[data] table: prompt sources.")
    num_generations: int = setting(
        8, doc="Completions sampled per prompt (the group size G).", check=at_least(2)
    )
    temperature: float = setting(1.0, doc="Sampling temperature of the rollouts.", check=greater_than(0.0))
    top_p: float = setting(
        1.0, doc="Nucleus sampling: keep the smallest set of tokens of this mass.", check=between(0.0, 1.0)
    )
    top_k: int = setting(0, doc="Sample among the k likeliest tokens only (0: all).", check=at_least(0))
    max_completion_length: int = setting(
        256, doc="Most tokens generated per completion; longer ones are cut (truncated).", check=at_least(1)
    )
    reward_funcs: list[str] = setting(
        factory=lambda: ["exact_match"],
        doc="Reward functions by registered name (built-ins, or the recipe's `code:` file / an installed module).",
    )
    reward_weights: list[float] | None = setting(
        None, doc="One weight per reward function (unset: all 1); the reward is their weighted sum."
    )
    reward_timeout: float = setting(
        30.0,
        doc="Seconds a reward function may take for one batch before the run stops with an error.",
        check=greater_than(0.0),
    )
    sql_timeout: float = setting(
        5.0,
        doc="sql_execution: seconds a predicted or gold query may run (past it: reward 0).",
        check=greater_than(0.0),
    )
    scale_rewards: str = setting(
        "group",
        doc="Advantage scale: group (the group's std, GRPO), batch (the step's std) or none (Dr. GRPO).",
        check=one_of(*SCALE_REWARDS),
    )
    loss_type: str = setting(
        "grpo",
        doc="grpo (per-sequence token mean, then mean), dr_grpo (sum / (G·max_completion_length)) or dapo (token mean over the step).",
        check=one_of(*LOSS_TYPES),
    )
    epsilon: float = setting(
        0.2, doc="Lower clip: the ratio is kept above 1 − epsilon.", check=between(0.0, 1.0)
    )
    epsilon_high: float | None = setting(
        None,
        doc="Upper clip: the ratio is kept below 1 + epsilon_high (DAPO's clip-higher; unset: epsilon).",
        check=at_least(0.0),
    )
    beta: float = setting(
        0.0,
        doc="Weight of the KL to the frozen reference (k3 estimator); 0: no reference is built.",
        check=at_least(0.0),
    )
    num_iterations: int = setting(
        1,
        doc="Optimizer steps on each rollout batch (μ); above 1 the old policy's log-probs are kept.",
        check=at_least(1),
    )
    mask_truncated_completions: bool = setting(
        False, doc="Leave completions that hit max_completion_length out of the loss."
    )
    ref_model: ModelConfig | None = setting(
        None, doc="[ref_model] table: the KL reference; unset: a frozen copy of [model] (only when beta > 0)."
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise FieldError(
                "reward_weights",
                f"needs one weight per reward function ({len(self.reward_funcs)}), got {len(self.reward_weights)}",
            )
        if not self.reward_funcs:
            raise FieldError("reward_funcs", "needs at least one reward function")

    @property
    def clip_high(self) -> float:
        """The upper clip epsilon (epsilon_high, else epsilon)."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def weights(self) -> list[float]:
        """One weight per reward function."""
        return (
            list(self.reward_weights) if self.reward_weights is not None else [1.0] * len(self.reward_funcs)
        )
