"""Checkpoints that can be trusted: a manifest, verification with fallback, safe loading, a full disk.

- Manifest: before the completion marker (`arctic_state.json`), rank 0 writes `manifest.json`:
  every file of the checkpoint with its size and SHA-256 (hashed in 1 MiB blocks).
- Verification: resuming takes the newest checkpoint whose marker reads and whose files match
  its manifest. A damaged one (a file truncated, deleted or changed; an unreadable marker) is
  passed over with a warning naming the folder and the reason, and the next newest is tried;
  when none is good the run stops (exit 2) listing them. Checkpoints written before manifests
  existed are taken on their marker alone (with a note).
- Safe loading: DeepSpeed's own checkpoint engine unpickles with `weights_only=False`, so a
  pickle planted in the run folder would run code on resume. `use_safe_loading(engine)` gives
  the engine a checkpoint engine that loads with `weights_only=True` and allows, besides
  tensors and plain containers, only the few types DeepSpeed writes (`SAFE_GLOBALS`).
- A full disk: `disk_full_reported` turns ENOSPC (or torch's writer failing while the disk is
  full) into one message with the folder, the bytes needed and free; the caller's temporary
  folder is removed so the disk is not left full; the previous checkpoint is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from arctic_core.errors import ArcticError, RecipeError

MANIFEST_FILE = "manifest.json"
log = logging.getLogger("arctic")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(folder: Path, skip: tuple[str, ...]) -> list[Path]:
    """The files of a checkpoint folder, sorted, without `skip` (the manifest and the marker)."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in skip
    )


def write_manifest(folder: Path, marker: str) -> None:
    """Write `manifest.json` (name -> size, sha256) for every file in `folder` but the marker."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in checkpoint_files(folder, (MANIFEST_FILE, marker))
    }
    (folder / MANIFEST_FILE).write_text(json.dumps({"version": 1, "files": files}, indent=1) + "\n")


def damage(folder: Path, marker: str) -> str | None:
    """Why `folder` is not a good checkpoint (None when its files match its manifest)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except FileNotFoundError:
        return None  # written before manifests: the marker is all there is to check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its {MANIFEST_FILE} is unreadable ({type(exc).__name__})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size:,} bytes, the manifest says {expected['size']:,} (truncated?)"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (changed or corrupted)"
    extra = {p.relative_to(folder).as_posix() for p in checkpoint_files(folder, (MANIFEST_FILE, marker))}
    unknown = sorted(extra - set(files))
    if unknown:
        return f"{unknown[0]} is not in the manifest (added after the checkpoint was written)"
    return None


def newest_good(candidates: list[Path], read: Callable[[Path], Any], marker: str, where: str) -> Any:
    """The newest candidate that `read` accepts and that is undamaged; warns for each one passed over.

    `candidates` are sorted newest first. Raises `RecipeError` (exit 2) when there are
    candidates but none is good.
    """
    passed: list[str] = []
    for folder in candidates:
        point = read(folder)
        why = f"its {marker} is missing or unreadable" if point is None else damage(folder, marker)
        if why is None:
            if passed:
                log.warning("resuming from %s, an older checkpoint: the steps after it are redone", folder)
            return point
        log.warning("checkpoint %s is damaged and is not used: %s", folder, why)
        passed.append(f"{folder}: {why}")
    if passed:
        listed = "\n  ".join(passed)
        raise RecipeError(
            f"no good checkpoint to resume from:\n  {listed}\nMove or delete the damaged folders to start "
            "over, or point the run at another output_dir",
            path=where,
        )
    return None


# --- safe loading ---------------------------------------------------------------------------


def safe_globals() -> list[Any]:
    """The non-tensor types DeepSpeed puts in its checkpoint files (found by loading real ones)."""
    import torch  # noqa: F401

    found: list[Any] = []
    for module, name in SAFE_GLOBALS:
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(__import__(module, fromlist=[name]), name))
    return found


SAFE_GLOBALS: tuple[tuple[str, str], ...] = (
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
)
"""(module, name) pairs allowed when loading a checkpoint with `weights_only=True`."""


def use_safe_loading(engine: Any) -> None:
    """Give `engine` (a DeepSpeed engine) a checkpoint engine that loads without arbitrary unpickling.

    DeepSpeed's supported way to change how checkpoints are read is its checkpoint engine;
    other engines than its default (Nebula, "fast") keep their own rules.
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if type(getattr(engine, "checkpoint_engine", None)) is TorchCheckpointEngine:
        engine.checkpoint_engine = _safe_engine_class()(engine._config)


def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):  # type: ignore[misc]
        """DeepSpeed's torch checkpoint engine, loading with `weights_only=True` and `SAFE_GLOBALS`."""

        def load(self, path: str, map_location: Any = None) -> Any:
            return safe_load(path, map_location)

    return SafeTorchCheckpointEngine


def safe_load(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load` of a checkpoint file that refuses (`ArcticError`) anything but data."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines()
        raise ArcticError(
            f"refusing to load {path}: it holds objects other than tensors and the plain data DeepSpeed "
            f"writes, and loading it could run code ({lines[0][:200] if lines else 'UnpicklingError'}). "
            "If you did not put it there, the run folder was tampered with"
        ) from None


# --- a full disk ----------------------------------------------------------------------------


def _is_disk_full(exc: BaseException, folder: Path, needed: int) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)
    if "No space left" in text:
        return True
    writer_failed = isinstance(exc, RuntimeError) and (
        "file write failed" in text or "iostream error" in text or "inline_container" in text
    )
    return writer_failed and _free(folder) < max(needed, 1 << 20)


def _free(folder: Path) -> int:
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return 0


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under `folder` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _needed(target: Path, temp: Path) -> int:
    """An estimate of a checkpoint's size: the largest complete one beside it, else what was written."""
    siblings = [p for p in target.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return max([folder_bytes(p) for p in siblings] + [folder_bytes(temp)])


@contextlib.contextmanager
def disk_full_reported(target: Path) -> Iterator[None]:
    """Turn a full disk while writing the checkpoint `target` into `ArcticError` (exit 1).

    Its temporary folder (`.<name>.incomplete`, see `atomic_folder`) is removed first, so the
    disk is not left full; the checkpoints already there are not touched.
    """
    try:
        yield
    except (OSError, RuntimeError) as exc:
        temp = target.parent / f".{target.name}.incomplete"
        needed = _needed(target, temp) if target.parent.is_dir() else 0
        if not _is_disk_full(exc, target.parent, needed):
            raise
        shutil.rmtree(temp, ignore_errors=True)
        raise ArcticError(
            f"no space left on the device while writing the checkpoint {target}: it needs about "
            f"{needed:,} bytes and {_free(target.parent):,} are free (in {target.parent}). The unfinished "
            "folder was removed and the previous checkpoint is intact: free space (or set keep_last_n), "
            "then rerun to resume"
        ) from None
