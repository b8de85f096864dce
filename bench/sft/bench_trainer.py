"""Bench-only user code (the recipe's `code`): SFT that records each step's CPU time, and can profile.

`type = "sft_bench"` is Arctic's SFT trainer unchanged, plus, per optimizer step, the process's CPU
time (`time.process_time`, written as JSON to `$BENCH_CPU_TIMES` at the end: on a shared machine it is
far steadier than wall time) and, with `BENCH_PROFILE_STEPS` > 0, a torch.profiler window of that
many steps after `BENCH_PROFILE_SKIP` steps, printed as the top 10 operators per step; with
`BENCH_FAULTS` set, each step's system time and minor page faults (`FAULTS ...` lines).

A step is timed from the loop's `train_start` (or the previous `step_end`) to its `step_end` event:
the step itself, its metrics line, and the main process's share of fetching the next micro-batches
(the loader's workers are other processes; their CPU time is not counted, as on the Trainer's side).
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from profile_window import ProfileWindow

from arctic_sft.trainer import SFTTrainer


class BenchSFTTrainer(SFTTrainer):
    name = "sft_bench"

    def subscribe(self, events: Any) -> None:
        super().subscribe(events)
        self.cpu_times: list[float] = []
        steps = int(os.environ.get("BENCH_PROFILE_STEPS", "0"))
        skip = int(os.environ.get("BENCH_PROFILE_SKIP", "0"))
        self.window = ProfileWindow(skip=skip, steps=steps) if steps else None
        self.started: float | None = None
        self.profiled: Any = None
        events.subscribe("train_start", self.tick)
        events.subscribe("step_end", lambda record: self.tick())

    def tick(self) -> None:
        """A step boundary: close the step that ran (its CPU time, its profiler range), open the next."""
        now = time.process_time()
        kernel = (os.times().system, resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        if self.started is not None:
            self.cpu_times.append(now - self.started)
            if os.environ.get("BENCH_FAULTS"):
                print(
                    f"FAULTS system {kernel[0] - self.kernel[0]:.2f} s, {kernel[1] - self.kernel[1]} minor faults",
                    flush=True,
                )
        self.kernel = kernel
        if self.profiled is not None:
            self.profiled.__exit__(None, None, None)
            self.profiled = None
        if self.window is not None and self.state.global_step < self.state.total_steps:
            self.profiled = self.window.step()
            self.profiled.__enter__()
        self.started = time.process_time()

    def train(self) -> None:
        super().train()
        if os.environ.get("BENCH_CPU_TIMES"):
            Path(os.environ["BENCH_CPU_TIMES"]).write_text(json.dumps(self.cpu_times))
        if self.window is not None:
            self.window.report("arctic")
