"""One line for every way a command stops: what stopped it, and in which phase of the run.

The phase is read from the stack, not tracked by hand: the innermost frame of a known step
(a setup step of `arctic_core.engine.setup`, `setup_data`, `save_to`, `train_step`, ...) names it. So the trainer needs no bookkeeping,
and a method's own setup steps are found too (any `setup_*` method).

Before training starts (and after it ends), `signals_raise()` turns SIGTERM and SIGINT into
`Stopped`, an exception that unwinds the setup (temporary folders are cleaned by their
`finally` blocks) and that the `arctic` command reports as `arctic: stopped by SIGTERM during
data preparation (tokenizing)`, exit 128 + the signal number. While training, the trainer's
own handler (`arctic_core.engine.signals`) takes over: it finishes the step and checkpoints.
A second signal kills at once, as the signal's default action would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

PHASES = {
    "read_recipe": "reading the recipe",
    "load_recipe": "reading the recipe",
    "preflight": "checking the recipe",
    "setup_tokenizer": "loading the tokenizer",
    "setup_data": "data preparation",
    "prepare": "data preparation",
    "process_source": "data preparation (tokenizing)",
    "train": "training",
    "train_loop": "training",
    "train_step": "training",
    "generation_eval": "generation eval",
    "evaluate": "evaluation",
    "save_to": "checkpointing",
    "on_stop": "checkpointing on stop",
}
"""Function names that mark a phase, and how the stop line calls it."""

SETUP_FILE = os.path.join("arctic_core", "engine", "setup.py")
SETUP_STEPS = {
    "distributed": "starting distributed",
    "resume_point": "finding the checkpoint to resume",
    "recipe": "resolving the recipe",
    "run_folder": "preparing the run folder",
    "tokenizer": "loading the tokenizer",
    "data": "data preparation",
    "loaders": "building the data loaders",
    "model": "loading the model",
    "optimizer": "building the optimizer",
    "scheduler": "building the scheduler",
    "engine": "building the DeepSpeed engine",
    "checkpoints": "setting up checkpoints",
    "restore": "loading the checkpoint",
}
"""The setup steps (`arctic_core.engine.setup.STEPS`, known by their file: their names are plain words)."""


class Stopped(BaseException):
    """A stop signal arrived outside the training loop (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int, phase: str):
        super().__init__(f"{signal.Signals(signum).name} during {phase}")
        self.signum = signum
        self.phase = phase
        self.exit_code = 128 + signum


def _phase(frames: list[tuple[str, str]]) -> str:
    """The innermost known phase among (file, function name) pairs listed outermost first."""
    for filename, name in reversed(frames):
        if filename.endswith(SETUP_FILE) and name in SETUP_STEPS:
            return SETUP_STEPS[name]
        if name in PHASES:
            return PHASES[name]
        if name.startswith("setup_"):
            return name
    return "start-up"


def phase_of_frame(frame: FrameType | None) -> str:
    """The phase of the run a frame (e.g. a signal handler's) is in."""
    frames: list[tuple[str, str]] = []
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_code.co_name))
        frame = frame.f_back
    return _phase(frames[::-1])


def phase_of_traceback(tb: TracebackType | None) -> str:
    """The phase of the run in which an exception with this traceback was raised."""
    return _phase([(frame.filename, frame.name) for frame in traceback.extract_tb(tb)])


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM/SIGINT raise `Stopped` while inside (main thread only); a second one kills at once."""
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second signal: its default action
        raise Stopped(signum, phase_of_frame(frame))

    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handle)
    except ValueError:  # not the main thread: leave the signals alone
        previous.clear()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def stop_line(exc: BaseException) -> tuple[str, int]:
    """The one line (and exit code) for an exception that ends an `arctic` command."""
    if isinstance(exc, Stopped):
        return f"arctic: stopped by {signal.Signals(exc.signum).name} during {exc.phase}", exc.exit_code
    phase = phase_of_traceback(exc.__traceback__)
    if isinstance(exc, KeyboardInterrupt):
        return f"arctic: stopped by SIGINT (Ctrl-C) during {phase}", 128 + signal.SIGINT
    code = getattr(exc, "exit_code", None)
    if code is not None:
        label = getattr(exc, "label", "error")
        during = f" during {phase}" if code == 1 and label == "error" and phase != "start-up" else ""
        return f"arctic: {label}{during}: {exc}", int(code)
    return f"arctic: stopped by an unexpected {type(exc).__name__} during {phase} (traceback above)", 1
