"""Loading sources: hub ids, local files and folders, `save_to_disk` folders; sampling; fingerprints.

A source's loader is its `type` when set, else inferred: a `.jsonl`/`.json`/`.parquet`/`.csv`
file by its suffix, a folder written by `Dataset.save_to_disk` (`disk`), any other local
folder or hub id through `datasets.load_dataset` (`huggingface`: a folder laid out like a
hub repository, or of data files, loads the same way). `type` may also name a known hub
dataset (`KNOWN_DATASETS`, full id or short name) to give a local copy that dataset's
layout. Known datasets map the generic split names: `train` -> `train_sft` for
ultrachat_200k, and so on; slices (`train[:1000]`, `train[10%:]`) are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import attrs

from arctic_core.config import SourceConfig
from arctic_core.data.errors import DataError
from arctic_core.data.screen import screen_file
from arctic_core.errors import RecipeError

LOADERS = ("huggingface", "jsonl", "json", "parquet", "csv", "disk")
SUFFIX_LOADERS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
BUILDERS = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}
_SPLIT = re.compile(r"^(?P<name>[\w.\-]+)(?P<slice>\[[^\]]*\])?$")


@attrs.frozen
class KnownDataset:
    """The layout of a hub dataset Arctic knows: split names, format, column mapping."""

    splits: dict[str, str]
    format: str | None = None
    role_mapping: dict[str, str] = attrs.field(factory=dict)


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "HuggingFaceH4/ultrachat_200k": KnownDataset(
        {"train": "train_sft", "test": "test_sft", "eval": "test_sft", "validation": "test_sft"}, "chat"
    ),
    "HuggingFaceH4/ultrafeedback_binarized": KnownDataset(
        {"train": "train_prefs", "test": "test_prefs", "eval": "test_prefs", "validation": "test_prefs"},
        "preference",
    ),
    "Open-Orca/SlimOrca": KnownDataset({}, "sharegpt"),
    "teknium/OpenHermes-2.5": KnownDataset({}, "sharegpt"),
    "tatsu-lab/alpaca": KnownDataset({}, "alpaca"),
    "yahma/alpaca-cleaned": KnownDataset({}, "alpaca"),
    "meta-math/MetaMathQA": KnownDataset({}, "chat", {"user": "query", "assistant": "response"}),
    "ise-uiuc/Magicoder-OSS-Instruct-75K": KnownDataset(
        {}, "chat", {"user": "problem", "assistant": "solution"}
    ),
}


def known_dataset(source: SourceConfig) -> KnownDataset | None:
    """The known layout for a source: by `type`, by hub id, or by a local folder ending in that id."""
    by_short = {name.split("/")[-1]: name for name in KNOWN_DATASETS}
    for key in (source.type, source.name_or_path):
        if key in KNOWN_DATASETS:
            return KNOWN_DATASETS[key]
        if key in by_short:
            return KNOWN_DATASETS[by_short[key]]
    tail = "/".join(Path(source.name_or_path).parts[-2:])
    return KNOWN_DATASETS.get(tail)


def loader_of(source: SourceConfig) -> str:
    """Which loader reads `source` (see the module docstring)."""
    path = Path(source.name_or_path).expanduser()
    saved = path.is_dir() and any((path / marker).exists() for marker in ("state.json", "dataset_dict.json"))
    if source.type == "huggingface" and saved:  # as ArcticTraining's: load_from_disk for such a folder
        return "disk"
    if source.type in LOADERS:
        return source.type  # type: ignore[return-value]
    if path.is_file():
        loader = SUFFIX_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise RecipeError(
                f"cannot tell how to read {path}: use a .jsonl, .json, .parquet or .csv file, or set `type`"
            )
        return loader
    if saved:
        return "disk"
    if source.type is not None and known_dataset(source) is None:
        raise RecipeError(
            f"unknown source type {source.type!r}; expected one of {', '.join(LOADERS)} or a known dataset"
        )
    return "huggingface"


def split_of(source: SourceConfig, role: str) -> str:
    """The split to read, with the source's `split_mapping` or a known dataset's names applied.

    `role` is "train" or "eval". A name that already is a mapped-to name is kept.
    """
    known = known_dataset(source)
    mapping = source.split_mapping or (known.splits if known else {})
    default = "train" if role == "train" or not mapping else ("eval" if "eval" in mapping else "test")
    match = _SPLIT.match(source.split or default)
    if match is None:
        raise RecipeError(
            f"bad split {source.split!r}; expected a name with an optional [slice]", path="split"
        )
    name = match["name"]
    if name not in mapping.values():
        name = mapping.get(name, name)
    return name + (match["slice"] or "")


def is_local(source: SourceConfig) -> bool:
    return Path(source.name_or_path).expanduser().exists()


def load_source(
    source: SourceConfig, role: str, scratch: Path, *, max_row_bytes: int | None = None, strict: bool = False
) -> Any:
    """The rows of `source` as a `datasets.Dataset`; `scratch` holds datasets' own cache for local files.

    A local text file is screened first (`arctic_core.data.screen`): not UTF-8 is an error naming
    file and line; with `max_row_bytes`, longer JSON lines are dropped (an error when `strict`).
    """
    import datasets

    loader, split = loader_of(source), split_of(source, role)
    path = str(Path(source.name_or_path).expanduser())
    if loader == "disk":
        return _from_disk(path, split)
    kwargs: dict[str, Any] = dict(source.kwargs)
    if loader in BUILDERS:
        args: tuple[Any, ...] = (BUILDERS[loader],)
        kwargs["data_files"] = path
        if Path(path).is_file() and max_row_bytes is not None:
            kwargs["data_files"] = str(
                screen_file(
                    Path(path),
                    bound=max_row_bytes,
                    scratch=scratch / "screened",
                    strict=strict,
                    plain_text=source.format == "text",
                )
            )
        if loader == "csv":
            kwargs.setdefault("keep_default_na", False)
        split = _file_split(split)
    else:
        args = (path,)
    if is_local(source):
        kwargs.setdefault("cache_dir", str(scratch))
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise DataError(f"{path} is empty: no rows")
    try:
        return datasets.load_dataset(*args, split=split, **kwargs)
    except StopIteration:  # what datasets raises for a folder of empty files
        raise DataError(f"{path}: no rows") from None
    except datasets.exceptions.DatasetGenerationError as exc:
        raise _generation_error(source, path, exc) from None
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataError(f"source {source.name_or_path!r} (split {split!r}) cannot be loaded: {exc}") from None


def _file_split(split: str) -> str:
    """A single file has only the split `train`; a known dataset's mapped name keeps its slice."""
    match = _SPLIT.match(split)
    return "train" + ((match["slice"] or "") if match else "")


def _from_disk(path: str, split: str) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except (IndexError, ValueError, FileNotFoundError) as exc:  # e.g. a folder saved with no rows
        raise DataError(
            f"{path}: cannot load this save_to_disk folder (empty or damaged?): {exc!r}"
        ) from None
    match = _SPLIT.match(split)
    name, spec = (match["name"], match["slice"]) if match else (split, None)
    if isinstance(loaded, datasets.DatasetDict):
        if name not in loaded:
            raise DataError(f"{path}: no split {name!r}; it has {sorted(loaded)}")
        loaded = loaded[name]
    return loaded.select(_slice_indices(spec, len(loaded), path)) if spec and len(loaded) else loaded


def _slice_indices(spec: str | None, n: int, where: str) -> range:
    if not spec:
        return range(n)
    parts = spec[1:-1].split(":")
    if len(parts) != 2:
        raise DataError(f"{where}: bad slice {spec!r}; expected [start:stop]")

    def bound(text: str, default: int) -> int:
        text = text.strip()
        if not text:
            return default
        value = round(float(text[:-1]) * n / 100) if text.endswith("%") else int(text)
        return max(0, min(n, value if value >= 0 else n + value))

    return range(bound(parts[0], 0), bound(parts[1], n))


def _generation_error(source: SourceConfig, path: str, exc: Exception) -> DataError:
    """datasets' opaque parse error, translated: for JSON lines, the file and line that is bad."""
    files = sorted(Path(path).rglob("*.jsonl")) if Path(path).is_dir() else [Path(path)]
    for file in files:
        if file.suffix != ".jsonl":
            continue
        with file.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError as bad:
                    return DataError(f"{file}:{number}: malformed JSON line ({bad.msg}, column {bad.colno})")
    cause = exc.__cause__ or exc
    return DataError(f"source {source.name_or_path!r} cannot be read: {cause}")


def sample(table: Any, source: SourceConfig) -> Any:
    """Keep `sample_count` rows or a `sample_ratio` of them, chosen with `sample_seed`."""
    n = len(table)
    if source.sample_count is None and source.sample_ratio is None:
        return table
    keep = source.sample_count if source.sample_count is not None else round(n * (source.sample_ratio or 0.0))
    if keep >= n:
        return table
    return table.shuffle(seed=source.sample_seed).select(range(keep)).flatten_indices()


def fingerprint(source: SourceConfig, role: str) -> dict[str, Any]:
    """What identifies a source's rows: its contents for local paths, id/revision/split for the hub."""
    info: dict[str, Any] = {"config": attrs.asdict(source), "role": role, "split": split_of(source, role)}
    path = Path(source.name_or_path).expanduser()
    if path.exists():
        info["contents"] = _hash_path(path)
    return info


def _hash_path(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
