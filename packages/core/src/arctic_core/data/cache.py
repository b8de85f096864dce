"""The tokenized-data cache: keyed by everything that determines it, written atomically, built once.

An entry is a folder `<cache_dir>/<key>` holding `train/` (and `eval/`) written by
`Dataset.save_to_disk`, `summary.json`, and the completion marker `COMPLETE`. It is built in
a temporary folder beside it and renamed into place, so a folder is either complete or
absent; a folder without the marker is never used (and is replaced by the next build).

With torch.distributed initialised, local rank 0 of each node builds the entry while the
other ranks wait on a barrier, then every rank loads it (memory-mapped). Two nodes sharing a
file system may both build; the first rename wins and the other copy is discarded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arctic_core.data.errors import DataError

PIPELINE_VERSION = "1"
"""Bumped whenever a change to the pipeline changes what it produces, to invalidate old entries."""

MARKER = "COMPLETE"


def default_cache_dir() -> Path:
    """`$ARCTIC_CACHE_DIR/data`, else `$XDG_CACHE_HOME/arctic/data`, else `~/.cache/arctic/data`."""
    root = (
        os.environ.get("ARCTIC_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "arctic"
    )
    return Path(root).expanduser() / "data"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, merges, normalisation and special tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = {
        "map": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "ids": sorted(tokenizer.all_special_ids),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }
    digest.update(json.dumps(special, sort_keys=True).encode())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of `parts` (JSON-able, with PIPELINE_VERSION added)."""
    text = json.dumps({"pipeline_version": PIPELINE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _local_rank() -> int:
    import torch.distributed as dist

    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return dist.get_rank()


def prepare_once(folder: Path, build: Callable[[Path], None]) -> bool:
    """Make sure `folder` holds a complete entry, building it with `build(tmp)` where needed.

    Returns whether this process built it. Every rank must call this (it holds a barrier).
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    builds = not distributed or _local_rank() == 0
    built, failure = False, None
    if builds and not is_complete(folder):
        try:
            built = build_atomically(folder, build)
        except BaseException as exc:  # the other ranks must leave the barrier either way
            failure = exc
    if distributed:
        dist.barrier()
    if failure is not None:
        raise failure
    if not is_complete(folder):
        raise DataError(
            f"the data cache {folder} was not prepared: local rank 0 failed to build it (see its log)"
        )
    return built


def build_atomically(folder: Path, build: Callable[[Path], None]) -> bool:
    """Build into a temporary folder, mark it complete, rename it to `folder`; False if beaten to it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps({"pid": os.getpid()}) + "\n", encoding="utf-8")
        if folder.exists() and not is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if is_complete(folder):
                return False
            raise
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
