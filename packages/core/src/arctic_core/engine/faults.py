"""Test-only fault points: make a run die at a chosen moment, the way a crash or `kill -9` would.

Never set these in real runs. They exist so that tests can check crash safety with real
processes, deterministically:

- `ARCTIC_TEST_KILL_AT_STEP=N`: every rank SIGKILLs itself right after optimizer step N
  (its metrics line and periodic checkpoints written).
- `ARCTIC_TEST_FAULT=checkpoint-write` (or `checkpoint-write@N`, only at step N): every rank
  SIGKILLs itself in the middle of writing a `deepspeed` checkpoint, after the engine state
  and before the completion marker, so a half-written folder is left behind.
"""

from __future__ import annotations

import os
import signal

KILL_AT_STEP = "ARCTIC_TEST_KILL_AT_STEP"
FAULT = "ARCTIC_TEST_FAULT"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_step(step: int) -> None:
    """SIGKILL this process if `ARCTIC_TEST_KILL_AT_STEP` names this step (test-only)."""
    wanted = os.environ.get(KILL_AT_STEP)
    if wanted and int(wanted) == step:
        _die()


def fault_point(name: str, step: int) -> None:
    """SIGKILL this process if `ARCTIC_TEST_FAULT` names this point (optionally `@step`) (test-only)."""
    wanted = os.environ.get(FAULT)
    if not wanted:
        return
    point, _, at = wanted.partition("@")
    if point == name and (not at or int(at) == step):
        _die()
