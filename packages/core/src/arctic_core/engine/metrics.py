"""What a run reports: per-rank log files, a progress bar, one JSON line per optimizer step, trackers.

- Log files: `<run folder>/logs/rank_<N>.log` for every rank; only ranks listed in
  `logger.print_output_ranks` also log to the console.
- Progress bar (rank 0, tqdm, on a terminal): optimizer steps, loss, tokens/s and the time
  left. When the console is not a terminal (a log file, CI), a log line every 5% of the run
  instead, and no progress bars from datasets, transformers or the hub either.
- Metrics: rank 0 appends one JSON object per optimizer step to `config.metrics_path`; a step
  that evaluated also carries `eval_loss` and `eval_perplexity`. With a FLOPs count
  (`count_flops_with`: the method's `Trainer.step_flops`, `arctic_core.engine.flops`) every line also has `tflops` (rank 0's model
  TFLOPS per device: its micro-batches' training FLOPs over the step's seconds) and, on a device
  of known peak, `mfu` (tflops / peak). A resumed run keeps the lines
  up to the checkpoint's step and appends after them. A fresh run into a folder that holds an
  earlier run first moves that run's outputs to `previous/<time>/` (`keep_previous_run`), so
  no run's results are lost.
- Trackers: Weights & Biases (`[wandb] enable = true`) and TensorBoard (`logger.tensorboard`),
  imported only when enabled; a missing package is an `ArcticError` naming it.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from arctic_core.config import TrainerConfig
from arctic_core.errors import ArcticError

LOGGER_NAME = "arctic"
log = logging.getLogger(LOGGER_NAME)


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Console log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def on_terminal() -> bool:
    """Whether the console is a terminal (progress bars redraw one line) rather than a log file."""
    return sys.stderr.isatty()


def quiet_progress_bars() -> None:
    """No progress bars from datasets, transformers and the hub when the console is a log file.

    Their `\r`-redrawn lines and escape codes are noise in a file; Arctic logs the progress itself.
    """
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def setup_logging(config: TrainerConfig, rank: int) -> logging.Logger:
    """Per-rank file logs, and console logs on the ranks that print (no progress bars in log files)."""
    if not on_terminal():
        quiet_progress_bars()
    folder = Path(config.run_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    log.setLevel(config.logger.level)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")
    file_handler = logging.FileHandler(folder / f"rank_{rank}.log")
    file_handler.setFormatter(fmt)
    log.addHandler(file_handler)
    if config.logger.prints(rank):
        console = _ConsoleHandler(sys.stderr)
        console.setFormatter(fmt)
        log.addHandler(console)
    return log


def peak_memory_gb(device: torch.device) -> float:
    """GPU: max allocated on this device; CPU: this process's max resident set size (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _import_tracker(package: str, extra: str) -> Any:
    try:
        return __import__(package)
    except ImportError:
        raise ArcticError(
            f"{package} is enabled in the recipe but not installed; pip install 'arctic-core[{extra}]'"
        ) from None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics lines of steps 1..last_step (a resumed run appends the rest); atomic replace."""
    kept: list[str] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash
                continue
            if step <= last_step:
                kept.append(line + "\n")
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text("".join(kept))
    temp.replace(path)


RUN_OUTPUTS = ("recipe.yaml", "generation_eval.jsonl", "logs", "status.json")
"""What a run writes into its folder besides the metrics file and checkpoints."""


def keep_previous_run(config: TrainerConfig) -> Path | None:
    """Move an earlier run's recipe, metrics, scores and logs to `<run folder>/previous/<time>/`.

    Returns that folder, or None when the run folder holds no earlier run. Checkpoints stay
    where they are (a fresh run replaces an export only when it writes its own).
    """
    import time

    run_dir = Path(config.run_dir)
    found = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    metrics = Path(config.metrics_path)
    if metrics.is_file():
        found.append(metrics)
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in found)))
    target = run_dir / "previous" / stamp
    suffix = 1
    while target.exists():
        suffix += 1
        target = run_dir / "previous" / f"{stamp}-{suffix}"
    target.mkdir(parents=True)
    for path in found:
        path.rename(target / path.name)
    return target


class MetricsWriter:
    """Rank 0's per-step outputs: the JSONL file, the progress bar and optional trackers."""

    def __init__(self, config: TrainerConfig, *, rank: int, total_steps: int, resume_step: int | None = None):
        """A fresh metrics file, or (`resume_step`) the existing one cut after that step, to append to."""
        self.enabled = rank == 0
        self.path = Path(config.metrics_path)
        self.bar: Any = None
        self.wandb: Any = None
        self.tensorboard: Any = None
        self.flops: Any = None
        self.peak_tflops: float | None = None
        self.step_flops = 0
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            truncate_metrics(self.path, resume_step)
        self.total_steps = total_steps
        self.every = max(1, total_steps // 20)  # without a bar: a log line every 5% of the run
        if config.logger.progress_bar and on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=resume_step or 0, desc="train", unit="step", dynamic_ncols=True
            )
        if config.wandb.enable:
            wandb = _import_tracker("wandb", "wandb")
            self.wandb = wandb.init(
                project=config.wandb.project,
                entity=config.wandb.entity,
                name=config.wandb.name or Path(config.run_dir).name,
                dir=config.run_dir,
            )
        if config.logger.tensorboard:
            _import_tracker("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(Path(config.run_dir) / "tensorboard"))

    def count_flops_with(self, step_flops: Any, peak_tflops: float | None) -> None:
        """Report `tflops` (and `mfu` against `peak_tflops`) from `step_flops(micro_batch)`, the training
        FLOPs of one micro-batch or None where it has no count (`Trainer.step_flops`; rank 0 only)."""
        if self.enabled:
            self.flops, self.peak_tflops = step_flops, peak_tflops

    def count_flops(self, micro_batches: list[dict[str, Any]]) -> None:
        """Add a step's CPU micro-batches to its FLOPs (before they move to the device: no sync)."""
        if self.flops is None:
            return
        try:
            counts = [self.flops(batch) for batch in micro_batches]
            if any(count is None for count in counts):  # no count for this model: no TFLOPS
                self.flops, self.step_flops = None, 0
                return
            self.step_flops += sum(counts)
        except Exception as exc:  # a method's own batch layout: no TFLOPS rather than a failed run
            log.warning("no TFLOPS in the metrics: counting this batch's FLOPs failed (%r)", exc)
            self.flops, self.step_flops = None, 0

    def _add_flops(self, record: dict[str, Any]) -> None:
        if self.flops is None or not self.step_flops:
            return
        tflops = self.step_flops / max(float(record.get("seconds", 0.0)), 1e-9) / 1e12
        record["tflops"] = tflops
        if self.peak_tflops:
            record["mfu"] = tflops / self.peak_tflops
        self.step_flops = 0

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._add_flops(record)
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        elif record["step"] % self.every == 0 or record["step"] == self.total_steps:
            log.info(
                "step %d/%d: loss %.4f, %.0f tokens/s",
                record["step"],
                self.total_steps,
                record["loss"],
                record.get("tokens_per_s", 0.0),
            )
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
