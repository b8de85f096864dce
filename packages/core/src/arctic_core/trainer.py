"""The method-facing trainer: the hooks a method overrides. Setup and the loop live in the engine.

A method subclasses `Trainer[ItsConfig]` (or another method's trainer), sets `name` and
`config_class`, and overrides a hook or two; `self.config` is then typed as `ItsConfig`.
Setting `name` registers the class, which is how a recipe's `type` (and the seed README's custom
trainers) select it.

`train()` runs the named setup steps (`arctic_core.engine.setup`), then the loop
(`arctic_core.engine.loop.train_loop`): optimizer steps over `gradient_accumulation_steps`
micro-batches each, with events (`train_start`, `eval`, `step_end`, `epoch_end`, `signal`,
`train_end`) that the metrics line, checkpoints, evaluations, features and the method subscribe
to. Where the run stands (step, epoch, tokens, loader position, RNG) is one `TrainingState`
(`arctic_core.engine.state`), which the `deepspeed` checkpoint saves and restores.

Hooks for methods (override in a subclass; docs/writing-a-method.md):

- `loss(batch)`: the micro-batch's mean loss, a tensor or a `LossOutput(loss, weight,
  metrics)` (default: causal-LM cross-entropy with the shift). It may run several forward
  passes (`forward(batch)`, frozen companions from `build_frozen_model`).
- `micro_batch_weight(batch)`: what the micro-batch counts for in the step's mean, known
  before its forward (default: the collate's `num_trainable_tokens`, else 1).
- `step_batches(loaded)`: a step's micro-batches from those the loader gave (default: them);
  an online method generates its own from the loaded prompts with the current policy.
- `prepare_batch(batch)`: between the loader and the loss, on the device (default: the
  enabled feature plugins', e.g. sequence sharding).
- `build_model()`, `transform_model(model)`: build the network; add or patch modules.
- `select_trainable(model)`: which parameters train (default: the recipe's glob patterns).
- `setup_tokenizer()`, `setup_data()`: the tokenizer; datasets and the collate function (default:
  `arctic_core.data.DataFactory`); a `arctic_core.engine.loaders.PreBatched` train dataset holds
  whole global batches.
- `topology_sizes()`: the parallel sizes (default: what enabled features ask for).
- `before_optimizer_step()`: called once per step after the last backward, gradients complete.
- `step_metrics()`: extra numbers for the step's metrics line.
- `step_flops(micro_batch)`: a micro-batch's training FLOPs for `tflops`/`mfu` (default: core's
  counter on the trained model, `flops_counter`).
- `subscribe(events)`: the method's own handlers for the loop's events (default: none).
- `evaluate()`, `generation_eval(when)`: the eval loss; held-out generation accuracy.
- class-level: `check_config`, `shrink_layers`, `verify_skips` (recipe checks, `arctic verify`).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from arctic_core.compat.arctictraining import ARCTICTRAINING_DIFFERENCES
from arctic_core.config import ModelConfig, TrainerConfig
from arctic_core.engine.loop import Events, LossOutput
from arctic_core.engine.setup import seed_everything
from arctic_core.engine.state import TrainingState
from arctic_core.registry import register_trainer

__all__ = ["LossOutput", "Trainer", "seed_everything"]

ConfigT = TypeVar("ConfigT", bound=TrainerConfig)


class Trainer(Generic[ConfigT]):
    """One training run of a method: `Trainer[ItsConfig](config).train()`."""

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
    def resolve_config(
        cls, config: TrainerConfig, *, fetch: bool = False
    ) -> tuple[TrainerConfig, dict[str, str], list[str]]:
        """Set the recipe's unset keys whose values come from the model's own folder (an embedding
        model's pooling, say): the config with them set, where each came from (key path -> file or
        "default") and warnings to log once. Runs before anything is built (`fetch=True`: a run may
        download a hub model's small folder files) and in `arctic config show` (`fetch=False`: no
        side effects, local folders and the cache only). Default: the config unchanged."""
        return config, {}, []

    @classmethod
    def shrink_layers(cls, config: TrainerConfig) -> int:
        """The fewest layers a model for this recipe may have (`arctic verify --shrink` keeps at least
        these; its default is 2). Default: 1."""
        return 1

    def __init__(self, config: ConfigT, *, local_rank: int | None = None):
        self.config: ConfigT = config
        self.local_rank = local_rank
        self.state = TrainingState()
        """Where the run stands; the loop advances it, the `deepspeed` checkpoint saves and restores it."""
        self.events = Events()
        """The loop's events and their subscribers (filled when the run starts)."""
        # Set by the setup steps (`arctic_core.engine.setup`), in this order; None until then.
        self.features: Any = None
        self.preflight_warnings: list[str] = []
        self.rank, self.world_size = 0, 1
        self.device: Any = None
        self.topology: Any = None
        self.groups: Any = None
        self.ds_config: dict[str, Any] = {}
        self.zero_stage = 0
        self.resume_point: Any = None
        self.config_sources: dict[str, str] = {}
        """Where each model-dependent key the method resolved came from (`resolve_config`)."""
        self.log: Any = None
        self.tokenizer: Any = None
        self.train_dataset: Any = None
        self.eval_dataset: Any = None
        self.collate: Any = None
        self.model: Any = None
        self.trainable_names: list[str] = []
        self.router: Any = None
        """An MoE model's `arctic_core.engine.moe.RouterRecorder` (router loss, expert load); None if dense."""
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.engine: Any = None
        self.checkpoints: list[Any] = []
        # Set when the run starts (`arctic_core.engine.loop.start_run`).
        self.metrics: Any = None
        self.stop_request: Any = None
        self.stopped_by = 0
        """The signal that stops the run after the current step (0: none)."""
        self._is_setup = False

    # --- where the run stands (read-only views of `state`) -------------------------------------

    @property
    def global_step(self) -> int:
        """Optimizer steps done."""
        return self.state.global_step

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def step_in_epoch(self) -> int:
        return self.state.step_in_epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.state.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.state.total_steps

    @property
    def run_start_step(self) -> int:
        """The step this process started (or resumed) at."""
        return self.state.run_start_step

    @property
    def train_loader(self) -> Any:
        return self.state.loader

    # --- the run -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Run every setup step (`arctic_core.engine.setup.STEPS`) once, in order."""
        from arctic_core.engine import setup

        if self._is_setup:
            return
        for step in setup.STEPS:
            step(self)
        self._is_setup = True

    def train(self) -> None:
        """Set up, then train for `train_iters` optimizer steps or `epochs` epochs."""
        from arctic_core.engine.loop import end_run, start_run, train_loop

        self.setup()
        start_run(self)
        self.log.info("training %d optimizer steps (%d per epoch)", self.total_steps, self.steps_per_epoch)
        for note in self.recipe_notes:
            self.log.warning("%s", note)
        self.log.info("%s", ARCTICTRAINING_DIFFERENCES)
        try:
            train_loop(self)
        finally:
            end_run(self)
        self.log.info("training finished after %d optimizer steps", self.global_step)

    # --- hooks ---------------------------------------------------------------------------------

    def setup_tokenizer(self) -> None:
        """Set `tokenizer` (default: the model's, `arctic_core.data.load_tokenizer`)."""
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

    def step_batches(self, loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The micro-batches this rank trains the next optimizer step on, from the loader's (default: them).

        The rollout seam: an online method (arctic-rl's GRPO) reads prompts from `loaded` and returns
        the batches it generated from them with the current policy (any number, on any device; each
        then goes through `prepare_batch`, `micro_batch_weight` and `loss` as a loaded one would).
        The loader still decides which prompts each step sees, so data order, epochs and resume are
        every method's. Called once per step on every rank, before the step's first forward, with
        the model in training mode; a method that generates switches to eval mode and back itself.
        """
        return loaded

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

    def step_flops(self, micro_batch: dict[str, Any]) -> int | None:
        """Model training FLOPs of one micro-batch as loaded (on the CPU, before `prepare_batch`), for the
        metrics' `tflops` and `mfu` (called on rank 0 only); None where the model has no count.

        Default: core's counter for the trained model (`flops_counter`, over `input_ids`). A method
        whose batches or trained module differ (embed, speculator) counts its own, with
        `arctic_core.engine.flops.FlopsCounter`'s arithmetic.
        """
        counter = self.flops_counter
        return None if counter is None else counter.batch(micro_batch)

    @functools.cached_property
    def flops_counter(self) -> Any:
        """Core's `arctic_core.engine.flops.FlopsCounter` for the trained model (built on first use, with
        the tokenizer's padding id); None where the model has no transformer config."""
        from arctic_core.engine.flops import counter_for, pad_id_or_none

        return counter_for(self.model, pad_id=pad_id_or_none(self.tokenizer))

    def subscribe(self, events: Events) -> None:
        """Subscribe the method's own handlers to the loop's events (`arctic_core.engine.loop.EVENTS`),
        e.g. `events.subscribe("train_end", ...)`; they run after core's and the features'. Default: none."""

    # --- evaluation ----------------------------------------------------------------------------

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
