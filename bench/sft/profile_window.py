"""A torch.profiler window over some steps of a training loop, reported as the top operators per step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class ProfileWindow:
    """Profiles steps `skip` .. `skip + steps - 1` (0-based) of a loop; `report` prints the top 10 ops."""

    def __init__(self, *, skip: int, steps: int) -> None:
        self.skip, self.steps, self.seen = skip, steps, 0
        self.profiler: torch.profiler.profile | None = None
        self.done: torch.profiler.profile | None = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self.seen == self.skip:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        try:
            with torch.profiler.record_function("## step ##") if self.profiler else contextlib.nullcontext():
                yield
        finally:
            self.seen += 1
            if self.profiler is not None and self.seen == self.skip + self.steps:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.profiler.__exit__(None, None, None)
                self.done, self.profiler = self.profiler, None

    def report(self, label: str, rows: int = 10) -> None:
        if self.done is None:
            print(f"PROFILE {label}: the profiled window was not reached")
            return
        events = self.done.key_averages()
        step = next((e for e in events if e.key == "## step ##"), None)
        per_step = (step.cpu_time_total / step.count / 1e3) if step else float("nan")
        top = sorted((e for e in events if e.key != "## step ##"), key=lambda e: -e.self_cpu_time_total)[
            :rows
        ]
        print(
            f"PROFILE {label}: {self.steps} steps, {per_step:.1f} ms wall per step; top {rows} ops by self CPU time"
        )
        print(f"PROFILE {label}: {'op':<48} {'ms/step':>9} {'calls/step':>10} {'share':>6}")
        for e in top:
            ms = e.self_cpu_time_total / self.steps / 1e3
            print(
                f"PROFILE {label}: {e.key[:48]:<48} {ms:>9.1f} {e.count / self.steps:>10.1f} "
                f"{ms / per_step:>6.1%}"
            )
