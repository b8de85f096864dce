"""What the `alst` feature does to a run (core calls these hooks; see arctic_core.features).

- `parallel_sizes`: `sequence_parallel_size` = S, so core forms sequence-parallel groups of S
  ranks (its topology), deals each group the same micro-batches and hands DeepSpeed the groups.
- `transform_model`: checks the heads against S and selects the Ulysses attention on the trained
  model (`arctic_alst.ulysses`, registered under its own name); tiles the MLPs
  (`arctic_alst.tiling`); offloads each checkpointed layer input to CPU (`arctic_alst.offload`).
- `transform_frozen`: selects the Ulysses attention on frozen companions (DPO's reference, a
  teacher), which see the same sliced batches. Nothing process-wide is changed.
- `prepare_batch`: this rank's slice of every micro-batch (`arctic_alst.sharding`), with counts
  that keep core's token-weighted loss exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from arctic_core.errors import RecipeError
from arctic_core.features import FeatureHooks

if TYPE_CHECKING:  # this module is imported when a recipe switches alst on: it stays light
    import torch


class ALSTHooks(FeatureHooks):
    @property
    def sp(self) -> int:
        return int(self.config.sequence_parallel_size)  # type: ignore[attr-defined]

    def check(self) -> None:
        from arctic_alst.config import SUPPORTED

        config: Any = self.config
        if self.sp > 1:
            if config.model.attn_implementation not in SUPPORTED:
                raise RecipeError(
                    f"is {config.model.attn_implementation!r}; sequence parallelism supports {', '.join(SUPPORTED)}",
                    path="model.attn_implementation",
                )
            if getattr(config.generation_eval, "path", None) is not None:
                raise RecipeError(
                    "cannot run with sequence_parallel_size > 1 (generation is not sequence-parallel)",
                    path="generation_eval.path",
                )
        if config.activation_checkpoint_cpu_offload and config.model.disable_activation_checkpoint:
            raise RecipeError(
                "needs activation checkpointing, which model.disable_activation_checkpoint turns off",
                path="activation_checkpoint_cpu_offload",
            )

    def check_model_shape(self, shape: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        """The local model's heads against `sequence_parallel_size` (`ulysses.check_heads` at load)."""
        from arctic_alst.config import heads_problem

        heads = shape.get("num_attention_heads")
        if self.sp == 1 or not isinstance(heads, int) or heads < 1:
            return
        kv = shape.get("num_key_value_heads")
        problem = heads_problem(heads, kv if isinstance(kv, int) and kv > 0 else heads, self.sp)
        if problem:
            yield "sequence_parallel_size", f"{problem} ({shape['_path']})"

    def parallel_sizes(self) -> dict[str, int]:
        return {"sequence_parallel_size": self.sp} if self.sp > 1 else {}

    def transform_model(self, trainer: Any, model: Any) -> torch.nn.Module:
        config: Any = self.config
        if self.sp > 1:
            from arctic_alst import ulysses

            ulysses.check_heads(model.config, self.sp)
            ulysses.enable(model, trainer.groups.sp_group, self.sp)
            trainer.log.info("Ulysses sequence parallelism over %d ranks", self.sp)
        if config.tiled_mlp_compute:
            from arctic_alst.tiling import tile_mlps

            if not tile_mlps(model):
                raise RecipeError(
                    "found no gated MLP (gate/up/down projections) to tile", path="tiled_mlp_compute"
                )
        if config.activation_checkpoint_cpu_offload:
            from arctic_alst.offload import offload_checkpoints

            if not offload_checkpoints(model):
                raise RecipeError(
                    "found no checkpointing decoder layer in this model",
                    path="activation_checkpoint_cpu_offload",
                )
        return model

    def transform_frozen(self, trainer: Any, model: torch.nn.Module) -> torch.nn.Module:
        if self.sp > 1:
            from arctic_alst import ulysses

            ulysses.check_heads(model.config, self.sp)
            ulysses.enable(model, trainer.groups.sp_group, self.sp)
        return model

    def prepare_batch(self, trainer: Any, batch: dict[str, Any]) -> dict[str, Any]:
        if self.sp == 1:
            return batch
        from arctic_alst.sharding import shard_batch

        pad = getattr(trainer.tokenizer, "pad_token_id", None)
        return shard_batch(batch, self.sp, trainer.topology.sp_rank, pad_id=pad if pad is not None else 0)
