"""The `deepspeed` checkpoint type (the full training state) and resuming from it.

A `deepspeed` checkpoint is a folder (`<output_dir>/global_step_<N>`, or `epoch_<E>`):

    state/               DeepSpeed's `save_checkpoint`: model, optimizer (ZeRO shards: one file
                         per rank), learning-rate scheduler
    latest               DeepSpeed's pointer to `state` (its own tools, e.g. zero_to_fp32, work)
    rng/rank_<R>.pt      each rank's python, numpy, torch (CPU) and CUDA RNG states
    loader/rank_<R>.json each rank's training loader state (epoch, position in it)
    arctic_recipe.yaml   the resolved recipe
    manifest.json        every file above with its size and SHA-256 (`arctic_core.engine.integrity`)
    arctic_state.json    written last: the `TrainingState` counters (step, epoch, steps done in
                         the epoch, tokens), world size

`arctic_state.json` is the completion marker, and the folder is written under a temporary
name and renamed when complete (`atomic_folder`): a folder without the marker is never loaded.
Resuming verifies the newest checkpoint against its manifest and falls back, with a warning,
to the newest good one; checkpoint files load with `weights_only=True` (no code can run).

Position in the data: the training loader saves its own state (`arctic_core.engine.loaders`:
the epoch and what this rank consumed of it) and a resumed loader goes on from there, so the
run sees exactly the micro-batches the uninterrupted run would have (micro-batches left over
at an epoch's end never count). A checkpoint whose k optimizer steps done in epoch E equal
the steps per epoch means epoch E is done: the run goes on at epoch E+1. The loaders draw
nothing from the global RNG, so the RNG states restored here are those the uninterrupted run
had after step N. The metrics file is cut after step N and appended to (`MetricsWriter`).

Before anything loads, the checkpoint's recipe is compared with the run's: a change in a key
that decides the data order or the optimizer's state (`ORDER_KEYS`, `OPTIMIZER_KEYS`) is
refused (exit 2, naming the keys), unless the resuming entry sets `allow_recipe_changes`.
Checkpoints of format 1 (before loaders kept their state) resume by the old arithmetic.

End-of-training and on-signal saves go to `global_step_<N>` (unless step N is saved already);
`keep_last_n` prunes `global_step_*` and `epoch_*` separately.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from arctic_core.config import CheckpointConfig, TrainerConfig
from arctic_core.engine import distributed
from arctic_core.engine.checkpoint import (
    PERIODIC_PREFIXES,
    RECIPE_FILE,
    CheckpointEngine,
    register_checkpoint,
)
from arctic_core.engine.integrity import newest_good, use_safe_loading, write_manifest
from arctic_core.errors import ArcticError, RecipeError

if TYPE_CHECKING:
    from arctic_core.trainer import Trainer

STATE_FILE = "arctic_state.json"
ENGINE_TAG = "state"
FORMAT_VERSION = 2

ORDER_KEYS = ("micro_batch_size", "gradient_accumulation_steps", "seed", "data")
"""Keys whose change alters which samples each step sees (data.* but the settings in `DATA_FREE`)."""
DATA_FREE = ("num_proc", "dl_num_workers", "cache_dir")
"""[data] keys that change how fast data is prepared or loaded, not what it is."""
IDENTITY_KEYS = ("type", "model.name_or_path")
"""Keys whose change makes the checkpoint another run's (another method or model)."""
OPTIMIZER_KEYS = (
    "optimizer.type",
    "model.peft_config",
    "model.trainable_parameters",
    "model.frozen_parameters",
    "sequence_parallel_size",
)
"""Keys whose change alters the optimizer state's shape or the parallel layout it was saved in."""


@dataclass(frozen=True)
class ResumePoint:
    """A complete `deepspeed` checkpoint, as its `arctic_state.json` describes it."""

    folder: Path
    global_step: int
    epoch: int
    steps_in_epoch: int
    world_size: int
    format: int = FORMAT_VERSION


def read_state(folder: Path) -> ResumePoint | None:
    """The checkpoint in `folder`, or None when it is not a complete `deepspeed` checkpoint."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        return ResumePoint(
            folder=folder,
            global_step=int(state["global_step"]),
            epoch=int(state["epoch"]),
            steps_in_epoch=int(state["steps_in_epoch"]),
            world_size=int(state["world_size"]),
            format=int(state.get("format", 1)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _order(folder: Path) -> tuple[int, int]:
    """Sort key of a checkpoint folder, newest last: its marker's step, else the number in its name."""
    point = read_state(folder)
    if point is not None:
        return point.global_step, point.steps_in_epoch
    number = folder.name.rpartition("_")[2]
    return (int(number) if number.isdigit() else -1), -1


def newest_checkpoint(output_dir: Path, where: str = "checkpoint.auto_resume") -> ResumePoint | None:
    """The newest good checkpoint in `output_dir` (`arctic_core.engine.integrity`: a damaged one is
    passed over with a warning; `RecipeError` when none is good). Temporary `.*` folders never count."""
    if not output_dir.is_dir():
        return None
    folders = [p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith(PERIODIC_PREFIXES)]
    if read_state(output_dir) is not None:
        folders.append(output_dir)
    folders.sort(key=_order, reverse=True)
    return newest_good(folders, read_state, STATE_FILE, where)  # type: ignore[no-any-return]


def output_dir_of(config: TrainerConfig, entry: CheckpointConfig) -> Path:
    return Path(entry.output_dir or Path(config.run_dir) / "checkpoints" / entry.type)


def find_resume_point(config: TrainerConfig, world_size: int) -> ResumePoint | None:
    """With `auto_resume`, rank 0's newest complete checkpoint (shared with every rank); None if none.

    A checkpoint written by another number of ranks is refused (`RecipeError`, exit 2).
    """
    index = next((i for i, entry in enumerate(config.checkpoint) if entry.auto_resume), None)
    if index is None:
        return None
    where = f"checkpoint[{index}].auto_resume"
    found = [newest_checkpoint(output_dir_of(config, config.checkpoint[index]), where)]
    if torch.distributed.is_initialized() and distributed.world_size() > 1:
        torch.distributed.broadcast_object_list(found, src=0)
    point = found[0]
    if point is None:
        return None
    if point.world_size != world_size:
        raise RecipeError(
            f"the newest checkpoint ({point.folder}) was written by {point.world_size} rank(s) but this run "
            f"has {world_size}; resume with {point.world_size} rank(s) (universal checkpoints are not supported)",
            path=f"checkpoint[{index}].auto_resume",
        )
    if not config.checkpoint[index].allow_recipe_changes:
        changed = changed_keys(point.folder / RECIPE_FILE, config)
        if changed:
            raise RecipeError(
                f"the newest checkpoint ({point.folder}) was written by a recipe with other {', '.join(changed)}; "
                "these decide the method, the model, the data order or the optimizer state, so resuming would "
                "not continue that run. "
                f"Restore them, start a fresh run folder, or set checkpoint[{index}].allow_recipe_changes = true",
                path=f"checkpoint[{index}].auto_resume",
            )
    return point


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: value}


def _watched(key: str) -> bool:
    top = key.split(".", 1)[0].split("[", 1)[0]
    if top == "data":
        return key.split(".")[1].split("[", 1)[0] not in DATA_FREE
    watched = OPTIMIZER_KEYS + IDENTITY_KEYS
    return top in ORDER_KEYS or any(key == k or key.startswith(k + ".") for k in watched)


def changed_keys(saved_recipe: Path, config: TrainerConfig) -> list[str]:
    """The watched keys whose value differs between a checkpoint's recipe and `config` (sorted)."""
    import yaml

    from arctic_core.recipe.render import render

    try:
        saved = yaml.safe_load(saved_recipe.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []  # a checkpoint without a readable recipe: nothing to compare
    old, new = _flatten(saved), _flatten(yaml.safe_load(render(config, "yaml")))
    keys = {k for k in old.keys() | new.keys() if _watched(k)}
    return sorted(k for k in keys if old.get(k) != new.get(k))


def load_rng_state(path: Path) -> dict[str, Any]:
    """A saved RNG state, read without unpickling arbitrary objects."""
    try:
        return torch.load(path, weights_only=True)  # type: ignore[no-any-return]
    except Exception as exc:
        raise ArcticError(
            f"cannot read the RNG state {path} ({type(exc).__name__}); it was written by an older Arctic "
            "or is damaged: resume from another checkpoint or start a fresh run"
        ) from None


def restore(trainer: Trainer, point: ResumePoint) -> None:
    """Load the engine, optimizer and scheduler, then the training state (counters, loader, RNG)."""
    use_safe_loading(trainer.engine)  # a pickle planted in the folder cannot run code
    path, _ = trainer.engine.load_checkpoint(
        str(point.folder), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise ArcticError(f"DeepSpeed could not load the checkpoint in {point.folder}")
    rank_state = {
        "rng": load_rng_state(point.folder / "rng" / f"rank_{trainer.rank}.pt"),
        "loader": loader_state(trainer, point),
    }
    trainer.state.load_state_dict(read_shared_state(point), rank_state)
    for checkpoint in trainer.checkpoints:
        if isinstance(checkpoint, DeepSpeedCheckpoint) and checkpoint.config.auto_resume:
            checkpoint.last_saved_step = point.global_step


def read_shared_state(point: ResumePoint) -> dict[str, Any]:
    """The checkpoint's `arctic_state.json` (the counters `TrainingState.state_dict` wrote)."""
    return dict(json.loads((point.folder / STATE_FILE).read_text()))


def loader_state(trainer: Trainer, point: ResumePoint) -> dict[str, Any]:
    """This rank's saved loader state; format-1 checkpoints predate it: derived from the step as they were."""
    if point.format >= 2:
        return json.loads((point.folder / "loader" / f"rank_{trainer.rank}.json").read_text())
    config = trainer.config
    samples = point.steps_in_epoch * config.gradient_accumulation_steps * config.micro_batch_size
    return {"epoch": point.epoch, "samples": samples}


@register_checkpoint("deepspeed")
class DeepSpeedCheckpoint(CheckpointEngine):
    """The full training state, for `auto_resume`; every rank writes its own shards and RNG states."""

    def __init__(self, trainer: Trainer, config: CheckpointConfig):
        super().__init__(trainer, config)
        self.last_saved_step = -1

    def end_of_training(self) -> None:
        if self.config.enabled and self.config.save_end_of_training:
            self.save_current_step()

    def on_stop(self, step: int) -> Path | None:
        return self.save_current_step() if self.config.enabled else None

    def save_current_step(self) -> Path:
        """Save to `global_step_<N>` for the current step N, unless this step is saved already."""
        step = self.trainer.state.global_step
        target = self.output_dir / f"global_step_{step}"
        if self.last_saved_step != step:
            self.save_to(target)
            self.prune("global_step_")
        return target

    def save_to(self, target: Path) -> None:
        super().save_to(target)
        self.last_saved_step = self.trainer.state.global_step

    def save(self, folder: Path) -> None:
        from arctic_core.recipe.render import render

        trainer = self.trainer
        trainer.engine.save_checkpoint(str(folder), tag=ENGINE_TAG, save_latest=True)
        rank_state = trainer.state.rank_state_dict()
        (folder / "rng").mkdir(exist_ok=True)
        torch.save(rank_state["rng"], folder / "rng" / f"rank_{trainer.rank}.pt")
        (folder / "loader").mkdir(exist_ok=True)
        (folder / "loader" / f"rank_{trainer.rank}.json").write_text(json.dumps(rank_state["loader"]) + "\n")
        distributed.barrier()
        if trainer.rank != 0:
            return
        (folder / RECIPE_FILE).write_text(render(trainer.config, "yaml"))
        state = {
            "format": FORMAT_VERSION,
            **trainer.state.state_dict(),
            "world_size": trainer.world_size,
            "zero_stage": trainer.zero_stage,
        }
        write_manifest(folder, STATE_FILE)  # names, sizes, SHA-256: checked before a resume
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
