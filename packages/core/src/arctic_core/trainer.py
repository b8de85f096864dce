"""The trainer: one training loop for every method.

A method subclasses `Trainer` (or another method's trainer), sets `name` and
`config_class`, and overrides a hook or two. Setting `name` registers the class, which is
how a recipe's `type` (and the seed README's custom trainers) select it.

`train()` runs the named setup steps in order, then the loop:

    setup_distributed -> setup_run_folder -> setup_resume -> setup_tokenizer -> setup_data
    -> setup_loaders -> setup_model -> setup_optimizer -> setup_scheduler -> setup_engine
    -> setup_checkpoints -> restore_training_state
    for each optimizer step: take `gradient_accumulation_steps` micro-batches, prepare each
    (`prepare_batch`), weight each by its share of the global batch's weight (trainable
    tokens by default), forward + backward each, step, log one metrics line, maybe evaluate,
    maybe checkpoint.

Resuming (`auto_resume`, `arctic_core.engine.resume`) restores the engine, step, epoch, the
loader's own position and RNG states before the first step, after checking that the recipe
did not change what the checkpoint's data order and optimizer depend on. SIGTERM/SIGINT stop
the run after the current step, with a checkpoint (`arctic_core.engine.signals`).

Hooks for methods (override in a subclass; docs/writing-a-method.md):

- `loss(batch)`: the micro-batch's mean loss, a tensor or a `LossOutput(loss, weight,
  metrics)` (default: causal-LM cross-entropy with the shift). It may run several forward
  passes (`forward(batch)`, frozen companions from `build_frozen_model`).
- `micro_batch_weight(batch)`: what the micro-batch counts for in the step's mean, known
  before its forward (default: the collate's `num_trainable_tokens`, else 1).
- `prepare_batch(batch)`: between the loader and the loss, on the device (default: the
  enabled feature plugins', e.g. sequence sharding).
- `build_model()`, `transform_model(model)`: build the network; add or patch modules.
- `select_trainable(model)`: which parameters train (default: the recipe's glob patterns).
- `setup_data()`: datasets and the collate function (default: `arctic_core.data.DataFactory`);
  a `arctic_core.engine.loaders.PreBatched` train dataset holds whole global batches.
- `topology_sizes()`: the parallel sizes (default: what enabled features ask for).
- `before_optimizer_step()`: called once per step after the last backward, gradients complete.
- `step_metrics()`: extra numbers for the step's metrics line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from arctic_core.compat.arctictraining import ARCTICTRAINING_DIFFERENCES
from arctic_core.config import ModelConfig, TrainerConfig
from arctic_core.engine.loop import LossOutput
from arctic_core.errors import ArcticError
from arctic_core.registry import register_trainer

__all__ = ["LossOutput", "Trainer", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's generators (every device's), as transformers' `set_seed` does.

    Not `transformers.set_seed` itself: importing it imports `transformers.trainer_utils`, which
    imports peft when installed, about 5 s of every run's start on a CPU, for nothing.
    """
    import random

    import numpy

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class Trainer:
    name: ClassVar[str]
    config_class: ClassVar[type[TrainerConfig]] = TrainerConfig
    auto_model_class: ClassVar[Any] = None
    """transformers Auto class for `build_model` (None: AutoModelForCausalLM)."""
    data_factory_class: ClassVar[Any] = None
    """`arctic_core.data.DataFactory` subclass for `setup_data` (None: DataFactory itself)."""
    reports_perplexity: ClassVar[bool] = True
    """Whether the loss is a mean negative log-likelihood, so evaluation also reports its perplexity."""
    verify_skips: ClassVar[dict[str, str]] = {}
    """`arctic verify` checks that do not hold for this method by design, each with why (shown as SKIP)."""
    recipe_notes: tuple[str, ...] = ()
    """Warnings from reading the recipe (keys kept for ArcticTraining but not acted on); logged once."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            register_trainer(cls)

    @classmethod
    def check_config(cls, config: TrainerConfig) -> Iterator[tuple[str | None, str]]:
        """The method's own checks that need no weights and no data rows: yield (key path, message).

        They run in `arctic config check` and before every run builds anything, beside core's
        (`arctic_core.recipe.checks`). Default: none.
        """
        return iter(())

    @classmethod
    def resolve_config(cls, config: TrainerConfig) -> tuple[TrainerConfig, dict[str, str], list[str]]:
        """Set the recipe's unset keys whose values come from the model's own folder (an embedding
        model's pooling, say): the config with them set, where each came from (key path -> file or
        "default") and warnings to log once. Runs before anything is built, and in `arctic config
        show`. Default: the config unchanged."""
        return config, {}, []

    @classmethod
    def shrink_layers(cls, config: TrainerConfig) -> int:
        """The fewest layers a model for this recipe may have (`arctic verify --shrink` keeps at least
        these; its default is 2). Default: 1."""
        return 1

    def __init__(self, config: TrainerConfig, *, local_rank: int | None = None):
        self.config = config
        self.local_rank = local_rank
        self.tokenizer: Any = None
        self.train_dataset: Any = None
        self.eval_dataset: Any = None
        self.collate: Any = None
        self.model: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.engine: Any = None
        self.ds_config: dict[str, Any] = {}
        self.checkpoints: list[Any] = []
        self.global_step = 0
        self.epoch = 0
        self.total_steps = 0
        self.run_start_step = 0  # the step this process started (or resumed) at
        self.steps_per_epoch = 0
        self.step_in_epoch = 0
        """Optimizer steps done in the current epoch."""
        self.resume_point: Any = None
        self.train_loader: Any = None
        self.stopped_by = 0
        """The signal that stops the run after the current step (0: none)."""
        self._is_setup = False

    # --- setup steps --------------------------------------------------------------------------

    def setup(self) -> None:
        """Run every setup step once, in order."""
        if self._is_setup:
            return
        self.setup_distributed()
        self.setup_resume()
        self.resolve_recipe()
        self.setup_run_folder()
        self.setup_tokenizer()
        self.setup_data()
        self.setup_loaders()
        self.setup_model()
        self.setup_optimizer()
        self.setup_scheduler()
        self.setup_engine()
        self.setup_checkpoints()
        self.restore_training_state()
        self._is_setup = True

    def setup_distributed(self) -> None:
        """Check precision against the hardware, start the process group, build the DeepSpeed config."""
        from arctic_core.engine import deepspeed_config, distributed, topology
        from arctic_core.features import active_features
        from arctic_core.recipe.checks import preflight

        self.features = active_features(self.config)
        self.preflight_warnings: list[str] = []
        model_parallel = math.prod(self.topology_sizes().values())
        preflight(  # precision vs hardware, PEFT, [deepspeed], types, input paths: before anything is built
            self.config,
            trainer=type(self),
            world_size=max(1, int(os.environ.get("WORLD_SIZE", "1")) // model_parallel),
            warn=self.preflight_warnings.append,
        )
        distributed.init_distributed(self.local_rank)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.device = distributed.device()
        self.topology = topology.Topology(world_size=self.world_size, rank=self.rank, **self.topology_sizes())
        self.groups = topology.create_groups(self.topology)
        self.ds_config = deepspeed_config.build_deepspeed_config(self.config, self.topology.dp_size)
        self.zero_stage = deepspeed_config.zero_stage(self.ds_config)
        seed_everything(self.config.seed)

    def resolve_recipe(self) -> None:
        """The recipe's model-dependent unset keys set (`resolve_config`); its warnings logged with the run's."""
        self.config, self.config_sources, warnings = type(self).resolve_config(self.config)
        self.preflight_warnings = [*getattr(self, "preflight_warnings", []), *warnings]

    def setup_run_folder(self) -> None:
        """Per-rank log files, and the resolved recipe saved in the run folder.

        A fresh run (not a resume) into a folder that holds an earlier run first moves that run's
        recipe, metrics, generation-eval scores and logs into `previous/<time>/`.
        """
        from arctic_core.engine import distributed
        from arctic_core.engine.metrics import keep_previous_run, setup_logging
        from arctic_core.recipe.render import render

        run_dir = Path(self.config.run_dir)
        kept = None
        if self.rank == 0 and self.resume_point is None:  # a fresh run never overwrites an earlier one
            kept = keep_previous_run(self.config)
        distributed.barrier()
        self.log = setup_logging(self.config, self.rank)
        if kept is not None:
            self.log.info("this folder held an earlier run: its recipe, metrics and logs are now in %s", kept)
        for warning in getattr(self, "preflight_warnings", ()):
            self.log.warning("%s", warning)
        if self.rank == 0:
            (run_dir / "recipe.yaml").write_text(render(self.config, "yaml"))
        distributed.barrier()
        self.log.info(
            "run folder %s, %d rank(s) (%d data-parallel x %d sequence-parallel), ZeRO stage %d",
            run_dir,
            self.world_size,
            self.topology.dp_size,
            self.topology.sequence_parallel_size,
            self.zero_stage,
        )

    def setup_tokenizer(self) -> None:
        from arctic_core.data import load_tokenizer

        self.tokenizer = load_tokenizer(self.config)

    def setup_data(self) -> None:
        """Set `train_dataset`, `eval_dataset` (or None) and `collate` (rows -> batch)."""
        from arctic_core.data import DataFactory

        factory_class = self.data_factory_class or DataFactory
        factory = factory_class(self.config, self.tokenizer, run_dir=Path(self.config.run_dir))
        self.train_dataset = factory.train_dataset()
        self.eval_dataset = factory.eval_dataset()
        self.collate = factory.collate

    def setup_loaders(self) -> None:
        """The train loader (sharded over data-parallel ranks, stateful), and the step counts it implies."""
        from arctic_core.engine.loaders import train_loader

        loader = train_loader(
            self.train_dataset,
            self.collate,
            batch_size=self.config.micro_batch_size,
            accumulation=self.config.gradient_accumulation_steps,
            dp_rank=self.topology.dp_rank,
            dp_size=self.topology.dp_size,
            seed=self.config.data.seed,
            workers=self.config.data.dl_num_workers,
        )
        self.train_loader = self.features.wrap_loader(self, loader)
        self.steps_per_epoch = len(self.train_loader) // self.config.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            per_step = self.config.micro_batch_size * self.config.gradient_accumulation_steps
            raise ArcticError(
                f"the training data ({len(self.train_dataset)} samples) does not fill one optimizer step of "
                f"{per_step * self.topology.dp_size} samples"
            )
        repeats = -(-self.config.min_iterations // self.steps_per_epoch)  # data repeated, whole epochs
        self.total_steps = (
            self.config.train_iters or self.config.epochs * max(repeats, 1) * self.steps_per_epoch
        )

    def setup_model(self) -> None:
        """Build the model, let the method transform it, add PEFT adapters, choose the trainable parameters."""
        from arctic_core.engine.model import apply_activation_checkpointing
        from arctic_core.engine.peft import apply_adapters

        self.features.before_model(self)
        model = self.build_model()
        checkpointing, why = apply_activation_checkpointing(
            model, self.config, device=self.device, world=self.world_size, deepspeed=self.ds_config
        )
        self.log.info("activation checkpointing %s: %s", "on" if checkpointing else "off", why)
        model = self.transform_model(model)
        model = self.features.transform_model(self, model)
        model = apply_adapters(
            model, self.config.model, seed=self.config.seed, activation_checkpointing=checkpointing
        )
        self.trainable_names = self.select_trainable(model)
        self.model = model

    def setup_optimizer(self) -> None:
        from arctic_core.engine import distributed
        from arctic_core.engine.optimizer import build_optimizer

        assert self.model is not None
        self.optimizer = build_optimizer(self.model, self.config.optimizer, cuda=distributed.has_cuda())

    def setup_scheduler(self) -> None:
        from arctic_core.engine.scheduler import build_scheduler

        assert self.optimizer is not None
        self.scheduler = build_scheduler(self.optimizer, self.config.scheduler, self.total_steps)

    def setup_engine(self) -> None:
        """`deepspeed.initialize`, given the topology's process groups when sequence parallelism is on."""
        import deepspeed

        from arctic_core.engine.topology import deepspeed_mpu

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=self.optimizer,
            lr_scheduler=self.scheduler,
            config=self.ds_config,
            mpu=deepspeed_mpu(self.groups),
            dist_init_required=False,
        )
        if self.world_size == 1 and self.zero_stage == 0:
            # On one rank DeepSpeed's gradient all-reduce is a no-op that still flattens every
            # gradient into a bucket and copies it back (a pass over all gradients per step).
            self.engine.enable_backward_allreduce = False
        self.model = self.engine.module

    def setup_checkpoints(self) -> None:
        from arctic_core.engine.checkpoint import checkpoint_engine_class

        self.checkpoints = [
            checkpoint_engine_class(entry.type, i)(self, entry)
            for i, entry in enumerate(self.config.checkpoint)
        ]

    def setup_resume(self) -> None:
        """With `auto_resume`, find the newest complete checkpoint; refuse one this run cannot continue."""
        from arctic_core.engine.resume import find_resume_point

        self.resume_point = find_resume_point(self.config, self.world_size)

    def restore_training_state(self) -> None:
        """Load the checkpoint `setup_resume` found: engine, optimizer, scheduler, step, data position, RNG."""
        from arctic_core.engine.resume import restore

        if self.resume_point is None:
            return
        restore(self, self.resume_point)
        self.log.info(
            "resumed from %s at step %d (epoch %d, %d of its %d steps done)",
            self.resume_point.folder,
            self.global_step,
            self.epoch,
            self.step_in_epoch,
            self.steps_per_epoch,
        )

    # --- hooks --------------------------------------------------------------------------------

    def build_model(self) -> torch.nn.Module:
        """The network from `[model]` (partitioned while built under ZeRO-3)."""
        from arctic_core.engine.model import build_model

        return build_model(
            self.config.model, self.ds_config, seed=self.config.seed, auto_class=self.auto_model_class
        )

    def transform_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Add or patch modules before the trainable parameters are chosen (default: unchanged)."""
        return model

    def select_trainable(self, model: torch.nn.Module) -> list[str]:
        """Set `requires_grad`; returns the trainable parameter names (default: the recipe's globs)."""
        from arctic_core.engine.model import select_trainable

        return select_trainable(
            model, self.config.model.trainable_parameters, self.config.model.frozen_parameters
        )

    def build_frozen_model(self, config: ModelConfig | None = None, *, auto_class: Any = None) -> Any:
        """A frozen companion (reference, teacher, base model) from a `[model]` table (default: `[model]`).

        Same precision and ZeRO-3 partitioning as the trained model, eval mode, no gradients, no
        optimizer state, never checkpointed (`arctic_core.engine.frozen`). Call it as the module.
        """
        from arctic_core.engine.frozen import build_frozen
        from arctic_core.engine.topology import deepspeed_mpu

        frozen = build_frozen(
            config or self.config.model,
            self.ds_config,
            self.device,
            seed=self.config.seed,
            auto_class=auto_class if auto_class is not None else self.auto_model_class,
            mpu=deepspeed_mpu(self.groups),
        )
        self.features.transform_frozen(self, frozen.module)
        self.log.info("frozen model: %s", (config or self.config.model).name_or_path)
        return frozen

    def topology_sizes(self) -> dict[str, int]:
        """Parallel sizes for `arctic_core.engine.topology.Topology` (default: those enabled features ask for)."""
        return self.features.parallel_sizes()

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A micro-batch on the device, before its weight and loss (default: the enabled features' step)."""
        return self.features.prepare_batch(self, batch)

    def micro_batch_weight(self, batch: dict[str, Any]) -> float:
        """What this (prepared) micro-batch counts for in the step's mean loss, known before its forward.

        Default: its trainable tokens (`num_trainable_tokens`), else 1. A method whose loss is a
        mean over pairs, samples or queries returns their number.
        """
        from arctic_core.engine.loop import trainable_count

        return trainable_count(batch)

    def forward(self, batch: dict[str, Any]) -> Any:
        """One forward pass of the engine on the batch's model inputs."""
        from arctic_core.engine.loop import model_inputs

        return self.engine(**model_inputs(batch), use_cache=False)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor | LossOutput:
        """Mean causal-LM cross-entropy over the micro-batch's trainable tokens (or a `LossOutput`).

        Default: the fused linear cross-entropy over the trained positions only
        (`arctic_core.losses.causal_lm_loss`); the full-logits loss for a model that is not a
        transformers causal LM with an output layer.
        """
        from arctic_core import losses
        from arctic_core.engine.loop import causal_lm_loss

        try:
            losses.backbone_and_head(self.model)
        except TypeError:
            return causal_lm_loss(self.forward(batch).logits, batch["labels"])
        chunk_size = getattr(self.config, "loss_chunk_size", losses.DEFAULT_CHUNK_SIZE)
        return losses.causal_lm_loss(
            self.model, batch, chunk_size=chunk_size, call=self.engine, kernels=self.config.kernels
        )

    def before_optimizer_step(self) -> None:
        """Called after the step's last backward, before the optimizer step (gradients are complete)."""

    def step_metrics(self) -> dict[str, Any]:
        """Extra values for this step's metrics line."""
        return {}

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> None:
        """Set up, then train for `train_iters` optimizer steps or `epochs` epochs."""
        from arctic_core.engine.metrics import MetricsWriter
        from arctic_core.engine.signals import StopRequest

        self.setup()
        resumed = self.resume_point is not None
        self.run_start_step = self.global_step
        self.log.info("training %d optimizer steps (%d per epoch)", self.total_steps, self.steps_per_epoch)
        for note in self.recipe_notes:
            self.log.warning("%s", note)
        self.log.info("%s", ARCTICTRAINING_DIFFERENCES)
        self.metrics = MetricsWriter(
            self.config,
            rank=self.rank,
            total_steps=self.total_steps,
            resume_step=self.global_step if resumed else None,
        )
        self.stop_request = StopRequest(self.log)
        self.stop_request.install()
        try:
            if self.config.generation_eval.before_training and not resumed:
                self.generation_eval("before training")
            while not self._finished() and not self.stopped_by:
                if self.train_epoch():
                    for checkpoint in self.checkpoints:
                        checkpoint.after_epoch(self.epoch)
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if self.stopped_by:
                self.stop_on_signal()
            for checkpoint in self.checkpoints:
                checkpoint.end_of_training()
            if self.config.generation_eval.after_training:
                self.generation_eval("after training")
        finally:
            self.train_loader.close()
            self.stop_request.uninstall()
            self.metrics.close()
        self.log.info("training finished after %d optimizer steps", self.global_step)

    def stop_on_signal(self) -> None:
        """After a signal: let the checkpoints that keep the training state save it, then stop the run."""
        import signal

        from arctic_core.engine.signals import TrainingStopped

        saved = [path for path in (c.on_stop(self.global_step) for c in self.checkpoints) if path is not None]
        name = signal.Signals(self.stopped_by).name
        where = (
            f"state saved to {saved[0]}" if saved else "no deepspeed checkpoint is configured, nothing saved"
        )
        self.log.warning("%s: stopped after step %d; %s", name, self.global_step, where)
        raise TrainingStopped(f"{name}: stopped after step {self.global_step}; {where}", self.stopped_by)

    def _stop_requested(self) -> bool:
        """Whether any rank was signalled (all ranks call this before every step and agree)."""
        self.stopped_by = self.stop_request.agreed()
        return bool(self.stopped_by)

    def _finished(self) -> bool:
        exit_at, this_run = self.config.exit_iteration, self.config.exit_iteration_this_run
        if this_run and self.global_step - self.run_start_step >= this_run:
            return True
        return self.global_step >= self.total_steps or bool(exit_at and self.global_step >= exit_at)

    def train_epoch(self) -> bool:
        """One pass over the data (reshuffled for this epoch); False when training ended part-way through.

        Micro-batches left over after the epoch's last full optimizer step are skipped.
        """
        gas = self.config.gradient_accumulation_steps
        self.train_loader.start_epoch(self.epoch)  # a resumed loader goes on from its restored position
        batches = iter(self.train_loader)
        while self.step_in_epoch < self.steps_per_epoch:
            if self._finished() or self._stop_requested():
                return False
            micro_batches = list(itertools.islice(batches, gas))
            if len(micro_batches) < gas:  # a position restored from a changed recipe may end it early
                break
            self.train_step(micro_batches)
        return True

    def train_step(self, micro_batches: list[dict[str, Any]]) -> None:
        """One optimizer step over this rank's micro-batches, each weighted by its share of the global batch."""
        from arctic_core.engine import distributed
        from arctic_core.engine.loop import WeightedMeans, as_loss_output, check_weight, to_device

        start = time.perf_counter()
        step = self.global_step + 1
        self.engine.train()
        batches = [self.prepare_batch(to_device(b, self.device)) for b in micro_batches]
        weights = [check_weight(self.micro_batch_weight(b), f"step {step}") for b in batches]
        (total,) = distributed.all_reduce_sum([sum(weights)])
        if total <= 0:
            raise ArcticError(f"step {step}: the global batch has no trainable token (its weights sum to 0)")
        replicas = self.topology.dp_size  # DeepSpeed divides the summed gradients by this
        weighted = torch.zeros((), dtype=torch.float64, device=self.device)
        metrics = WeightedMeans()
        for i, (batch, weight) in enumerate(zip(batches, weights)):
            out = as_loss_output(self.loss(batch))
            weighted += out.loss.detach().double() * weight
            metrics.add(out.metrics, weight if out.weight is None else out.weight)
            self.engine.backward(out.loss * (weight * replicas / total), scale_wrt_gas=False)
            if i == len(batches) - 1:
                record = self._close_step(float(weighted), total, batches, metrics)
            self.engine.step()
        self.global_step += 1
        self.step_in_epoch += 1
        if record["grad_norm"] is None:
            record["grad_norm"] = self._engine_grad_norm()
        self._finish_step(record, start)

    def _close_step(
        self, weighted: float, total: float, batches: list[dict[str, Any]], metrics: Any
    ) -> dict[str, Any]:
        """After the last backward, before the optimizer step: the step's loss (checked), lr, counts, metrics."""
        from arctic_core.engine import distributed
        from arctic_core.engine.loop import labelled_count, token_count

        step = self.global_step + 1
        loss_sum, tokens, labelled = distributed.all_reduce_sum(
            [
                weighted,
                sum(token_count(b) for b in batches),
                sum(labelled_count(b) for b in batches),
            ]
        )
        step_loss = loss_sum / total
        if not math.isfinite(step_loss):
            raise ArcticError(f"step {step}: the loss is {step_loss} (not finite); stopping")
        record = {
            "step": step,
            "epoch": self.epoch,
            "loss": step_loss,
            "lr": self.current_lr(),
            "grad_norm": self._grad_norm_before_step(),
            "tokens": int(tokens),
            "trainable_tokens": int(labelled),
            **metrics.means(distributed.all_reduce_sum),
        }
        self.before_optimizer_step()
        return record

    def _finish_step(self, record: dict[str, Any], start: float) -> None:
        from arctic_core.engine.metrics import peak_memory_gb

        seconds = time.perf_counter() - start
        interval = self.config.eval_interval
        if interval and self.global_step % interval == 0 and self.eval_dataset is not None:
            record.update(self.evaluate())
        record.update(
            seconds=seconds,
            tokens_per_s=record["tokens"] / max(seconds, 1e-9),
            peak_memory_gb=peak_memory_gb(self.device),
            **self.step_metrics(),
        )
        self.metrics.write(record)
        self.log.debug("step %s", record)
        for checkpoint in self.checkpoints:
            checkpoint.after_step(self.global_step)

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def _grad_norm_before_step(self) -> float | None:
        """DeepSpeed reports no norm for ZeRO-0 in fp32; there the gradients are plain `.grad`s."""
        if self.zero_stage != 0 or self.engine.bfloat16_enabled() or self.engine.fp16_enabled():
            return None
        grads = [p.grad.detach() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads, foreach=True)) if grads else 0.0

    def _engine_grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def generation_eval(self, when: str) -> float | None:
        """Greedy-decoding accuracy on `[generation_eval] path` (see `arctic_core.evals`); None when off."""
        from arctic_core import evals
        from arctic_core.engine import distributed
        from arctic_core.engine.checkpoint import stop_token_ids

        settings = self.config.generation_eval
        if settings.path is None:
            return None
        module: Any = self.engine.module
        correct, total = evals.generation_accuracy(
            module,
            self.tokenizer,
            evals.read_references(settings),
            stop_ids=stop_token_ids(module.config, module.generation_config, self.tokenizer),
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            zero3=self.zero_stage == 3,
        )
        correct, total = (int(n) for n in distributed.all_reduce_sum([correct, total]))
        accuracy = correct / max(total, 1)
        self.log.info("held-out accuracy %s: %.1f%% (%d of %d)", when, 100 * accuracy, correct, total)
        if self.rank == 0:
            with (Path(self.config.run_dir) / "generation_eval.jsonl").open("a") as out:
                out.write(json.dumps({"when": when, "step": self.global_step, "accuracy": accuracy}) + "\n")
        return accuracy

    def eval_rounds(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """This rank's prepared eval batches on the device, each with True; then, until every rank has had
        as many rounds, a filler batch with False whose results the caller discards (ZeRO-3 gathers
        parameters collectively, so every rank must run as many forwards)."""
        from arctic_core.engine.loaders import eval_batch_count, eval_batches
        from arctic_core.engine.loop import to_device
        from arctic_core.gather import lockstep

        data, mbs, dp, dp_rank = (
            self.eval_dataset,
            self.config.micro_batch_size,
            self.topology.dp_size,
            self.topology.dp_rank,
        )
        loaded = eval_batches(data, self.collate, batch_size=mbs, dp_rank=dp_rank, dp_size=dp)

        def prepared(batch: dict[str, Any]) -> dict[str, Any]:
            return self.prepare_batch(to_device(batch, self.device))

        yield from lockstep(  # over every rank: the group whose gathers ZeRO-3 runs
            map(prepared, loaded),
            filler=lambda: prepared(self.collate([data[0]])),
            count=eval_batch_count(data, batch_size=mbs, dp_rank=dp_rank, dp_size=dp),
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Weighted mean loss (and perplexity) and the loss's metrics over the eval data, each sample once."""
        from arctic_core.engine import distributed
        from arctic_core.engine.loop import WeightedMeans, as_loss_output

        self.engine.eval()
        means = WeightedMeans()
        for batch, counts in self.eval_rounds():
            out = as_loss_output(self.loss(batch))
            weight = self.micro_batch_weight(batch) if counts else 0.0  # fillers count for nothing
            means.add({"loss": out.loss}, weight)
            means.add(out.metrics, weight if out.weight is None or not counts else out.weight)
        self.engine.train()
        results = {f"eval_{name}": value for name, value in means.means(distributed.all_reduce_sum).items()}
        if self.reports_perplexity:
            results["eval_perplexity"] = math.exp(min(results["eval_loss"], 700.0))
        return results
