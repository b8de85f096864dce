"""`DataFactory`: from a recipe's `[data]` table to training and evaluation datasets and batches.

Preparation, once per cache key: load each source, sample it, detect and normalise its
format, tokenize and mask (checking train/serve parity on its first rows), apply the length rules (counting drops), hold out the eval share
(`train_eval_split`), add `eval_sources`, pack when `pack_samples`, save. Every rank then
loads the cached entry. `collate` turns rows into the batch contract.

Methods extend it by subclassing: set `builder_class` (a `SampleBuilder` subclass with other
length rules), override `check_format` (refuse formats the method cannot train on),
`process_source` (other tokenization), `finish_split` (other packing), `collate` (e.g.
preference pairs) and, for settings of their own, `cache_parts` (so that changing them builds
a new cache entry).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from arctic_core.config import SourceConfig, TrainerConfig
from arctic_core.data import cache, collate, formats, packing, sources, summary
from arctic_core.data.errors import DataError
from arctic_core.data.masking import FIXED_DATE
from arctic_core.data.samples import KEPT, PretokenizedBuilder, SampleBuilder
from arctic_core.data.screen import max_row_bytes
from arctic_core.errors import RecipeError

TOKENIZATION_SETTINGS = (
    "max_length",
    "mask_inputs",
    "train_on_reasoning",
    "ignore_empty_think",
    "pack_samples",
    "filter_samples",
    "strict",
    "train_eval_split",
    "seed",
)
"""The `[data]` keys that change what is cached (div_length, pad_to, num_proc... change only batching)."""


@contextlib.contextmanager
def _datasets_caching_off() -> Iterator[None]:
    """Keep `datasets.map` from writing its own cache files (Arctic's cache holds the result)."""
    import datasets

    was = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        yield
    finally:
        if was:
            datasets.enable_caching()


class DataFactory:
    """Builds (or loads from the cache) the datasets of a recipe and collates their rows."""

    builder_class: type[SampleBuilder] = SampleBuilder
    """The per-source `datasets.map` function for sources that are tokenized here."""

    def __init__(self, config: TrainerConfig, tokenizer: Any, *, run_dir: Path | str | None = None):
        self.config = config
        self.data = config.data
        self.tokenizer = tokenizer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.built_here = False
        self._key: str | None = None
        self._train: Any = None
        self._eval: Any = None
        self._summary: dict[str, Any] | None = None
        self.pad_id = collate.pad_id_of(tokenizer)
        """The id that pads rows (`arctic_core.data.collate.pad_id_of`), for subclasses' collates."""

    # --- public -----------------------------------------------------------------------------

    def train_dataset(self) -> Any:
        self.prepare()
        return self._train

    def eval_dataset(self) -> Any | None:
        self.prepare()
        return self._eval

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Rows to the batch contract (docs/training.md, "The batch contract")."""
        if "input_ids" not in rows[0]:
            raise DataError(
                f"rows with columns {sorted(rows[0])} (preference pairs?) need their method's data factory "
                "to collate them (e.g. dpo's); the default collator takes input_ids/labels rows"
            )
        return collate.collate_rows(
            rows,
            pad_id=self.pad_id,
            div_length=self.data.div_length,
            max_length=self.data.max_length,
            pad_to=self.data.pad_to,
        )

    def summary(self) -> dict[str, Any]:
        self.prepare()
        assert self._summary is not None
        return self._summary

    @property
    def cache_folder(self) -> Path:
        root = Path(self.data.cache_dir).expanduser() if self.data.cache_dir else cache.default_cache_dir()
        return root / self.cache_key()

    def cache_key(self) -> str:
        """Hash of `cache_parts()`: everything that determines the prepared data."""
        if not self.data.sources:
            raise RecipeError("no training data: add at least one source", path="data.sources")
        return cache.cache_key(self.cache_parts())

    def cache_parts(self) -> dict[str, Any]:
        """The sources' contents, tokenizer, template and settings; subclasses add their own settings."""
        return {
            "factory": f"{type(self).__module__}.{type(self).__qualname__}",
            "tokenizer": cache.tokenizer_fingerprint(self.tokenizer),
            "chat_template": self.tokenizer.chat_template,
            "date_string": FIXED_DATE,
            "settings": {key: getattr(self.data, key) for key in TOKENIZATION_SETTINGS},
            "train": [sources.fingerprint(s, "train") for s in self.data.sources],
            "eval": [sources.fingerprint(s, "eval") for s in self.data.eval_sources],
        }

    def prepare(self) -> None:
        """Build the cache entry if needed (local rank 0 only), then load it; idempotent."""
        if self._summary is not None:
            return
        folder = self.cache_folder
        self._key = folder.name
        self.built_here = cache.prepare_once(folder, self.build)
        self._load(folder)
        if _is_main_rank():
            summary.log_summary(self.summary())
            if self.run_dir is not None:
                summary.write_summary(self.summary(), self.run_dir)

    # --- building ---------------------------------------------------------------------------

    def build(self, out: Path) -> None:
        """Process every source and save the splits and summary into `out`."""
        import datasets

        scratch = out.parent / f".scratch-{out.name}"
        try:
            with _datasets_caching_off():
                train, train_stats = self._process_all(self.data.sources, "train", scratch)
                held_out, eval_stats = self._process_all(self.data.eval_sources, "eval", scratch)
                train, split_off = self._split(train)
                evaluation = [t for t in (split_off, held_out) if t is not None]
                result: dict[str, Any] = {"pipeline_version": cache.PIPELINE_VERSION, "cache_key": self._key}
                train, result["train"] = self.finish_split(train, train_stats)
                train.save_to_disk(str(out / "train"))
                if evaluation:
                    joined = datasets.concatenate_datasets(evaluation)
                    joined, result["eval"] = self.finish_split(joined, eval_stats)
                    joined.save_to_disk(str(out / "eval"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    def _process_all(self, configs: list[SourceConfig], role: str, scratch: Path) -> tuple[Any, list[dict]]:
        import datasets

        if not configs:
            return None, []
        tables, stats = [], []
        for index, source in enumerate(configs):
            name = (
                f"{'data.sources' if role == 'train' else 'data.eval_sources'}[{index}] {source.name_or_path}"
            )
            table, info = self.process_source(source, role, name, scratch)
            tables.append(table)
            stats.append(info)
        kinds = {tuple(sorted(t.column_names)) for t in tables}
        if len(kinds) > 1:
            raise DataError(
                f"the {role} sources give different kinds of samples ({sorted(kinds)}); do not mix "
                "preference pairs with other formats"
            )
        return datasets.concatenate_datasets(tables), stats

    def process_source(self, source: SourceConfig, role: str, name: str, scratch: Path) -> tuple[Any, dict]:
        """Load, sample, tokenize and filter one source; returns its samples and its stats."""
        try:
            loaded = sources.load_source(
                source,
                role,
                scratch,
                max_row_bytes=max_row_bytes(self.data.max_length),
                strict=self.data.strict,
            )
            table = sources.sample(loaded, source)
        except DataError as exc:
            raise DataError(f"{name}: {exc}") from None
        if len(table) == 0:
            raise DataError(f"{name}: no rows (check the file, split and slice)")
        fmt, builder = self.source_builder(source, table.column_names, name)
        processed = table.map(
            builder,
            batched=True,
            with_indices=True,
            remove_columns=table.column_names,
            num_proc=self._num_proc(len(table)),
            new_fingerprint=cache.cache_key({"entry": self._key, "source": name}),
            desc=f"tokenizing {name}",
        )
        stats = summary.source_stats(name, fmt, len(table), processed, KEPT)
        kept = processed.filter(lambda s: s in KEPT, input_columns="status")
        if len(kept) == 0:
            raise DataError(
                f"source {name}: yields no samples ({len(table)} rows, dropped: {stats['dropped']})"
            )
        return kept.remove_columns(["status", "row"]), stats

    def source_builder(self, source: SourceConfig, columns: list[str], name: str) -> tuple[str, Any]:
        """The format of a source and the `datasets.map` function that processes it."""
        if not source.process:
            return "tokenized", PretokenizedBuilder(self.data, name)
        known = sources.known_dataset(source)
        key = name.split(" ", 1)[0]
        mapping = formats.RoleMapping.parse(
            {**(known.role_mapping if known else {}), **source.role_mapping}, f"{key}.role_mapping"
        )
        fmt = source.format or (known.format if known and not source.role_mapping else None)
        fmt = fmt or formats.detect_format(columns, mapping, name)
        self.check_format(fmt, name)
        builder = self.builder_class(self.tokenizer, self.data, name, fmt, mapping)
        builder.check_template()
        return fmt, builder

    def check_format(self, fmt: str, name: str) -> None:
        """Refuse a source whose row format this factory's method cannot train on (default: accept all)."""

    def _num_proc(self, rows: int) -> int | None:
        wanted = self.data.num_proc or min(16, os.cpu_count() or 1)
        useful = min(wanted, rows // 2000)
        return useful if useful > 1 else None

    def _split(self, train: Any) -> tuple[Any, Any | None]:
        fraction = self.data.train_eval_split[1]
        if fraction <= 0:
            return train, None
        try:
            parts = train.train_test_split(test_size=fraction, seed=self.data.seed)
        except ValueError as exc:
            raise DataError(f"data.train_eval_split = {list(self.data.train_eval_split)}: {exc}") from None
        return parts["train"], parts["test"]

    def finish_split(self, table: Any, stats: list[dict]) -> tuple[Any, dict[str, Any]]:
        """Pack (when `pack_samples`) a split's samples; returns them with the split's summary."""
        totals = {
            "samples": len(table),
            "tokens": sum(table["length"]),
            "trainable": sum(table["num_trainable"]),
        }
        if self.data.pack_samples and "input_ids" in table.column_names:
            packed, padding = packing.pack_dataset(table, self.data.max_length)
            return packed, summary.split_stats(stats, totals, len(packed), padding)
        table = table.remove_columns(["length", "num_trainable"])
        return table, summary.split_stats(stats, totals, len(table), None)

    def _load(self, folder: Path) -> None:
        import datasets

        self._train = datasets.load_from_disk(str(folder / "train"))
        eval_folder = folder / "eval"
        self._eval = datasets.load_from_disk(str(eval_folder)) if eval_folder.is_dir() else None
        self._summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        self._summary["cache_dir"] = str(folder)


def _is_main_rank() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
