"""The trainer: one training loop for every method.

A method subclasses `Trainer` (or another method's trainer), sets `name` and
`config_class`, and overrides a hook or two. Setting `name` registers the class, which is
how a recipe's `type` (and the seed README's custom trainers) select it.

`train()` runs the named setup steps in order, then the loop:

    setup_distributed -> setup_run_folder -> setup_resume -> setup_tokenizer -> setup_data
    -> setup_loaders -> setup_model -> setup_optimizer -> setup_scheduler -> setup_engine
    -> setup_checkpoints -> restore_training_state
    for each optimizer step: gather `gradient_accumulation_steps` micro-batches, weight each
    by its share of the global batch's trainable tokens, forward + backward each, step,
    log one metrics line, maybe evaluate, maybe checkpoint.

Resuming (`auto_resume`, `arctic_core.engine.resume`) restores the engine, step, epoch,
position in the epoch and RNG states before the first step. SIGTERM/SIGINT stop the run
after the current step, with a checkpoint (`arctic_core.engine.signals`).

Hooks for methods (override in a subclass):

- `loss(batch)`: the micro-batch's mean loss over its trainable tokens (default: causal-LM
  cross-entropy with the shift). It may run several forward passes (`forward(batch)`).
- `build_model()`, `transform_model(model)`: build the network; add or patch modules.
- `select_trainable(model)`: which parameters train (default: the recipe's glob patterns).
- `setup_data()`: datasets and the collate function (default: `arctic_core.data.DataFactory`).
- `before_optimizer_step()`: called once per step after the last backward, gradients complete.
- `step_metrics()`: extra numbers for the step's metrics line.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from arctic_core.config import TrainerConfig
from arctic_core.errors import ArcticError
from arctic_core.registry import register_trainer


class Trainer:
    name: ClassVar[str]
    config_class: ClassVar[type[TrainerConfig]] = TrainerConfig
    auto_model_class: ClassVar[Any] = None
    data_factory_class: ClassVar[Any] = None
    """`arctic_core.data.DataFactory` subclass for `setup_data` (None: DataFactory itself)."""
    """transformers Auto class for `build_model` (None: AutoModelForCausalLM)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            register_trainer(cls)

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
        self.steps_per_epoch = 0
        self.step_in_epoch = 0
        """Optimizer steps done in the current epoch."""
        self.resume_point: Any = None
        self.stopped_by = 0
        """The signal that stops the run after the current step (0: none)."""
        self._is_setup = False

    # --- setup steps --------------------------------------------------------------------------

    def setup(self) -> None:
        """Run every setup step once, in order."""
        if self._is_setup:
            return
        self.setup_distributed()
        self.setup_run_folder()
        self.setup_resume()
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
        from transformers import set_seed

        from arctic_core.engine import deepspeed_config, distributed
        from arctic_core.engine.peft import check_recipe as check_peft_recipe

        deepspeed_config.check_precision(self.config, cuda=distributed.has_cuda())
        check_peft_recipe(self.config)  # peft installed, model.peft_config valid: before any model loads
        distributed.init_distributed(self.local_rank)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.device = distributed.device()
        self.ds_config = deepspeed_config.build_deepspeed_config(self.config, self.world_size)
        self.zero_stage = deepspeed_config.zero_stage(self.ds_config)
        set_seed(self.config.seed)  # python, numpy, torch (and CUDA)

    def setup_run_folder(self) -> None:
        """Per-rank log files, and the resolved recipe saved in the run folder."""
        from arctic_core.engine import distributed
        from arctic_core.engine.metrics import setup_logging
        from arctic_core.recipe.render import render

        run_dir = Path(self.config.run_dir)
        self.log = setup_logging(self.config, self.rank)
        if self.rank == 0:
            (run_dir / "recipe.yaml").write_text(render(self.config, "yaml"))
        distributed.barrier()
        self.log.info("run folder %s, %d rank(s), ZeRO stage %d", run_dir, self.world_size, self.zero_stage)

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
        """The sharded, seeded train loader, and the step counts it implies."""
        from arctic_core.engine.loop import train_loader

        self.train_loader, self.train_sampler = train_loader(
            self.train_dataset,
            self.collate,
            batch_size=self.config.micro_batch_size,
            rank=self.rank,
            world_size=self.world_size,
            seed=self.config.data.seed,
            workers=self.config.data.dl_num_workers,
        )
        self.steps_per_epoch = len(self.train_loader) // self.config.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            raise ArcticError(
                f"the training data ({len(self.train_dataset)} samples) does not fill one optimizer step of "
                f"{self.config.micro_batch_size * self.config.gradient_accumulation_steps * self.world_size} samples"
            )
        self.total_steps = self.config.train_iters or self.config.epochs * self.steps_per_epoch

    def setup_model(self) -> None:
        """Build the model, let the method transform it, add PEFT adapters, choose the trainable parameters."""
        from arctic_core.engine.peft import apply_adapters

        model = self.build_model()
        model = self.transform_model(model)
        model = apply_adapters(
            model,
            self.config.model,
            seed=self.config.seed,
            activation_checkpointing=not self.config.model.disable_activation_checkpoint,
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
        import deepspeed

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=self.optimizer,
            lr_scheduler=self.scheduler,
            config=self.ds_config,
            dist_init_required=False,
        )
        self.model = self.engine.module

    def setup_checkpoints(self) -> None:
        from arctic_core.engine.checkpoint import checkpoint_engine_class

        self.checkpoints = [
            checkpoint_engine_class(entry.type, i)(self, entry)
            for i, entry in enumerate(self.config.checkpoint)
        ]

    def setup_resume(self) -> None:
        """With `auto_resume`, find the newest complete checkpoint; refuse one from another rank count."""
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

    def forward(self, batch: dict[str, Any]) -> Any:
        """One forward pass of the engine on the batch's model inputs."""
        from arctic_core.engine.loop import model_inputs

        return self.engine(**model_inputs(batch), use_cache=False)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean causal-LM cross-entropy over the micro-batch's trainable tokens."""
        from arctic_core.engine.loop import causal_lm_loss

        return causal_lm_loss(self.forward(batch).logits, batch["labels"])

    def before_optimizer_step(self) -> None:
        """Called after the step's last backward, before the optimizer step (gradients are complete)."""

    def step_metrics(self) -> dict[str, Any]:
        """Extra values for this step's metrics line."""
        return {}

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> None:
        """Set up, then train for `train_iters` optimizer steps or `epochs` epochs."""
        from arctic_core.engine.loop import close_loader
        from arctic_core.engine.metrics import MetricsWriter
        from arctic_core.engine.signals import StopRequest

        self.setup()
        resumed = self.resume_point is not None
        self.log.info("training %d optimizer steps (%d per epoch)", self.total_steps, self.steps_per_epoch)
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
            close_loader(self.train_loader)
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
        exit_at = self.config.exit_iteration
        return self.global_step >= self.total_steps or bool(exit_at and self.global_step >= exit_at)

    def train_epoch(self) -> bool:
        """One pass over the data (reshuffled for this epoch); False when training ended part-way through.

        Micro-batches left over after the epoch's last full optimizer step are skipped.
        """
        from arctic_core.engine.faults import kill_at_step

        gas = self.config.gradient_accumulation_steps
        self.train_sampler.set_epoch(self.epoch)
        self.train_sampler.skip_next(self.step_in_epoch * gas * self.config.micro_batch_size)  # resumed
        batches = iter(self.train_loader)
        while self.step_in_epoch < self.steps_per_epoch:
            if self._finished() or self._stop_requested():
                return False
            self.train_step([next(batches) for _ in range(gas)])
            kill_at_step(self.global_step)  # test-only fault point
        return True

    def train_step(self, micro_batches: list[dict[str, Any]]) -> None:
        """One optimizer step over this rank's micro-batches, with the global token weighting."""
        from arctic_core.engine import distributed
        from arctic_core.engine.loop import to_device, trainable_count

        start = time.perf_counter()
        self.engine.train()
        counts = [trainable_count(b) for b in micro_batches]
        (total,) = distributed.all_reduce_sum([sum(counts)])
        if total <= 0:
            raise ArcticError(f"step {self.global_step + 1}: the global batch has no trainable token")
        ranks = self.engine.dp_world_size
        weighted = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (batch, count) in enumerate(zip(micro_batches, counts)):
            loss = self.loss(to_device(batch, self.device))
            weighted += loss.detach().double() * count
            self.engine.backward(loss * (count * ranks / total), scale_wrt_gas=False)
            if i == len(micro_batches) - 1:
                record = self._close_step(float(weighted), total, micro_batches)
            self.engine.step()
        self.global_step += 1
        self.step_in_epoch += 1
        if record["grad_norm"] is None:
            record["grad_norm"] = self._engine_grad_norm()
        self._finish_step(record, start)

    def _close_step(
        self, weighted: float, total: float, micro_batches: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """After the last backward, before the optimizer step: the step's loss (checked), lr, counts."""
        from arctic_core.engine import distributed
        from arctic_core.engine.loop import labelled_count, token_count

        step = self.global_step + 1
        loss_sum, tokens, labelled = distributed.all_reduce_sum(
            [
                weighted,
                sum(token_count(b) for b in micro_batches),
                sum(labelled_count(b) for b in micro_batches),
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
        grads = [p.grad.detach().float() for p in self.engine.module.parameters() if p.grad is not None]
        return (
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if grads
            else 0.0
        )

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
        """This rank's eval batches on the device, each with True; then, until every rank has had as
        many rounds, a filler batch with False whose results the caller discards (ZeRO-3 gathers
        parameters collectively, so every rank must run as many forwards)."""
        from arctic_core.engine.loop import eval_batch_count, eval_batches, to_device

        size, mbs, world = len(self.eval_dataset), self.config.micro_batch_size, self.world_size
        rounds = max(eval_batch_count(size, batch_size=mbs, rank=r, world_size=world) for r in range(world))
        mine = eval_batches(self.eval_dataset, self.collate, batch_size=mbs, rank=self.rank, world_size=world)
        filler: dict[str, Any] | None = None
        for _ in range(rounds):
            batch = next(mine, None)
            if batch is not None:
                yield to_device(batch, self.device), True
                continue
            filler = filler or self.collate([self.eval_dataset[0]])
            yield to_device(filler, self.device), False

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-weighted loss and perplexity over the eval data, each sample counted once across ranks."""
        from arctic_core.engine import distributed
        from arctic_core.engine.loop import trainable_count

        self.engine.eval()
        loss_sum = tokens = 0.0
        for batch, counts in self.eval_rounds():
            loss = float(self.loss(batch))
            if counts:
                count = trainable_count(batch)
                loss_sum += loss * count
                tokens += count
        loss_sum, tokens = distributed.all_reduce_sum([loss_sum, tokens])
        self.engine.train()
        eval_loss = loss_sum / max(tokens, 1.0)
        return {"eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 700.0))}
