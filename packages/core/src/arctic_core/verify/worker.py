"""A verify worker: `python -m arctic_core.verify.worker JOB.json` runs a job's variants in turn.

Each variant is the recipe (with the user's `--set` and `--shrink` overrides), made short and
quiet (no evaluation, no generation eval, no trackers, its own run folder and data cache), then
trained by a dynamically made subclass of the recipe's own trainer class, so the user's hooks
(custom `loss`, `micro_batch_weight`, data factory...) run unchanged. The subclass only adds:

- a data factory that keeps the first `samples` samples of the training data (before packing);
- with `whole_batch`, a micro batch size chosen so that one optimizer step holds the whole set;
  with `steps_per_epoch`, one chosen from the rows the data gave (packed or not) for that many
  steps an epoch. Rows that cannot make the variant's steps raise `CannotRun`: the variant's
  result says `skipped`, and the checks using it are SKIPped with the reason;
- in `micro_batch_weight`, a record of each micro-batch's weight;
- in `before_optimizer_step` (after the step's last backward, gradients complete), the
  flattened gradients of the last step, and for the resume check a real SIGKILL of its own
  process once the checkpoint of step `kill_after` is complete.

Launched ranks (RANK/WORLD_SIZE set by the runner) each run the same job; rank 0 writes the
results, `<variant run folder>/result.json`.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import attrs

from arctic_core.trainer import Trainer
from arctic_core.verify.base import LOSS_SCALE, CannotRun, Variant, micro_batch_size_for

ROW_MULTIPLE = 4
"""The sample set is cut to a multiple of this, so that 2 ranks x 2 micro-batches divide it."""


def _toml(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers and booleans are TOML values too


def quiet_recipe(raw: dict[str, Any], run_dir: Path, cache_dir: Path, variant: Variant) -> dict[str, Any]:
    """The recipe dict of a variant: short, no evaluation or trackers, its own folders."""
    for key in ("generation_eval", "wandb", "train_log_metrics_path", "exit_iteration", "min_iterations"):
        raw.pop(key, None)
    raw.update(eval_interval=0, epochs=1, train_iters=variant.steps, exit_iteration_this_run=0)
    data = raw.setdefault("data", {})
    data.update(eval_sources=[], train_eval_split=[1.0, 0.0], cache_dir=str(cache_dir), dl_num_workers=0)
    logger = raw.setdefault("logger", {})
    logger.update(output_dir=str(run_dir), progress_bar=False, tensorboard=False)
    raw["checkpoint"] = []
    if variant.checkpoint_every:
        every = variant.checkpoint_every
        raw["checkpoint"] = [{"type": "deepspeed", "save_every_n_steps": every, "auto_resume": True}]
    ds = raw.setdefault("deepspeed", {})
    if variant.whole_batch or variant.steps_per_epoch:  # sized from the data's rows by the worker
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            ds.pop(key, None)
        raw.update(micro_batch_size=1, gradient_accumulation_steps=variant.accumulation)
    if variant.comparable:
        ds["zero_optimization"] = {"stage": 0}
        ds.pop("bf16", None)
        ds.pop("fp16", None)
        raw.setdefault("model", {})["dtype"] = "fp32"
    return raw


def variant_recipe(job: dict[str, Any], variant: Variant) -> Any:
    """The `Recipe` a variant trains."""
    from arctic_core.recipe import load_recipe
    from arctic_core.recipe.loader import apply_overrides, read_recipe, resolve_relative_paths
    from arctic_core.verify.shrink import apply_shrink

    path = Path(job["recipe"])
    raw = resolve_relative_paths(read_recipe(path), path.parent)
    raw = apply_overrides(raw, job["overrides"])
    if job.get("shrink"):
        apply_shrink(raw, job["shrink"])
    verify_dir = Path(job["verify_dir"])
    raw = quiet_recipe(
        raw, verify_dir / (variant.run_name or variant.name), verify_dir / "data-cache", variant
    )
    raw = apply_overrides(raw, list(variant.set))
    return load_recipe(path, [], data=raw, method=job["method"])


def limited_factory(base: type, samples: int) -> type:
    """`base` (a DataFactory) that keeps only the first `samples` training samples, before packing."""

    class VerifyDataFactory(base):  # type: ignore[valid-type,misc]
        def cache_parts(self) -> dict[str, Any]:
            return {**super().cache_parts(), "verify_samples": samples}

        def process_source(self, source: Any, role: str, name: str, scratch: Path) -> tuple[Any, dict]:
            if role == "train" and source.sample_ratio is None:  # tokenize a few rows, not the whole source
                cap = min(source.sample_count or 4 * samples, 4 * samples)
                source = attrs.evolve(source, sample_count=cap)
            return super().process_source(source, role, name, scratch)

        def finish_split(self, table: Any, stats: list[dict]) -> tuple[Any, dict[str, Any]]:
            keep = min(len(table), samples)
            table = table.select(range(keep - keep % ROW_MULTIPLE))
            return super().finish_split(table, stats)

    return VerifyDataFactory


class VerifyMixin(Trainer):
    """Records what the verify checks compare; see the module docstring. Never registered (no `name`)."""

    variant: Variant
    verify_samples: int
    result_path: str

    def setup_data(self) -> None:
        super().setup_data()
        data = self.train_dataset
        self.verify_rows = len(data)
        self.verify_samples_used = _sample_count(data)
        self.step_weights: dict[int, list[float]] = {}
        self.step_tokens: dict[int, list[float]] = {}
        if self.variant.expect_packed and not _is_packed(data):
            columns = getattr(data, "column_names", None)
            raise NotPacked(
                f"the {self.config.type} data pipeline does not pack these rows (columns {columns}); "
                "packing applies to input_ids/labels samples"
            )
        if self.variant.whole_batch or self.variant.steps_per_epoch:
            self.size_micro_batches()  # before the loaders are built from the micro batch size

    def __init__(self, config: Any, **kwargs: Any) -> None:
        """A rerun (`steps_per_epoch` variants size their micro-batches only once the data is read)
        starts from the micro-batch size its checkpoint's run chose, so that the resume check
        compares recipes alike; every other key is still compared as for any run."""
        if self.variant.steps_per_epoch and self.variant.checkpoint_every:
            saved = _checkpoint_micro_batch_size(config)
            if saved:
                config = attrs.evolve(config, micro_batch_size=saved)
        super().__init__(config, **kwargs)

    def size_micro_batches(self) -> None:
        """Choose the micro-batch size from the rows the data gave (`micro_batch_size_for`)."""
        from arctic_core.engine.deepspeed_config import build_deepspeed_config
        from arctic_core.engine.loaders import PreBatched

        if isinstance(self.train_dataset, PreBatched):
            raise CannotRun("pre-batched training data (whole global batches) cannot be re-split by verify")
        dp, variant = self.topology.dp_size, self.variant
        micro = micro_batch_size_for(variant, self.verify_rows, dp, self.verify_samples_used)
        if variant.steps_per_epoch:  # exactly `steps_per_epoch` steps an epoch: drop the rows beyond
            keep = micro * dp * variant.accumulation * variant.steps_per_epoch
            if keep < self.verify_rows and hasattr(self.train_dataset, "select"):
                self.train_dataset = self.train_dataset.select(range(keep))
                self.verify_rows, self.verify_samples_used = keep, _sample_count(self.train_dataset)
        self.config = attrs.evolve(self.config, micro_batch_size=micro)
        self.ds_config = build_deepspeed_config(self.config, dp)
        if variant.whole_batch and dp * variant.accumulation > 1:
            self.choose_uneven_order()

    def choose_uneven_order(self, tries: int = 16) -> None:
        """Pick a data seed whose micro-batches differ in trainable tokens (a wrong weighting then shows).

        The one-step variants hold the whole sample set, so the seed changes only how the step is
        split over ranks and micro-batches, not what it sums over.
        """
        from arctic_core.engine.loaders import train_loader
        from arctic_core.engine.loop import trainable_count

        dp, first = self.topology.dp_size, self.config.data.seed
        for seed in range(first, first + tries):
            counts = []
            for dp_rank in range(dp):
                loader = train_loader(
                    self.train_dataset,
                    self.collate,
                    batch_size=self.config.micro_batch_size,
                    accumulation=self.variant.accumulation,
                    dp_rank=dp_rank,
                    dp_size=dp,
                    seed=seed,
                    workers=0,
                )
                loader.start_epoch(0)
                counts += [float(trainable_count(batch)) for batch in loader]
                loader.close()
            if len(set(counts)) > 1:
                self.config = attrs.evolve(self.config, data=attrs.evolve(self.config.data, seed=seed))
                return

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        from arctic_core.engine.loop import trainable_count

        weight = super().micro_batch_weight(batch)
        self.step_weights.setdefault(self.global_step + 1, []).append(float(weight))
        self.step_tokens.setdefault(self.global_step + 1, []).append(float(trainable_count(batch)))
        return weight

    def before_optimizer_step(self) -> None:
        super().before_optimizer_step()
        step = self.global_step + 1
        if self.world_size > 1:  # every rank's micro-batch weights, in rank order
            import torch.distributed as dist

            for record in (self.step_weights, self.step_tokens):
                gathered: list[Any] = [None] * self.world_size
                dist.all_gather_object(gathered, record.get(step, []))
                record[step] = [w for values in gathered for w in values]
        if self.variant.grads and step == self.variant.steps and self.rank == 0:
            import torch

            grads = [
                (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().flatten()
                for p in self.model.parameters()
                if p.requires_grad
            ]
            path = Path(self.config.run_dir) / "grads.pt"
            torch.save(torch.cat(grads).cpu(), path)
            self.verify_grads_path = str(path)
        if self.variant.kill_after and self.global_step == self.variant.kill_after:
            write_result(
                self, killed=True, pid=os.getpid()
            )  # the checkpoint of step `kill_after` is complete
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def _checkpoint_micro_batch_size(config: Any) -> int | None:
    """The micro-batch size in the recipe of the newest checkpoint this run would resume (None: none)."""
    import yaml

    from arctic_core.engine.checkpoint import RECIPE_FILE
    from arctic_core.engine.resume import newest_checkpoint, output_dir_of

    entry = next((c for c in config.checkpoint if c.auto_resume), None)
    point = newest_checkpoint(output_dir_of(config, entry)) if entry is not None else None
    if point is None or not (point.folder / RECIPE_FILE).is_file():
        return None
    saved = yaml.safe_load((point.folder / RECIPE_FILE).read_text(encoding="utf-8")) or {}
    value = saved.get("micro_batch_size")
    return value if isinstance(value, int) else None


class NotPacked(CannotRun):
    """The packed variant's data is not packed: the packing check is skipped."""


def _is_packed(data: Any) -> bool:
    return "seqlens" in (getattr(data, "column_names", None) or ()) or "position_ids" in (
        getattr(data, "column_names", None) or ()
    )


def _sample_count(data: Any) -> int:
    if "seqlens" in (getattr(data, "column_names", None) or ()):
        return sum(len(s) for s in data["seqlens"])
    return len(data)


def write_result(trainer: Any, **fields: Any) -> None:
    """Rank 0 writes what the variant recorded to `<run folder>/result.json`."""
    if getattr(trainer, "rank", 0) != 0:
        return
    metrics = Path(trainer.config.metrics_path)
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    result = {
        "name": trainer.variant.name,
        "losses": [r["loss"] for r in records],
        "loss_scales": [r.get(LOSS_SCALE) for r in records],
        "weights": [w for _, w in sorted(getattr(trainer, "step_weights", {}).items())],
        "tokens": [t for _, t in sorted(getattr(trainer, "step_tokens", {}).items())],
        "rows": getattr(trainer, "verify_rows", 0),
        "samples": getattr(trainer, "verify_samples_used", 0),
        "start_step": trainer.run_start_step,
        "grads_path": getattr(trainer, "verify_grads_path", None),
        **fields,
    }
    Path(trainer.result_path).write_text(json.dumps(result))


def result_path(verify_dir: str | Path, name: str) -> Path:
    """Where a variant's result goes (run folders may be shared: the resume check's rerun)."""
    return Path(verify_dir) / "results" / f"{name}.json"


def verify_trainer_class(trainer_class: type, variant: Variant, samples: int, result: Path) -> type:
    """The recipe's trainer with `VerifyMixin` in front and the limited data factory."""
    from arctic_core.data import DataFactory

    factory = limited_factory(trainer_class.data_factory_class or DataFactory, samples)  # type: ignore[attr-defined]
    namespace = {
        "variant": variant,
        "verify_samples": samples,
        "data_factory_class": factory,
        "result_path": str(result),
    }
    return type(f"Verify{trainer_class.__name__}", (VerifyMixin, trainer_class), namespace)


def wait_for(job: dict[str, Any], name: str, timeout: float = 900.0) -> None:
    """Wait until variant `name` (run by another process) has its result, and that process is gone."""
    path, deadline = result_path(job["verify_dir"], name), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            pid = json.loads(path.read_text()).get("pid")
            if pid is None or not _alive(int(pid)):
                return
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_variant(job: dict[str, Any], variant: Variant) -> None:
    """Train one variant; its result (or error) lands in its run folder."""
    if variant.after:
        wait_for(job, variant.after)
    start = time.perf_counter()
    result = result_path(job["verify_dir"], variant.name)
    result.parent.mkdir(parents=True, exist_ok=True)
    trainer: Any = None
    try:
        recipe = variant_recipe(job, variant)
        cls = verify_trainer_class(recipe.trainer_class(), variant, job["samples"], result)
        trainer = cls(recipe.config)
        trainer.train()
        write_result(trainer, seconds=time.perf_counter() - start)
    except CannotRun as exc:  # not a failure: the checks using this variant are SKIPped, saying why
        if int(os.environ.get("RANK", "0")) == 0:
            result.write_text(json.dumps({"name": variant.name, "skipped": str(exc)}))
    except Exception as exc:  # reported in the table; the traceback goes to the worker's log
        traceback.print_exc()
        if int(os.environ.get("RANK", "0")) == 0:
            error = {"name": variant.name, "error": f"{type(exc).__name__}: {exc}"}
            result.write_text(json.dumps(error))
    finally:
        del trainer
        gc.collect()


def main(argv: list[str]) -> None:
    job = json.loads(Path(argv[0]).read_text())
    for spec in job["variants"]:
        variant = Variant(**{**spec, "set": tuple(spec.get("set", ()))})
        run_variant(job, variant)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
