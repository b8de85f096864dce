"""Running `arctic` as a real process and reading what a run wrote: shared by every package's tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def arctic(*args: str, cwd: str | Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run `python -m arctic_core ARGS` in `cwd` with one thread per process (`OMP_NUM_THREADS=1`).

    Returns stdout + stderr; a non-zero exit fails the calling test with the end of that output.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def run_in_triton_interpreter(script: str, *, timeout: int = 300) -> str:
    """Run `python -c SCRIPT` in a fresh interpreter with `TRITON_INTERPRET=1`; returns its stdout.

    Triton reads `TRITON_INTERPRET` when it is first imported, so a kernel test that runs Triton
    kernels on a CPU needs a process of its own. A non-zero exit fails the calling test with the
    end of the script's stderr.
    """
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def start_spawned_rank(rank: int, world_size: int, port: int) -> None:
    """In a rank started by `torch.multiprocessing.spawn`: its environment, one thread, the process group.

    `faulthandler` is on, so a rank killed by a C++ abort still prints where every thread was.
    """
    import faulthandler

    import torch

    from arctic_core.engine import distributed

    faulthandler.enable()
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    distributed.init_distributed()


def finish_spawned_rank() -> None:
    """End a spawned rank once its results are saved: meet the other ranks, then leave at once.

    Tearing gloo and DeepSpeed's communicator down (`destroy_process_group`, then the interpreter's
    finalisation) aborted a rank now and then in CI ("terminate called without an active
    exception"); training runs, which leave without tearing down, never did. `os._exit` skips it.
    """
    import torch

    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a metrics file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
