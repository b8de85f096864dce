"""A run's setup, as named steps: each a function of the trainer, run once, in `STEPS` order.

    distributed -> recipe -> resume_point -> run_folder -> tokenizer -> data -> loaders -> model
    -> optimizer -> scheduler -> engine -> checkpoints -> restore

Each step reads what the steps before it set on the trainer and sets its own part. The steps
call the method's hooks where a method decides (`topology_sizes`, `setup_tokenizer`,
`setup_data`, `build_model`, `transform_model`, `select_trainable`); the rest is the same for
every method. `Trainer.setup()` runs them; `arctic_core.engine.loop` then trains.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arctic_core.errors import ArcticError

if TYPE_CHECKING:
    from arctic_core.trainer import Trainer


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's generators (every device's), as transformers' `set_seed` does.

    Not `transformers.set_seed` itself: importing it imports `transformers.trainer_utils`, which
    imports peft when installed, about 5 s of every run's start on a CPU, for nothing.
    """
    import random

    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def distributed(trainer: Trainer) -> None:
    """Check precision against the hardware, start the process group, build the DeepSpeed config."""
    from arctic_core.engine import deepspeed_config, topology
    from arctic_core.engine import distributed as dist
    from arctic_core.features import active_features
    from arctic_core.recipe.checks import preflight

    trainer.features = active_features(trainer.config)
    model_parallel = math.prod(trainer.topology_sizes().values())
    preflight(  # precision vs hardware, PEFT, [deepspeed], types, input paths: before anything is built
        trainer.config,
        trainer=type(trainer),
        world_size=max(1, int(os.environ.get("WORLD_SIZE", "1")) // model_parallel),
        warn=trainer.preflight_warnings.append,
    )
    dist.init_distributed(trainer.local_rank)
    trainer.rank, trainer.world_size = dist.rank(), dist.world_size()
    trainer.device = dist.device()
    trainer.topology = topology.Topology(
        world_size=trainer.world_size, rank=trainer.rank, **trainer.topology_sizes()
    )
    trainer.groups = topology.create_groups(trainer.topology)
    trainer.ds_config = deepspeed_config.build_deepspeed_config(trainer.config, trainer.topology.dp_size)
    trainer.zero_stage = deepspeed_config.zero_stage(trainer.ds_config)
    seed_everything(trainer.config.seed)


def resume_point(trainer: Trainer) -> None:
    """With `auto_resume`, find the newest complete checkpoint; refuse one this run cannot continue."""
    from arctic_core.engine.resume import find_resume_point

    trainer.resume_point = find_resume_point(trainer.config, trainer.world_size)


def recipe(trainer: Trainer) -> None:
    """The recipe's unset model-dependent keys set by the method (`resolve_config`: an embedding
    model's pooling from its folder, say); their warnings are logged with the run's."""
    trainer.config, trainer.config_sources, warnings = type(trainer).resolve_config(
        trainer.config, fetch=True
    )
    trainer.preflight_warnings.extend(warnings)


def run_folder(trainer: Trainer) -> None:
    """Per-rank log files, and the resolved recipe saved in the run folder.

    A fresh run (not a resume) into a folder that holds an earlier run first moves that run's
    recipe, metrics, generation-eval scores and logs into `previous/<time>/`.
    """
    from arctic_core.engine import distributed as dist
    from arctic_core.engine.metrics import keep_previous_run, setup_logging
    from arctic_core.recipe.render import render

    run_dir = Path(trainer.config.run_dir)
    kept = None
    if trainer.rank == 0 and trainer.resume_point is None:  # a fresh run never overwrites an earlier one
        kept = keep_previous_run(trainer.config)
    dist.barrier()
    trainer.log = log = setup_logging(trainer.config, trainer.rank)
    if kept is not None:
        log.info("this folder held an earlier run: its recipe, metrics and logs are now in %s", kept)
    for warning in trainer.preflight_warnings:
        log.warning("%s", warning)
    if trainer.rank == 0:
        (run_dir / "recipe.yaml").write_text(render(trainer.config, "yaml"))
    dist.barrier()
    log.info(
        "run folder %s, %d rank(s) (%d data-parallel x %d sequence-parallel), ZeRO stage %d",
        run_dir,
        trainer.world_size,
        trainer.topology.dp_size,
        trainer.topology.sequence_parallel_size,
        trainer.zero_stage,
    )


def tokenizer(trainer: Trainer) -> None:
    """The method's `setup_tokenizer` hook."""
    trainer.setup_tokenizer()


def data(trainer: Trainer) -> None:
    """The method's `setup_data` hook: `train_dataset`, `eval_dataset`, `collate`."""
    trainer.setup_data()


def loaders(trainer: Trainer) -> None:
    """The train loader (sharded over data-parallel ranks, stateful), and the step counts it implies."""
    from arctic_core.engine.loaders import train_loader

    config, state = trainer.config, trainer.state
    loader = train_loader(
        trainer.train_dataset,
        trainer.collate,
        batch_size=config.micro_batch_size,
        accumulation=config.gradient_accumulation_steps,
        dp_rank=trainer.topology.dp_rank,
        dp_size=trainer.topology.dp_size,
        seed=config.data.seed,
        workers=config.data.dl_num_workers,
        group_by_length=config.data.group_by_length,
    )
    state.loader = trainer.features.wrap_loader(trainer, loader)
    state.accumulation = config.gradient_accumulation_steps
    state.steps_per_epoch = len(state.loader) // config.gradient_accumulation_steps
    if state.steps_per_epoch == 0:
        per_step = config.micro_batch_size * config.gradient_accumulation_steps
        raise ArcticError(
            f"the training data ({len(trainer.train_dataset)} samples) does not fill one optimizer step of "
            f"{per_step * trainer.topology.dp_size} samples"
        )
    repeats = -(-config.min_iterations // state.steps_per_epoch)  # data repeated, whole epochs
    state.total_steps = config.train_iters or config.epochs * max(repeats, 1) * state.steps_per_epoch


def model(trainer: Trainer) -> None:
    """On CPU keep freed host memory (`engine.host_memory`); build the model, let the method transform
    it, attend packed samples one at a time
    (`engine.packed_attention`), add PEFT adapters, choose the trainable parameters; for an MoE
    model, mark its sparse blocks as ZeRO-3 leaf modules and hook its routers (`engine.moe`)."""
    from arctic_core.engine.model import apply_activation_checkpointing
    from arctic_core.engine.moe import prepare_moe
    from arctic_core.engine.peft import apply_adapters

    if trainer.device.type == "cpu":  # PyTorch caches no host memory: glibc would re-fault it each step
        from arctic_core.engine.host_memory import keep_freed_memory

        why_not = keep_freed_memory()
        trainer.log.info(
            "host memory: %s",
            "freed blocks up to 1 GiB stay in the process"
            if why_not is None
            else f"freed blocks go back to the system ({why_not})",
        )
    trainer.features.before_model(trainer)
    built = trainer.build_model()
    checkpointing, why = apply_activation_checkpointing(
        built,
        trainer.config,
        device=trainer.device,
        world=trainer.world_size,
        deepspeed=trainer.ds_config,
    )
    trainer.log.info("activation checkpointing %s: %s", "on" if checkpointing else "off", why)
    built = trainer.transform_model(built)
    built = trainer.features.transform_model(trainer, built)
    if getattr(getattr(trainer.config, "data", None), "pack_samples", False):
        from arctic_core.engine import packed_attention

        why_not = packed_attention.enable(built)
        trainer.log.info("packed samples: %s", packed_attention.how_kept_apart(built, why_not))
    built = apply_adapters(
        built, trainer.config.model, seed=trainer.config.seed, activation_checkpointing=checkpointing
    )
    trainer.trainable_names = trainer.select_trainable(built)
    trainer.router = prepare_moe(built, trainer.config.model, trainer.log)  # before the engine is built
    trainer.model = built


def optimizer(trainer: Trainer) -> None:
    """The optimizer over the trainable parameters (`[optimizer]`)."""
    from arctic_core.engine import distributed as dist
    from arctic_core.engine.optimizer import build_optimizer

    trainer.optimizer = build_optimizer(trainer.model, trainer.config.optimizer, cuda=dist.has_cuda())


def scheduler(trainer: Trainer) -> None:
    """The learning-rate schedule over the run's optimizer steps (`[scheduler]`)."""
    from arctic_core.engine.scheduler import build_scheduler

    assert trainer.optimizer is not None
    trainer.scheduler = build_scheduler(
        trainer.optimizer, trainer.config.scheduler, trainer.state.total_steps
    )


def engine(trainer: Trainer) -> None:
    """`deepspeed.initialize`, given the topology's process groups when sequence parallelism is on."""
    import deepspeed

    from arctic_core.engine.topology import deepspeed_mpu

    trainer.engine, trainer.optimizer, _, trainer.scheduler = deepspeed.initialize(
        model=trainer.model,
        optimizer=trainer.optimizer,
        lr_scheduler=trainer.scheduler,
        config=trainer.ds_config,
        mpu=deepspeed_mpu(trainer.groups),
        dist_init_required=False,
    )
    if trainer.world_size == 1 and trainer.zero_stage == 0:
        # On one rank DeepSpeed's gradient all-reduce is a no-op that still flattens every
        # gradient into a bucket and copies it back (a pass over all gradients per step).
        trainer.engine.enable_backward_allreduce = False
    trainer.model = trainer.engine.module


def checkpoints(trainer: Trainer) -> None:
    """One checkpoint engine per `[[checkpoint]]` entry."""
    from arctic_core.engine.checkpoint import checkpoint_engine_class

    trainer.checkpoints = [
        checkpoint_engine_class(entry.type, i)(trainer, entry)
        for i, entry in enumerate(trainer.config.checkpoint)
    ]


def restore(trainer: Trainer) -> None:
    """Load the checkpoint `resume_point` found: engine, optimizer, scheduler, then the `TrainingState`."""
    from arctic_core.engine.resume import restore as restore_checkpoint

    point, state = trainer.resume_point, trainer.state
    if point is None:
        return
    restore_checkpoint(trainer, point)
    trainer.log.info(
        "resumed from %s at step %d (epoch %d, %d of its %d steps done)",
        point.folder,
        state.global_step,
        state.epoch,
        state.step_in_epoch,
        state.steps_per_epoch,
    )


STEPS: tuple[Callable[[Trainer], None], ...] = (
    distributed,
    recipe,  # before resume_point: the checkpoint's recipe is compared with the resolved one
    resume_point,
    run_folder,
    tokenizer,
    data,
    loaders,
    model,
    optimizer,
    scheduler,
    engine,
    checkpoints,
    restore,
)
"""Every setup step, in the order `Trainer.setup()` runs them."""
