"""One run per run folder: a lock file that rank 0 holds while a run uses the folder.

Two runs writing into one folder would overwrite each other's checkpoints and interleave their
metrics, silently. So a run takes `<run folder>/.arctic.lock` before it touches anything:
created with `O_CREAT | O_EXCL` (atomic, on local and network filesystems alike) and holding
the pid, host, start time and command of its holder. A second run into the folder stops
(exit 2) naming the first. A lock left by a process that is gone (killed with SIGKILL, the
machine rebooted) is taken over with a warning when its host is this host; a lock from
another host is never taken: the message says how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from arctic_core.errors import RecipeError

LOCK_FILE = ".arctic.lock"
log = logging.getLogger("arctic")


def _alive(pid: int, started: float) -> bool:
    """Whether process `pid` of this host runs and is the one that started at `started`."""
    try:
        import psutil

        created = psutil.Process(pid).create_time()
    except Exception:  # no such process (or no psutil: ask the kernel)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return created <= started + 5.0  # a newer process reusing the pid is not the holder


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The holder recorded in `run_dir`'s lock file, or None when there is none (or it is unreadable)."""
    try:
        holder = json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {started} ({holder.get('command', '?')})"


def check_free(run_dir: str | Path) -> None:
    """Refuse (exit 2) when a live run holds `run_dir`; used before launching ranks."""
    holder = read_lock(Path(run_dir))
    if holder is not None and not _stale(holder):
        raise _busy(Path(run_dir), holder)


def is_live(holder: dict[str, Any]) -> bool:
    """Whether a lock's holder may still run: a live process of this host, or any other host's."""
    return not _stale(holder)


def _stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    try:
        return not _alive(int(holder["pid"]), float(holder.get("started", 0)))
    except (KeyError, TypeError, ValueError):
        return True


def _busy(run_dir: Path, holder: dict[str, Any]) -> RecipeError:
    return RecipeError(
        f"the run folder {run_dir} is in use by another run: {describe(holder)}. Wait for it to end, "
        f"set another logger.output_dir, or, if that run is gone, delete {run_dir / LOCK_FILE}",
        path="logger.output_dir",
    )


class RunLock:
    """The lock on a run folder (a context manager; `for_rank` gives a no-op lock on ranks > 0)."""

    def __init__(self, run_dir: str | Path | None):
        self.path = Path(run_dir) / LOCK_FILE if run_dir is not None else None
        self.held = False
        self.created = False

    @classmethod
    def for_rank(cls, run_dir: str | Path, rank: int) -> RunLock:
        return cls(run_dir if rank == 0 else None)

    def acquire(self) -> None:
        """Take the lock, or raise `RecipeError` naming the run that holds it."""
        if self.path is None:
            return
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv[:4]),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path.parent)
                if holder is None and self.path.exists() and time.time() - self.path.stat().st_mtime < 5:
                    time.sleep(0.2)  # being written by a run that just took it
                    continue
                if holder is not None and not _stale(holder):
                    raise _busy(self.path.parent, holder) from None
                log.warning(
                    "taking over the lock of %s: its run is gone (%s)",
                    self.path.parent,
                    describe(holder) if holder else "unreadable lock file",
                )
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise RecipeError(f"could not take the lock {self.path}", path="logger.output_dir")

    def release(self) -> None:
        if self.held and self.path is not None:
            holder = read_lock(self.path.parent)
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
            if self.created:  # a run that stopped before writing anything leaves no empty folder
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
