"""Preference tuning: DPO (Rafailov et al. 2023), conservative DPO and IPO (Azar et al. 2023).

For each pair (prompt x, chosen y_c, rejected y_r), with π the policy and π_ref a frozen reference:

    logπ(y|x)  = sum over the answer's tokens of log π(token | prefix)    (ipo: the per-token mean)
    h          = [logπ(y_c|x) − logπ(y_r|x)] − [logπ_ref(y_c|x) − logπ_ref(y_r|x)]
    sigmoid:   loss = −(1−ε)·logσ(β·h) − ε·logσ(−β·h)         (ε = label_smoothing; 0 is plain DPO)
    ipo:       loss = (h − 1/(2β))²
    rewards:   r = β·(logπ(y|x) − logπ_ref(y|x)) per side; accuracy = share of pairs with r_c > r_r

A micro-batch of B pairs is one policy forward over 2B rows, [chosen rows; rejected rows]
(`arctic_sft.dpo_data`); its loss is the mean over its pairs. Micro-batches carry no
`num_trainable_tokens`, so the loop weights them equally, and since each holds
`micro_batch_size` pairs, a step's loss is the mean over all its pairs on all ranks.

The reference is `[ref_model]`, or `[model]` built a second time (the same weights, or the same
seeded initialisation). It never has an optimizer: under ZeRO-3 it is partitioned like the
policy and wrapped by `deepspeed.initialize` without one (its forward gathers parameters
collectively, so every rank runs as many reference forwards); under stages 0-2 it is a plain
frozen module on the device. With `precompute_ref_log_probs` it scores every train and eval
pair once, before the loaders exist, the scores become dataset columns, and it is freed.
"""

from __future__ import annotations

import gc
from typing import Any, ClassVar

import attrs
import torch

from arctic_core.engine import distributed
from arctic_sft.dpo_config import DPOConfig
from arctic_sft.dpo_data import REF_COLUMNS, DPODataFactory
from arctic_sft.dpo_loss import preference_losses, sequence_log_probs
from arctic_sft.trainer import SFTTrainer

STATS = (
    "pairs",
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracy",
    "rewards/margin",
    "logps/chosen",
    "logps/rejected",
)
"""Per-pair sums kept for a step's (or an evaluation's) metrics; all but `pairs` are reported as means."""


class DPOTrainer(SFTTrainer):
    name = "dpo"
    config_class: ClassVar[type[DPOConfig]] = DPOConfig  # type: ignore[assignment]
    data_factory_class: ClassVar[Any] = DPODataFactory
    config: DPOConfig

    def __init__(self, config: DPOConfig, *, local_rank: int | None = None):
        super().__init__(config, local_rank=local_rank)
        self.ref_model: torch.nn.Module | None = None
        self.ref_engine: Any = None
        self._step_stats = torch.zeros(len(STATS), dtype=torch.float64)

    # --- setup --------------------------------------------------------------------------------

    def setup_data(self) -> None:
        """Preference datasets; then the reference model (or its precomputed log-probs)."""
        super().setup_data()
        self.setup_reference()

    def setup_reference(self) -> None:
        """Build the frozen reference; with `precompute_ref_log_probs`, score the data with it and free it."""
        self.ref_model = self.build_reference()
        if not self.config.precompute_ref_log_probs:
            return
        self.train_dataset = self.with_reference_log_probs(self.train_dataset)
        if self.eval_dataset is not None:
            self.eval_dataset = self.with_reference_log_probs(self.eval_dataset)
        self.ref_model = self.ref_engine = None
        gc.collect()

    def reference_ds_config(self) -> dict[str, Any]:
        """The policy's precision and ZeRO-3 partitioning (stages 0-2: none), without optimizer settings."""
        ds = self.ds_config
        zero = dict(ds.get("zero_optimization", {})) if self.zero_stage == 3 else {"stage": 0}
        zero.pop("offload_optimizer", None)
        keys = (
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "train_batch_size",
            "bf16",
            "fp16",
        )
        return {
            **{k: ds[k] for k in keys if k in ds},
            "zero_optimization": zero,
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }

    def build_reference(self) -> torch.nn.Module:
        """`[ref_model]` or a second build of `[model]`: frozen, eval mode, no activation checkpointing."""
        from arctic_core.engine.model import build_model

        source = self.config.ref_model or self.config.model
        source = attrs.evolve(source, disable_activation_checkpoint=True, peft_config=None)
        ds = self.reference_ds_config()
        model = build_model(source, ds, seed=self.config.seed, auto_class=self.auto_model_class)
        model.requires_grad_(False)
        if self.zero_stage == 3:
            import deepspeed

            self.ref_engine, *_ = deepspeed.initialize(model=model, config=ds, dist_init_required=False)
            model = self.ref_engine.module
        else:
            model.to(self.device)
        model.eval()
        self.log.info("reference model: %s", source.name_or_path)
        return model

    @torch.no_grad()
    def with_reference_log_probs(self, dataset: Any) -> Any:
        """`dataset` with the reference's sequence log-prob sums as columns; each rank scores a share."""
        from arctic_core.engine.loop import to_device

        size, world, mbs = len(dataset), self.world_size, self.config.micro_batch_size
        mine = list(range(self.rank, size, world))
        rounds = max(-(-len(range(r, size, world)) // mbs) for r in range(world))
        scores = torch.zeros((size, 2), dtype=torch.float64, device=self.device)
        for i in range(rounds):  # every rank runs as many forwards (ZeRO-3 gathers collectively)
            indices = mine[i * mbs : (i + 1) * mbs] or [0]
            batch = to_device(self.collate([dataset[j] for j in indices]), self.device)
            chosen, rejected = self._reference_forward(batch)
            if mine[i * mbs : (i + 1) * mbs]:
                scores[indices] = torch.stack([chosen, rejected], dim=1).double()
        if world > 1:
            torch.distributed.all_reduce(scores, op=torch.distributed.ReduceOp.SUM)
        columns = scores.cpu().tolist()
        for k, key in enumerate(REF_COLUMNS):
            values = [row[k] for row in columns]
            dataset = (
                dataset.add_column(key, values)
                if hasattr(dataset, "add_column")
                else [{**row, key: v} for row, v in zip(dataset, values)]
            )
        self.log.info("precomputed reference log-probs of %d pairs", size)
        return dataset

    # --- the loss -----------------------------------------------------------------------------

    def _reference_forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.ref_model is not None, "the reference model was freed (precompute_ref_log_probs)"
        with torch.no_grad():
            sums, _ = sequence_log_probs(
                self.ref_model, batch, chunk_size=self.config.loss_chunk_size, call=self.ref_engine
            )
        pairs = sums.shape[0] // 2
        return sums[:pairs], sums[pairs:]

    def pair_outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair losses `[B]` (with grad) and the pair statistics `[B, len(STATS)]` (without)."""
        sums, counts = sequence_log_probs(
            self.model, batch, chunk_size=self.config.loss_chunk_size, call=self.engine
        )
        pairs = sums.shape[0] // 2
        if REF_COLUMNS[0] in batch:
            ref = torch.stack([batch[REF_COLUMNS[0]], batch[REF_COLUMNS[1]]]).to(sums)
        else:
            ref = torch.stack(self._reference_forward(batch)).to(sums)
        policy = torch.stack([sums[:pairs], sums[pairs:]])
        if self.config.loss_type == "ipo":  # IPO compares per-token mean log-probs
            lengths = torch.stack([counts[:pairs], counts[pairs:]]).clamp(min=1).to(sums)
            policy, ref = policy / lengths, ref / lengths
        losses, chosen_r, rejected_r = preference_losses(
            policy[0],
            policy[1],
            ref[0],
            ref[1],
            beta=self.config.beta,
            loss_type=self.config.loss_type,
            label_smoothing=self.config.label_smoothing,
        )
        stats = torch.stack(
            [
                torch.ones_like(chosen_r),
                losses.detach(),
                chosen_r,
                rejected_r,
                (chosen_r > rejected_r).to(chosen_r),
                chosen_r - rejected_r,
                policy[0].detach(),
                policy[1].detach(),
            ],
            dim=1,
        )
        return losses, stats.double()

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The micro-batch's mean preference loss over its pairs; its statistics count towards the step's."""
        losses, stats = self.pair_outputs(batch)
        self._step_stats += stats.sum(dim=0).cpu()
        return losses.mean()

    # --- metrics ------------------------------------------------------------------------------

    def _means(self, sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
        totals = distributed.all_reduce_sum(sums.tolist())
        pairs = max(totals[0], 1.0)
        return {prefix + name: value / pairs for name, value in zip(STATS[1:], totals[1:])}

    def step_metrics(self) -> dict[str, Any]:
        """Means over the step's pairs (every micro-batch, every rank) of the rewards and log-probs."""
        metrics = self._means(self._step_stats)
        metrics.pop("loss")
        self._step_stats.zero_()
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss, rewards, reward accuracy and margin over the eval pairs, each pair counted once."""
        self.engine.eval()
        sums = torch.zeros(len(STATS), dtype=torch.float64)
        for batch, counts in self.eval_rounds():
            stats = self.pair_outputs(batch)[1]
            if counts:
                sums += stats.sum(dim=0).cpu()
        self.engine.train()
        return self._means(sums, prefix="eval_")
