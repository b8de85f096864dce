"""Preference tuning: DPO (Rafailov et al. 2023), conservative DPO and IPO (Azar et al. 2023).

For each pair (prompt x, chosen y_c, rejected y_r), with π the policy and π_ref a frozen reference:

    logπ(y|x)  = sum over the answer's tokens of log π(token | prefix)    (ipo: the per-token mean)
    h          = [logπ(y_c|x) − logπ(y_r|x)] − [logπ_ref(y_c|x) − logπ_ref(y_r|x)]
    sigmoid:   loss = −(1−ε)·logσ(β·h) − ε·logσ(−β·h)         (ε = label_smoothing; 0 is plain DPO)
    ipo:       loss = (h − 1/(2β))²
    rewards:   r = β·(logπ(y|x) − logπ_ref(y|x)) per side; accuracy = share of pairs with r_c > r_r

A micro-batch of B pairs is one policy forward over 2B rows, [chosen rows; rejected rows]
(`arctic_sft.dpo_data`); its loss is the mean over its pairs and its weight is B
(`micro_batch_weight`), so a step's loss is the mean over all its pairs on all ranks. The pair
statistics (rewards, accuracy, margin, log-probs) are the loss's metrics: per-pair means the
loop averages over the step and over the evaluation.

The reference is `[ref_model]`, or `[model]` built a second time (the same weights, or the same
seeded initialisation), as a frozen companion (`Trainer.build_frozen_model`: no optimizer,
partitioned like the policy under ZeRO-3, never checkpointed). With `precompute_ref_log_probs`
it scores every train and eval pair once, before the loaders exist, the scores become dataset
columns, and it is freed.

Under sequence parallelism (arctic-alst, `sequence_parallel_size` = S > 1) each rank of a group
holds a slice of every row, so its sums are partial: `sequence_parallel_sum` adds them over the
group (`arctic_core.gather.all_reduce_sum_with_grad`, whose backward is the summed gradient),
for the policy, the reference and the answer lengths, before the loss. Every rank of a group then
computes the same loss and statistics with the same weight (its pairs), so the loop's mean over
all ranks and DeepSpeed's gradient reduction give exactly the unsharded step. Precomputing the
reference's scores runs before the model (and Ulysses attention) is set up: on whole rows, each
rank a share of the pairs.
"""

from __future__ import annotations

import gc
from typing import Any, ClassVar

import torch

from arctic_core.gather import all_reduce_sum_with_grad
from arctic_core.losses import sequence_log_probs
from arctic_core.trainer import LossOutput
from arctic_sft.config import SFTConfig
from arctic_sft.dpo_config import DPOConfig
from arctic_sft.dpo_data import REF_COLUMNS, DPODataFactory
from arctic_sft.dpo_loss import preference_losses
from arctic_sft.trainer import SFTTrainer

STATS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracy",
    "rewards/margin",
    "logps/chosen",
    "logps/rejected",
)
"""Per-pair statistics, reported as means over a step's (or an evaluation's) pairs."""


class DPOTrainer(SFTTrainer[DPOConfig]):
    name = "dpo"
    config_class: ClassVar[type[SFTConfig]] = DPOConfig
    data_factory_class: ClassVar[Any] = DPODataFactory
    reports_perplexity: ClassVar[bool] = False

    def __init__(self, config: DPOConfig, *, local_rank: int | None = None):
        super().__init__(config, local_rank=local_rank)
        self.reference: Any = None
        """The frozen reference (`arctic_core.engine.frozen.FrozenModel`); None once precomputed."""

    # --- setup --------------------------------------------------------------------------------

    def setup_data(self) -> None:
        """Preference datasets; then the reference model (or its precomputed log-probs)."""
        super().setup_data()
        self.setup_reference()

    def setup_reference(self) -> None:
        """Build the frozen reference; with `precompute_ref_log_probs`, score the data with it and free it."""
        self.reference = self.build_frozen_model(self.config.ref_model or self.config.model)
        if not self.config.precompute_ref_log_probs:
            return
        self.train_dataset = self.with_reference_log_probs(self.train_dataset)
        if self.eval_dataset is not None:
            self.eval_dataset = self.with_reference_log_probs(self.eval_dataset)
        self.reference = None
        gc.collect()

    @property
    def ref_model(self) -> torch.nn.Module | None:
        """The reference network itself (None once its log-probs were precomputed)."""
        return self.reference.module if self.reference is not None else None

    @torch.no_grad()
    def with_reference_log_probs(self, dataset: Any) -> Any:
        """`dataset` with the reference's sequence log-prob sums as columns; each rank scores a share."""
        from arctic_core.engine.loop import to_device
        from arctic_core.gather import sharded_map

        size, world, mbs = len(dataset), self.world_size, self.config.micro_batch_size
        mine = list(range(self.rank, size, world))
        chunks = [mine[start : start + mbs] for start in range(0, len(mine), mbs)]

        def score(indices: list[int]) -> torch.Tensor:
            batch = to_device(self.collate([dataset[j] for j in indices]), self.device)
            return torch.stack(self._reference_forward(batch, sharded=False), dim=1).double()

        scores = torch.zeros((size, 2), dtype=torch.float64, device=self.device)
        # every rank runs as many forwards (ZeRO-3 gathers collectively); fillers score pair 0
        for indices, pair_scores in zip(chunks, sharded_map(score, chunks, filler=lambda: [0])):
            scores[indices] = pair_scores
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

    def sequence_parallel_sum(self, partial: torch.Tensor) -> torch.Tensor:
        """Per-row sums over this rank's sequence-parallel group (each rank holds a slice of every row).

        Differentiable: the backward hands each rank's partial the gradient summed over the group
        (see `arctic_core.gather.all_reduce_sum_with_grad`). Without sequence parallelism: `partial`.
        """
        if self.topology is None or self.topology.sequence_parallel_size == 1:
            return partial
        return all_reduce_sum_with_grad(partial, self.groups.sp_group)

    def _reference_forward(
        self, batch: dict[str, Any], *, sharded: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's (chosen, rejected) sums; `sharded`: a prepared batch (summed over the group)."""
        if self.reference is None:
            raise RuntimeError("the reference model was freed after precompute_ref_log_probs")
        with torch.no_grad():
            sums, _ = sequence_log_probs(
                self.reference.module,
                batch,
                chunk_size=self.config.loss_chunk_size,
                call=self.reference,
                kernels=self.config.kernels,
            )
            if sharded:
                sums = self.sequence_parallel_sum(sums)
        pairs = sums.shape[0] // 2
        return sums[:pairs], sums[pairs:]

    def pair_outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair losses `[B]` (with grad) and the pair statistics `[B, len(STATS)]` (without)."""
        sums, counts = sequence_log_probs(
            self.model,
            batch,
            chunk_size=self.config.loss_chunk_size,
            call=self.engine,
            kernels=self.config.kernels,
        )
        sums, counts = self.sequence_parallel_sum(sums), self.sequence_parallel_sum(counts)
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

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        """Pairs: the loss is a mean over pairs (under sequence parallelism, each rank of a group counts them)."""
        return float(batch["num_pairs"])

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        """The micro-batch's mean preference loss over its pairs, with the pairs' mean statistics."""
        losses, stats = self.pair_outputs(batch)
        means = stats.mean(dim=0).tolist()
        return LossOutput(losses.mean(), metrics=dict(zip(STATS, means)))
