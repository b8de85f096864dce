"""The `deepspeed` checkpoint type (the full training state) and resuming from it.

A `deepspeed` checkpoint is a folder (`<output_dir>/global_step_<N>`, or `epoch_<E>`):

    state/               DeepSpeed's `save_checkpoint`: model, optimizer (ZeRO shards: one file
                         per rank), learning-rate scheduler
    latest               DeepSpeed's pointer to `state` (its own tools, e.g. zero_to_fp32, work)
    rng/rank_<R>.pt      each rank's python, numpy, torch (CPU) and CUDA RNG states
    arctic_recipe.yaml   the resolved recipe
    arctic_state.json    written last: step, epoch, position in the epoch, world size

`arctic_state.json` is the completion marker, and the folder is written under a temporary
name and renamed when complete (`atomic_folder`): a folder without the marker is never loaded.

Position in the data, in optimizer steps: a checkpoint after step N records the epoch E and
the k optimizer steps done in it. A resumed run re-creates epoch E's order (the sampler is
seeded; `set_epoch(E)`) and skips this rank's first k x gradient_accumulation_steps x
micro_batch_size samples, exactly the micro-batches those k steps consumed (micro-batches
left over at an epoch's end never count). k equal to the steps per epoch means epoch E is
done: the run goes on at epoch E+1. The data loader draws nothing from the global RNG
(`engine.loop.train_loader`), so the RNG states restored here are those the uninterrupted run
had after step N. The metrics file is cut after step N and appended to (`MetricsWriter`).

End-of-training and on-signal saves go to `global_step_<N>` (unless step N is saved already);
`keep_last_n` prunes `global_step_*` and `epoch_*` separately.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from arctic_core.config import CheckpointConfig, TrainerConfig
from arctic_core.engine import distributed
from arctic_core.engine.checkpoint import RECIPE_FILE, CheckpointEngine, register_checkpoint
from arctic_core.engine.faults import fault_point
from arctic_core.errors import ArcticError, RecipeError

if TYPE_CHECKING:
    from arctic_core.trainer import Trainer

STATE_FILE = "arctic_state.json"
ENGINE_TAG = "state"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ResumePoint:
    """A complete `deepspeed` checkpoint, as its `arctic_state.json` describes it."""

    folder: Path
    global_step: int
    epoch: int
    steps_in_epoch: int
    world_size: int


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
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def newest_checkpoint(output_dir: Path) -> ResumePoint | None:
    """The complete checkpoint with the highest step in `output_dir` (temporary `.*` folders never count)."""
    if not output_dir.is_dir():
        return None
    folders = [output_dir, *(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith("."))]
    found = [point for point in map(read_state, folders) if point is not None]
    return max(found, key=lambda p: (p.global_step, p.steps_in_epoch), default=None)


def output_dir_of(config: TrainerConfig, entry: CheckpointConfig) -> Path:
    return Path(entry.output_dir or Path(config.run_dir) / "checkpoints" / entry.type)


def find_resume_point(config: TrainerConfig, world_size: int) -> ResumePoint | None:
    """With `auto_resume`, rank 0's newest complete checkpoint (shared with every rank); None if none.

    A checkpoint written by another number of ranks is refused (`RecipeError`, exit 2).
    """
    index = next((i for i, entry in enumerate(config.checkpoint) if entry.auto_resume), None)
    if index is None:
        return None
    found = [newest_checkpoint(output_dir_of(config, config.checkpoint[index]))]
    if torch.distributed.is_initialized() and distributed.world_size() > 1:
        torch.distributed.broadcast_object_list(found, src=0)
    point = found[0]
    if point is not None and point.world_size != world_size:
        raise RecipeError(
            f"the newest checkpoint ({point.folder}) was written by {point.world_size} rank(s) but this run "
            f"has {world_size}; resume with {point.world_size} rank(s) (universal checkpoints are not supported)",
            path=f"checkpoint[{index}].auto_resume",
        )
    return point


def rng_state() -> dict[str, Any]:
    import numpy as np

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore(trainer: Trainer, point: ResumePoint) -> None:
    """Load the engine, optimizer, scheduler and this rank's RNG states; set the step and data position."""
    path, _ = trainer.engine.load_checkpoint(
        str(point.folder), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise ArcticError(f"DeepSpeed could not load the checkpoint in {point.folder}")
    set_rng_state(torch.load(point.folder / "rng" / f"rank_{trainer.rank}.pt", weights_only=False))
    trainer.global_step = point.global_step
    trainer.epoch, trainer.step_in_epoch = point.epoch, point.steps_in_epoch
    if trainer.step_in_epoch >= trainer.steps_per_epoch:  # that epoch was complete
        trainer.epoch, trainer.step_in_epoch = trainer.epoch + 1, 0
    for checkpoint in trainer.checkpoints:
        if isinstance(checkpoint, DeepSpeedCheckpoint) and checkpoint.config.auto_resume:
            checkpoint.last_saved_step = point.global_step


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
        target = self.output_dir / f"global_step_{self.trainer.global_step}"
        if self.last_saved_step != self.trainer.global_step:
            self.save_to(target)
            self.prune("global_step_")
        return target

    def save_to(self, target: Path) -> None:
        super().save_to(target)
        self.last_saved_step = self.trainer.global_step

    def save(self, folder: Path) -> None:
        from arctic_core.recipe.render import render

        trainer = self.trainer
        trainer.engine.save_checkpoint(str(folder), tag=ENGINE_TAG, save_latest=True)
        fault_point("checkpoint-write", trainer.global_step)
        (folder / "rng").mkdir(exist_ok=True)
        torch.save(rng_state(), folder / "rng" / f"rank_{trainer.rank}.pt")
        distributed.barrier()
        if trainer.rank != 0:
            return
        (folder / RECIPE_FILE).write_text(render(trainer.config, "yaml"))
        state = {
            "format": FORMAT_VERSION,
            "global_step": trainer.global_step,
            "epoch": trainer.epoch,
            "steps_in_epoch": trainer.step_in_epoch,
            "steps_per_epoch": trainer.steps_per_epoch,
            "world_size": trainer.world_size,
            "zero_stage": trainer.zero_stage,
        }
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
