"""Pieces of the training loop that need no trainer: what a loss returns, batch bookkeeping, weighting.

Loss weighting (see docs/training.md): `Trainer.loss(batch)` returns the micro-batch's mean
loss, as a tensor or a `LossOutput`. Each micro-batch has a weight w_i, known before its
forward (`Trainer.micro_batch_weight`: its trainable tokens by default, its pairs, samples or
queries for other methods). An optimizer step's loss must be the weighted mean over the whole
global batch, sum_i w_i L_i / W with W = sum of w_i over every micro-batch of the step on
every rank (one all-reduce before the first forward). DeepSpeed sums gradients over the ranks
and divides by the D data-parallel replicas, so the loop hands `engine.backward` the loss
times `w_i x D / W` and asks it not to divide by the accumulation steps (`scale_wrt_gas=False`).

For a mixture-of-experts model the loss of micro-batch i is L_i + c·A_i, its router's
load-balancing loss A_i times the coefficient c, under the same weights (`arctic_core.engine.moe`).

Metrics a loss returns (`LossOutput.metrics`, per-micro-batch means) are reported as weighted
means over the step (or the evaluation), weighted by `LossOutput.weight` (default: w_i).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch

from arctic_core.errors import ArcticError

if TYPE_CHECKING:
    from arctic_core.trainer import Trainer

IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


@attrs.frozen
class LossOutput:
    """What `Trainer.loss(batch)` may return instead of a bare tensor.

    - `loss`: the micro-batch's mean loss (a scalar tensor with its graph).
    - `weight`: how much the micro-batch's metrics count in the step's (and the evaluation's)
      weighted means; None: its loss weight, `Trainer.micro_batch_weight(batch)`.
    - `metrics`: per-micro-batch means (floats or scalar tensors), reported per step and in eval.
    """

    loss: torch.Tensor
    weight: float | None = None
    metrics: Mapping[str, Any] = attrs.field(factory=dict)


def as_loss_output(value: Any) -> LossOutput:
    if isinstance(value, LossOutput):
        return value
    if isinstance(value, torch.Tensor):
        return LossOutput(value)
    raise TypeError(f"loss() must return a tensor or a LossOutput, not {type(value).__name__}")


class WeightedMeans:
    """Weighted sums of named values over micro-batches; means over every rank at the end (one all-reduce)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, values: Mapping[str, Any], weight: float) -> None:
        for name, value in values.items():
            number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = self.sums.get(name, 0.0) + number * weight
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self, reduce: Any) -> dict[str, float]:
        """`reduce` sums a list of floats over ranks; every rank must hold the same names in the same order."""
        names = sorted(self.sums)
        if not names:
            return {}
        totals = reduce([self.sums[n] for n in names] + [self.weights[n] for n in names])
        count = len(names)
        return {
            n: totals[i] / totals[count + i] if totals[count + i] else math.nan for i, n in enumerate(names)
        }


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over trainable tokens; labels are unshifted (logits[:, :-1] predict labels[:, 1:]).

    A micro-batch without a trainable token gives 0 with zero gradients (not NaN), so it cannot
    poison the step it belongs to.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:].to(shifted_logits.device)
    total = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (shifted_labels != IGNORE_INDEX).sum().clamp(min=1)


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch-contract keys a causal LM's forward takes (never `labels`: the loss is computed here)."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def trainable_count(batch: Mapping[str, Any]) -> float:
    """The micro-batch's trainable tokens, or 1 when the batch does not say (equal weights)."""
    count = batch.get("num_trainable_tokens")
    return float(count) if count is not None else 1.0


def token_count(batch: Mapping[str, Any]) -> int:
    """Tokens in the micro-batch, for throughput: the collate's `num_tokens` if it gives one, else the
    attention mask's ones when unpacked, every position of `input_ids` when packed, 0 without tokens."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "input_ids" in batch:
        return int(batch["input_ids"].numel())
    return 0


def labelled_count(batch: Mapping[str, Any]) -> int:
    """Trainable tokens: the collate's `num_trainable_tokens`, else labels != -100, else 0."""
    if "num_trainable_tokens" in batch:
        return int(batch["num_trainable_tokens"])
    if "labels" in batch:
        return int((batch["labels"] != IGNORE_INDEX).sum())
    return 0


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def check_weight(weight: float, where: str) -> float:
    if not math.isfinite(weight) or weight < 0:
        raise ArcticError(f"{where}: micro_batch_weight gave {weight}; a weight must be finite and >= 0")
    return weight


# --- the loop -------------------------------------------------------------------------------------

EVENTS = ("train_start", "eval", "step_end", "epoch_end", "signal", "train_end")
"""The loop's events, with what their subscribers receive: `train_start()`, `eval(record)` (add the
evaluation's numbers to the step's metrics record), `step_end(record)`, `epoch_end(epoch)`,
`signal(signum)` (return the checkpoint folder saved, if any), `train_end()`."""


class Events:
    """Subscribers of the loop's events (`EVENTS`), called in the order they subscribed."""

    def __init__(self) -> None:
        self.subscribers: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENTS}

    def subscribe(self, event: str, handler: Callable[..., Any]) -> None:
        if event not in self.subscribers:
            raise ValueError(f"no loop event {event!r}; the events are {', '.join(EVENTS)}")
        self.subscribers[event].append(handler)

    def emit(self, event: str, *args: Any) -> list[Any]:
        """Call every subscriber of `event`; their return values, in order."""
        return [handler(*args) for handler in self.subscribers[event]]


def train_loop(trainer: Trainer) -> None:
    """Optimizer steps until `train_iters`, `epochs` or `exit_iteration` is reached, or a signal."""
    state, events = trainer.state, trainer.events
    events.emit("train_start")
    while not finished(trainer) and not trainer.stopped_by:
        epoch = EpochSteps(trainer)
        for micro_batches in epoch:
            record = train_step(trainer, micro_batches)
            if eval_due(trainer):
                events.emit("eval", record)
            events.emit("step_end", record)
        if epoch.complete:
            events.emit("epoch_end", state.epoch)
            state.finish_epoch()
    if trainer.stopped_by:
        saved = [folder for folder in events.emit("signal", trainer.stopped_by) if folder is not None]
        raise training_stopped(trainer, saved)
    events.emit("train_end")


class EpochSteps:
    """The current epoch's optimizer steps (lists of micro-batches), from where the loader stands.

    Before each step every rank agrees whether a signal came (`StopRequest.agreed`). `complete`
    is False when training ended or a signal stopped it part-way through the epoch.
    Micro-batches left over after the epoch's last full optimizer step are skipped.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.complete = True

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        trainer, state = self.trainer, self.trainer.state
        gas = state.accumulation
        state.loader.start_epoch(state.epoch)  # a resumed loader goes on from its restored position
        batches = iter(state.loader)
        while state.step_in_epoch < state.steps_per_epoch:
            if finished(trainer) or stop_requested(trainer):
                self.complete = False
                return
            micro_batches = list(itertools.islice(batches, gas))
            if len(micro_batches) < gas:  # a position restored from a changed recipe may end it early
                return
            yield micro_batches


def finished(trainer: Trainer) -> bool:
    """Whether the run has done its steps (`train_iters`/`epochs`, `exit_iteration`, `exit_iteration_this_run`)."""
    state, config = trainer.state, trainer.config
    exit_at, this_run = config.exit_iteration, config.exit_iteration_this_run
    if this_run and state.global_step - state.run_start_step >= this_run:
        return True
    return state.global_step >= state.total_steps or bool(exit_at and state.global_step >= exit_at)


def stop_requested(trainer: Trainer) -> bool:
    """Whether any rank was signalled (all ranks call this before every step and agree)."""
    trainer.stopped_by = trainer.stop_request.agreed()
    return bool(trainer.stopped_by)


def eval_due(trainer: Trainer) -> bool:
    """Whether the step just done evaluates (`eval_interval`, with eval data)."""
    interval = trainer.config.eval_interval
    return bool(interval and trainer.state.global_step % interval == 0 and trainer.eval_dataset is not None)


def training_stopped(trainer: Trainer, saved: list[Any]) -> Exception:
    """The `TrainingStopped` that ends a run stopped by a signal (logged), naming what was saved."""
    import signal

    from arctic_core.engine.signals import TrainingStopped

    step, name = trainer.state.global_step, signal.Signals(trainer.stopped_by).name
    where = f"state saved to {saved[0]}" if saved else "no deepspeed checkpoint is configured, nothing saved"
    trainer.log.warning("%s: stopped after step %d; %s", name, step, where)
    return TrainingStopped(f"{name}: stopped after step {step}; {where}", trainer.stopped_by)


def train_step(trainer: Trainer, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
    """One optimizer step over this rank's micro-batches, each weighted by its share of the global batch.

    The loaded micro-batches first pass through `Trainer.step_batches` (default: unchanged), where an
    online method replaces them by the batches it generates from the current policy.

    Returns the step's metrics record (its `seconds` so far; `write_metrics` completes it).
    """
    from arctic_core.engine import distributed
    from arctic_core.engine.moe import loss_with_router

    start = time.perf_counter()
    step, engine = trainer.state.global_step + 1, trainer.engine
    engine.train()
    micro_batches = trainer.step_batches(micro_batches)  # an online method's rollouts
    trainer.metrics.count_flops(micro_batches)
    batches = [trainer.prepare_batch(to_device(b, trainer.device)) for b in micro_batches]
    weights = [check_weight(trainer.micro_batch_weight(b), f"step {step}") for b in batches]
    (total,) = distributed.all_reduce_sum([sum(weights)])
    if total <= 0:
        raise ArcticError(f"step {step}: the global batch has no trainable token (its weights sum to 0)")
    replicas = trainer.topology.dp_size  # DeepSpeed divides the summed gradients by this
    weighted = torch.zeros((), dtype=torch.float64, device=trainer.device)
    metrics = WeightedMeans()
    for i, (batch, weight) in enumerate(zip(batches, weights)):
        out = loss_with_router(trainer.router, trainer.loss, batch)  # + c·A_i for MoE models
        weighted += out.loss.detach().double() * weight
        metrics.add(out.metrics, weight if out.weight is None else out.weight)
        engine.backward(out.loss * (weight * replicas / total), scale_wrt_gas=False)
        if i == len(batches) - 1:
            record = close_step(trainer, float(weighted), total, batches, metrics)
        engine.step()
    trainer.state.finish_step(record["tokens"])
    if record["grad_norm"] is None:
        norm = engine.get_global_grad_norm()
        record["grad_norm"] = float(norm) if norm is not None else None
    record["seconds"] = time.perf_counter() - start
    return record


def close_step(
    trainer: Trainer, weighted: float, total: float, batches: list[dict[str, Any]], metrics: WeightedMeans
) -> dict[str, Any]:
    """After the last backward, before the optimizer step: the step's loss (checked), lr, counts, metrics;
    then the method's `before_optimizer_step`."""
    from arctic_core.engine import distributed

    step = trainer.state.global_step + 1
    loss_sum, tokens, labelled = distributed.all_reduce_sum(
        [weighted, sum(token_count(b) for b in batches), sum(labelled_count(b) for b in batches)]
    )
    step_loss = loss_sum / total
    if not math.isfinite(step_loss):
        raise ArcticError(f"step {step}: the loss is {step_loss} (not finite); stopping")
    record = {
        "step": step,
        "epoch": trainer.state.epoch,
        "loss": step_loss,
        "lr": float(trainer.engine.get_lr()[0]),
        "grad_norm": grad_norm_before_step(trainer),
        "tokens": int(tokens),
        "trainable_tokens": int(labelled),
        **metrics.means(distributed.all_reduce_sum),
    }
    if trainer.router is not None:  # MoE: the step's expert load over every rank
        record.update(trainer.router.step_metrics(distributed.all_reduce_sum))
    trainer.before_optimizer_step()
    return record


def grad_norm_before_step(trainer: Trainer) -> float | None:
    """DeepSpeed reports no norm for ZeRO-0 in fp32; there the gradients are plain `.grad`s."""
    engine = trainer.engine
    if trainer.zero_stage != 0 or engine.bfloat16_enabled() or engine.fp16_enabled():
        return None
    grads = [p.grad.detach() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads, foreach=True)) if grads else 0.0


def write_metrics(trainer: Trainer, record: dict[str, Any]) -> None:
    """A step's metrics line, completed with its throughput, peak memory and the method's `step_metrics`."""
    from arctic_core.engine.metrics import peak_memory_gb

    seconds = record.pop("seconds")  # re-added after any eval numbers, as the line has always read
    record.update(
        seconds=seconds,
        tokens_per_s=record["tokens"] / max(seconds, 1e-9),
        peak_memory_gb=peak_memory_gb(trainer.device),
        **trainer.step_metrics(),
    )
    trainer.metrics.write(record)
    trainer.log.debug("step %s", record)


# --- the run around the loop ----------------------------------------------------------------------


def start_run(trainer: Trainer) -> None:
    """After setup: the metrics writer, the signal handlers and every subscriber of the loop's events.

    Core subscribes first, in this order: the evaluation (`eval`), the metrics line and then each
    checkpoint's schedule (`step_end`, `epoch_end`, `signal`, `train_end`), the generation eval
    (`train_start`, `train_end`); then the enabled features, then the method (`Trainer.subscribe`).
    """
    from arctic_core.engine.metrics import MetricsWriter
    from arctic_core.engine.signals import StopRequest

    state = trainer.state
    resumed = trainer.resume_point is not None
    state.run_start_step = state.global_step
    trainer.metrics = MetricsWriter(
        trainer.config,
        rank=trainer.rank,
        total_steps=state.total_steps,
        resume_step=state.global_step if resumed else None,
    )
    count_flops(trainer)
    trainer.stop_request = StopRequest(trainer.log)
    trainer.stop_request.install()
    events = trainer.events
    events.subscribe("eval", lambda record: record.update(trainer.evaluate()))
    events.subscribe("step_end", lambda record: write_metrics(trainer, record))
    for checkpoint in trainer.checkpoints:
        events.subscribe("step_end", lambda record, c=checkpoint: c.after_step(record["step"]))
        events.subscribe("epoch_end", checkpoint.after_epoch)
        events.subscribe("signal", lambda signum, c=checkpoint: c.on_stop(state.global_step))
        events.subscribe("train_end", checkpoint.end_of_training)
    settings = trainer.config.generation_eval
    if settings.before_training and not resumed:
        events.subscribe("train_start", lambda: trainer.generation_eval("before training"))
    if settings.after_training:
        events.subscribe("train_end", lambda: trainer.generation_eval("after training"))
    trainer.features.subscribe(trainer, events)
    trainer.subscribe(events)


def count_flops(trainer: Trainer) -> None:
    """Give rank 0's metrics writer the method's FLOPs count (`Trainer.step_flops`) and the device's peak."""
    from arctic_core.engine.flops import peak_tflops

    if trainer.rank != 0:
        return
    trainer.metrics.count_flops_with(
        trainer.step_flops, peak_tflops(trainer.device, trainer.config.model.dtype)
    )


def end_run(trainer: Trainer) -> None:
    """Whatever way the loop ended: loader workers, signal handlers and trackers released."""
    trainer.state.loader.close()
    trainer.stop_request.uninstall()
    trainer.metrics.close()
