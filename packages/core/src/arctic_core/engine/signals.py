"""Stopping a run on SIGTERM or SIGINT: finish the current optimizer step, checkpoint, exit.

The first signal only sets a flag. After every optimizer step the ranks all-reduce the flag
(one tiny collective), so every rank stops after the same step even when only one of them
was signalled. The trainer then writes its `deepspeed` checkpoint (if one is configured) and
raises `TrainingStopped`, which the `arctic` command turns into exit code 128 + the signal
number (143 for SIGTERM, 130 for SIGINT): the run stopped cleanly and can be resumed, but it
did not finish, so `arctic train r.toml && export` does not go on to export a half-trained
model.

A second signal exits at once (the default action of that signal). A second signal that
arrives within `GRACE_S` seconds of the first counts as the same request: Ctrl-C reaches
every process of the terminal's group and DeepSpeed's launcher then forwards SIGTERM too.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType
from typing import Any

from arctic_core.errors import ArcticError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 2.0


class TrainingStopped(ArcticError):
    """The run stopped on a signal after a complete step (exit code 128 + signal number)."""

    label = "stopped"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Catches SIGTERM/SIGINT while installed; `agreed()` says whether any rank was signalled."""

    def __init__(self, log: Any = None):
        self.signum = 0
        self.received_at = 0.0
        self.log = log
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere signals keep their default action)."""
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum and now - self.received_at > GRACE_S:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self.signum:
            self.signum, self.received_at = signum, now
            if self.log is not None:
                self.log.warning(
                    "%s received: stopping after this optimizer step (again to exit at once)",
                    signal.Signals(signum).name,
                )

    def agreed(self) -> int:
        """The signal number if any rank was signalled (0 if none); every rank must call this each step."""
        from arctic_core.gather import agree_max

        return agree_max(self.signum)
