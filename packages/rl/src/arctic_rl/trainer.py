"""GRPO (Shao et al. 2024), with Dr. GRPO's and DAPO's variants, on core's one loop.

Each optimizer step: the loader hands this rank its prompts (core's sample loader, so data order,
epochs and resume are core's); `step_batches` (core's rollout seam) samples G
completions per prompt from the current policy (`arctic_rl.rollout`), scores them with the
reward functions (`arctic_rl.rewards`), turns rewards into group-relative advantages and returns
one training micro-batch per prompt micro-batch (its prompts' whole groups: a group is never
split). The loss is the clipped importance-ratio objective with an optional k3 KL to a frozen
reference, aggregated per `loss_type` (`arctic_rl.loss`, formulas there and in docs/rl.md);
`micro_batch_weight` makes core's weighted mean the step's formula over every rank. With
`num_iterations` = μ > 1 each rollout batch is trained on for μ optimizer steps (its prompts are
stored μ times in a row), against the log-probs of the policy that sampled it.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from arctic_core.engine.loop import model_inputs
from arctic_core.trainer import LossOutput, Trainer
from arctic_core.verify.base import LOSS_SCALE
from arctic_rl import loss as grpo
from arctic_rl.config import GRPOConfig
from arctic_rl.data import PROMPT, ROW, PromptDataFactory, collate, decode
from arctic_rl.evaluate import Scorer
from arctic_rl.rollout import Completions, row_seed, training_batch


@attrs.define
class Rollout:
    """The batches generated for one rollout cycle (reused for `num_iterations` steps)."""

    cycle: int
    prompts: list[int]
    """The training rows (indices) it was sampled for."""
    batches: list[dict[str, Any]]


class GRPOTrainer(Trainer[GRPOConfig]):
    """Group Relative Policy Optimization with verifiable rewards."""

    name = "grpo"
    config_class: ClassVar[type[GRPOConfig]] = GRPOConfig
    reports_perplexity: ClassVar[bool] = False
    data_factory_class: ClassVar[Any] = PromptDataFactory

    def __init__(self, config: GRPOConfig, *, local_rank: int | None = None):
        super().__init__(config, local_rank=local_rank)
        self.reference: Any = None
        """The frozen KL reference (`beta > 0` only)."""
        self.rewards: list[tuple[str, Any]] = []
        self.rollout: Rollout | None = None
        self.rollout_stats: dict[str, float] = {}
        self.timing: dict[str, float] = {}

    # --- setup --------------------------------------------------------------------------------

    def setup_data(self) -> None:
        """Prompt rows as stored global batches (each μ times), eval prompts, the reward functions, the reference."""
        from arctic_core.engine.loaders import PreBatched
        from arctic_rl.rewards import load_rewards

        config = self.config
        factory_class = self.data_factory_class or PromptDataFactory
        factory = factory_class(config, self.tokenizer, run_dir=Path(config.run_dir))
        table = factory.train_dataset()
        order = list(range(len(table)))
        random.Random(config.data.seed).shuffle(order)
        table = table.select(order).add_column(ROW, list(range(len(order))))  # seeds each completion
        held_out = factory.eval_dataset()
        eval_rows = [decode(row) for row in held_out] if held_out is not None else []
        if config.num_iterations == 1:
            self.train_dataset = table  # core's sample loader: sharded, reshuffled every epoch
        else:  # each global batch stored μ times in a row, trained on for μ steps
            rows = [decode(row) for row in table]
            per_step = self.topology.dp_size * config.gradient_accumulation_steps * config.micro_batch_size
            self.train_dataset = PreBatched(
                [
                    {"rows": rows[start : start + per_step]}
                    for start in range(0, len(rows) - per_step + 1, per_step)
                    for _ in range(config.num_iterations)
                ]
            )
        self.eval_dataset = eval_rows or None
        self.collate = collate
        self.rewards = load_rewards(config.reward_funcs)
        if config.beta > 0:
            self.reference = self.build_frozen_model(config.ref_model or config.model)

    # --- rollouts (core's seam) ---------------------------------------------------------------

    def step_batches(self, loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """This step's training micro-batches: a fresh rollout every `num_iterations` steps, else the cycle's."""
        start = time.perf_counter()
        step, mu = self.global_step, self.config.num_iterations
        cycle = step - step % mu
        prompts = [row[ROW] for batch in loaded for row in batch["rows"]]
        if self.rollout is None or self.rollout.cycle != cycle or self.rollout.prompts != prompts:
            # (resumed inside a cycle: the cycle's prompts re-sampled with its seeds, on the current weights)
            self.rollout = Rollout(cycle, prompts, self.generate_rollout(loaded, cycle))
        now = time.perf_counter()
        self.timing = {"rollout_seconds": now - start, "update_start": now}
        return self.rollout.batches

    def generate_rollout(self, loaded: list[dict[str, Any]], cycle: int) -> list[dict[str, Any]]:
        """Sample, score and batch every prompt micro-batch of this rank; the step's reward statistics."""
        config, G = self.config, self.config.num_generations
        model = self.engine.module
        was_training = model.training
        model.eval()
        scorer = self.scorer()
        done, rewards = [], []
        for batch in loaded:
            rows = batch["rows"]
            seeds = [row_seed(config.seed, cycle, row[ROW], j) for row in rows for j in range(G)]
            completions = scorer.sample([row[PROMPT] for row in rows for _ in range(G)], seeds)
            done.append(completions)
            rewards.append(scorer.score_with(rows, completions.texts, G))
        model.train(was_training)
        totals = [scorer.total_reward(r).view(-1, G) for r in rewards]
        batch_std = self.reward_statistics(done, rewards, totals)
        batches = []
        for completions, total in zip(done, totals):
            advantages = grpo.group_advantages(total, config.scale_rewards, batch_std).reshape(-1)
            batch = training_batch(completions, advantages, mask_truncated=config.mask_truncated_completions)
            batches.append(self.with_fixed_log_probs(batch))
        return batches

    def scorer(self) -> Scorer:
        """The current policy with the tokenizer and the reward functions (rollouts and evaluation)."""
        return Scorer(
            self.engine.module,
            self.tokenizer,
            self.config,
            self.rewards,
            rank=self.rank,
            world_size=self.world_size,
            synced_gpus=self.zero_stage == 3 and self.world_size > 1,
        )

    @torch.no_grad()
    def with_fixed_log_probs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch on the device with the sampling policy's log-probs (μ > 1) and the reference's (β > 0)."""
        from arctic_core.engine.loop import to_device

        batch = to_device(batch, self.device)
        width, temperature = batch["prompt_width"], self.config.temperature
        if self.config.num_iterations > 1:
            logits = self.forward(batch).logits
            batch["old_log_probs"] = grpo.completion_log_probs(
                logits, batch["input_ids"], width, temperature
            )[0]
        if self.reference is not None:
            logits = self.reference(**model_inputs(batch), use_cache=False).logits
            batch["ref_log_probs"] = grpo.completion_log_probs(
                logits, batch["input_ids"], width, temperature
            )[0]
        return batch

    def reward_statistics(
        self, done: list[Completions], rewards: list[torch.Tensor], totals: list[torch.Tensor]
    ) -> float:
        """The step's reward and length statistics over every rank (kept for the metrics line); the batch std."""
        from arctic_core.engine import distributed
        from arctic_core.gather import agree_max

        total = torch.cat([t.reshape(-1) for t in totals])
        groups = torch.cat(totals)
        per_func = torch.cat(rewards)
        valid = ~torch.isnan(per_func)
        func_values = torch.nan_to_num(per_func, nan=0.0)
        lengths = torch.cat([c.completion_mask.sum(dim=1) for c in done]).double()
        truncated = torch.cat([c.truncated for c in done]).double()
        local = [
            float(total.numel()),
            float(total.sum()),
            float((total**2).sum()),
            float(groups.std(dim=1).sum()),
            float((groups.std(dim=1) == 0).sum()),
            float(groups.shape[0]),
            float(lengths.sum()),
            float(truncated.sum()),
        ]
        local += (
            func_values.sum(0).tolist() + (func_values**2).sum(0).tolist() + valid.sum(0).double().tolist()
        )
        sums = distributed.all_reduce_sum(local)
        n, s, s2, group_std, zero_std, group_count, length, cut = sums[:8]
        F = len(self.rewards)
        f_sum, f_sq, f_n = sums[8 : 8 + F], sums[8 + F : 8 + 2 * F], sums[8 + 2 * F :]
        mean = s / n
        batch_std = math.sqrt(max(s2 - n * mean**2, 0.0) / max(n - 1, 1))
        stats = {
            "reward": mean,
            "reward_std": group_std / group_count,
            "frac_reward_zero_std": zero_std / group_count,
            "completions/mean_length": length / n,
            "completions/truncated_ratio": cut / n,
            "completions/max_length": float(agree_max(int(lengths.max()))),
        }
        for (name, _), fs, fq, fn in zip(self.rewards, f_sum, f_sq, f_n):
            m = fs / fn if fn else math.nan
            stats[f"rewards/{name}/mean"] = m
            stats[f"rewards/{name}/std"] = math.sqrt(max(fq / fn - m * m, 0.0)) if fn else math.nan
        self.rollout_stats = stats
        return batch_std

    # --- the loss -----------------------------------------------------------------------------

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        """dapo: the micro-batch's completion tokens (a token mean over the step); else its sequences."""
        if self.config.loss_type == "dapo":
            return float(batch["loss_mask"].sum())
        return float(batch["num_sequences"])

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        """The clipped objective (plus β·KL) over the micro-batch's completion tokens, aggregated per loss_type."""
        from arctic_core.kernels import select

        config = self.config
        logits = self.forward(batch).logits
        log_probs, entropy = grpo.completion_log_probs(
            logits, batch["input_ids"], batch["prompt_width"], config.temperature
        )
        old = batch.get("old_log_probs")
        token_loss = select("rl.grpo_token_loss", config.kernels, log_probs.device)
        losses, kl, clipped = token_loss(
            log_probs,
            old if old is not None else log_probs.detach(),
            batch.get("ref_log_probs"),
            batch["advantages"],
            epsilon=config.epsilon,
            epsilon_high=config.clip_high,
            beta=config.beta,
        )
        mask = batch["loss_mask"]
        value = grpo.aggregate(losses, mask, config.loss_type, config.max_completion_length)
        metrics = {
            "kl": grpo.masked_mean(kl, mask),
            "clip_ratio": grpo.masked_mean(clipped.double(), mask),
            "entropy": grpo.masked_mean(entropy, mask),
            # the loss's size before its terms cancel (at μ = 1 the loss itself is 0 by construction)
            LOSS_SCALE: grpo.aggregate(
                losses.detach().abs(), mask, config.loss_type, config.max_completion_length
            ),
        }
        return LossOutput(value, weight=float(mask.sum()), metrics=metrics)

    def step_metrics(self) -> dict[str, Any]:
        """The rollout's reward and length statistics, and the step's rollout and update seconds."""
        update = time.perf_counter() - self.timing.get("update_start", time.perf_counter())
        return {
            **self.rollout_stats,
            "rollout_seconds": self.timing.get("rollout_seconds", 0.0),
            "update_seconds": update,
        }

    # --- evaluation ---------------------------------------------------------------------------

    def subscribe(self, events: Any) -> None:
        """With eval prompts: the held-out rewards before (a fresh run) and after training, logged and saved
        (`generation_eval.before_training` / `after_training` switch them, as they do core's accuracy)."""
        settings = self.config.generation_eval
        if self.eval_dataset is None:
            return
        if settings.before_training and self.resume_point is None:
            events.subscribe("train_start", lambda: self.held_out_rewards("before training"))
        if settings.after_training:
            events.subscribe("train_end", lambda: self.held_out_rewards("after training"))

    def held_out_rewards(self, when: str) -> dict[str, float]:
        """Greedy reward and, over `num_generations` samples per prompt, pass@G and the sampled reward."""
        import json

        from arctic_rl.evaluate import score_prompts

        G = self.config.num_generations
        results = score_prompts(self.scorer(), self.eval_dataset, samples=G)
        self.log.info(
            "held-out reward %s: greedy %.3f, sampled %.3f, pass@%d %.3f (%d prompts)",
            when,
            results["reward"],
            results["sampled_reward"],
            G,
            results[f"pass@{G}"],
            len(self.eval_dataset),
        )
        if self.rank == 0:
            with (Path(self.config.run_dir) / "rl_eval.jsonl").open("a") as out:
                out.write(json.dumps({"when": when, "step": self.global_step, **results}) + "\n")
        return results

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the eval prompts, scored by the reward functions (each prompt once)."""
        from arctic_rl.evaluate import score_prompts

        results = score_prompts(self.scorer(), self.eval_dataset, samples=0)
        return {f"eval_{key}": value for key, value in results.items()}


class RLTrainer(GRPOTrainer):
    """`type = "rl"` (`arctic rl train`): the same GRPO trainer under the package's command name."""

    name = "rl"
