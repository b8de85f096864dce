"""Bench-only user code (the recipe's `code`): SFT that records each step's CPU time, and can profile.

`type = "sft_bench"` is Arctic's SFT trainer unchanged, plus, per optimizer step, the process's CPU
time (`time.process_time`, written as JSON to `$BENCH_CPU_TIMES` at the end: on a shared machine it is
far steadier than wall time) and, with `BENCH_PROFILE_STEPS` > 0, a torch.profiler window of that
many steps after `BENCH_PROFILE_SKIP` steps, printed as the top 10 operators per step.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from profile_window import ProfileWindow

from arctic_sft.trainer import SFTTrainer


class BenchSFTTrainer(SFTTrainer):
    name = "sft_bench"

    def train_step(self, micro_batches: list[dict[str, Any]]) -> None:
        if not hasattr(self, "cpu_times"):
            self.cpu_times: list[float] = []
            steps = int(os.environ.get("BENCH_PROFILE_STEPS", "0"))
            skip = int(os.environ.get("BENCH_PROFILE_SKIP", "0"))
            self.window = ProfileWindow(skip=skip, steps=steps) if steps else None
        start = time.process_time()
        if self.window is None:
            super().train_step(micro_batches)
        else:
            with self.window.step():
                super().train_step(micro_batches)
        self.cpu_times.append(time.process_time() - start)

    def train(self) -> None:
        super().train()
        if os.environ.get("BENCH_CPU_TIMES"):
            Path(os.environ["BENCH_CPU_TIMES"]).write_text(json.dumps(self.cpu_times))
        if self.window is not None:
            self.window.report("arctic")
