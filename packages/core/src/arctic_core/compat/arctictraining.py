"""ArcticTraining's recipe keys, read into Arctic's before the recipe is structured.

Arctic keeps ArcticTraining's key names, so most of its recipes need nothing from here. This
module covers the rest, key by key (docs/arctictraining.md lists them all):

- spellings of a key Arctic has under another name or form are rewritten into Arctic's
  (`data.dpo_prompt_truncation_mode`, `scheduler.type = "wds"`, source types such as
  `huggingface_instruct` with `content_key`, `huggingface_causal` with `column`,
  `ProjectGutenbergSFT`), so `arctic config show` prints Arctic's keys and reads back the same;
- keys Arctic keeps but does not act on (logging intervals, cache flags, the kill-switch file)
  are dropped with a warning naming them, unless they hold the value that changes nothing;
- keys of features Arctic does not have (ArcticMoE, the memory profiler, `overfit_first_batch`)
  are problems (exit 2) saying why and what to use instead, unless they hold the neutral value.

`translate` changes the recipe dict in place and returns the problems and warnings; nothing
here reads a file, imports torch or opens a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from arctic_core.config import SCHEDULES, SourceConfig

Problem = tuple[str | None, str]

DOC = "docs/arctictraining.md"

ARCTICTRAINING_DIFFERENCES = (
    "Arctic differs from ArcticTraining by design (see docs/arctictraining.md): a step's loss is the "
    "mean over every trainable token of the global batch; train_iters, schedules and "
    "save_every_n_steps count optimizer steps; the data is reshuffled every epoch; data.max_length "
    "defaults to 8192, not the model's max_position_embeddings; DPO keeps the end of a too-long "
    "prompt and drops pairs that still do not fit."
)
"""Logged once at the start of every run."""

_ANY: Any = object()  # no value is neutral: the key is always warned about


@attrs.frozen
class Kept:
    """A key Arctic accepts for ArcticTraining's recipes but does not act on: a warning names it."""

    why: str
    neutral: Any = _ANY  # the value that changes nothing; dropped without a warning


@attrs.frozen
class Refused:
    """A key of something Arctic does not have: a problem, unless it holds the neutral value."""

    why: str
    neutral: Any = _ANY


_MOE = (
    "Arctic has no expert parallelism or ArcticMoE kernels: every rank holds (a ZeRO shard of) every expert; "
    "train MoE models with transformers' MoE blocks under ZeRO data parallelism (docs/moe.md)"
)
_MOE_AUTO = (
    "Arctic trains MoE models with transformers' MoE blocks (ZeRO-3 leaf modules, router loss; docs/moe.md), "
    "never with ArcticMoE's kernels"
)
_LOG_EVERY_STEP = "Arctic writes every optimizer step's metrics to train_log_metrics_path"

KEYS: dict[str, Kept | Refused] = {
    # [trainer]
    "skip_validation": Kept("Arctic always validates the recipe", False),
    "loss_log_interval": Kept(_LOG_EVERY_STEP, 1),
    "train_log_iter_interval": Kept(_LOG_EVERY_STEP, 1),
    "eval_log_iter_interval": Kept("Arctic logs every evaluation", 1),
    "kill_switch_path": Kept(
        "Arctic has no kill-switch file; send SIGTERM or SIGINT to stop after the current step "
        "(a deepspeed checkpoint, if configured, saves the state)"
    ),
    "mem_profiler_dir": Kept("Arctic has no memory profiler (see mem_profiler)"),
    "mem_profiler_max_entries": Kept("Arctic has no memory profiler (see mem_profiler)", 100_000),
    "mem_profiler": Refused(
        "Arctic has no built-in memory profiler; record one with "
        "torch.cuda.memory._record_memory_history() around a run",
        None,
    ),
    "overfit_first_batch": Refused(
        "Arctic has no overfit mode; train on one batch with data.sources[].sample_count = "
        "micro_batch_size * gradient_accumulation_steps and train_iters",
        False,
    ),
    "expert_parallel_size": Refused(f"{_MOE}; set expert_parallel_size = 1", 1),
    "arctic_moe": Refused(f"{_MOE}; arctic_moe = 'auto' or false trains with them", False),
    "enable_arctic_moe_custom_optimization": Refused(f"{_MOE}; these are ArcticMoE's kernels", False),
    "enable_routing_replay": Refused(
        "Arctic does not replay recorded expert choices (routing replay); the router routes every forward",
        False,
    ),
    # [model]
    "model.save_name": Kept("Arctic names exports by checkpoint[].output_dir", None),
    "ref_model.save_name": Kept("the reference model is never saved", None),
    # [tokenizer]
    "tokenizer.type": Refused(
        "Arctic loads every tokenizer with transformers' AutoTokenizer (type 'huggingface')", "huggingface"
    ),
    # [data]
    "data.use_data_cache": Kept("Arctic always caches tokenized data (ArcticTraining deprecates this key)"),
    "data.cache_processed_data": Kept(
        "Arctic always caches tokenized data (ArcticTraining deprecates this key)"
    ),
    "data.cache_fs_type": Kept(
        "Arctic prepares data once and writes the cache atomically, on local and shared file systems alike",
        "auto",
    ),
    "data.fail_on_missing_cache": Refused(
        "Arctic prepares missing data itself; run `arctic data prepare RECIPE` first to fill the cache",
        False,
    ),
    "data.drop_last": Kept("Arctic trains the last packed row too, however short", False),
    "data.fuse_positions_prob": Kept(
        "Arctic restarts position ids at every packed sample and never fuses them", 0.0
    ),
    "data.repeat_to_pack_max_length": Kept(
        "Arctic packs each sample once; repeat data with min_iterations or epochs", False
    ),
    # [scheduler]
    "scheduler.learning_rate": Refused("set optimizer.lr (ArcticTraining refuses this key too)", None),
    "scheduler.lr": Refused("set optimizer.lr (ArcticTraining refuses this key too)", None),
    # [logger]
    "logger.file_output_ranks": Kept("Arctic writes a log file for every rank (<run folder>/logs)", "*"),
    # dpo
    "ignore_label_index": Refused(
        "Arctic marks untrained tokens with -100 itself and reads no labels from the data", -100
    ),
    "reference_model_deepspeed": Refused(
        "the reference model's DeepSpeed config is derived from [deepspeed] (ArcticTraining refuses it too)",
        {},
    ),
}
"""ArcticTraining keys by dotted path (top level: no table), with what Arctic does with them."""


def _is_neutral(value: Any, neutral: Any) -> bool:
    if neutral is _ANY:
        return False
    if neutral is None:
        return value is None
    if isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    return bool(value == neutral)


@attrs.define
class _Result:
    problems: list[Problem] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    def kept(self, path: str, why: str) -> None:
        self.notes.append(f"{path}: kept for ArcticTraining recipes but not acted on: {why}")

    def refused(self, path: str, why: str) -> None:
        self.problems.append((path, f"Arctic does not have this ArcticTraining key: {why} (see {DOC})"))


def _fields(cls: type | None) -> dict[str, Any]:
    return attrs.fields_dict(cls) if cls is not None and attrs.has(cls) else {}


def _table_class(config_class: type, name: str) -> type | None:
    import typing

    field = _fields(config_class).get(name)
    if field is None:
        return None
    hint = typing.get_type_hints(config_class)[name]
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and attrs.has(candidate):
            return candidate
    return None


def translate(raw: dict[str, Any], config_class: type) -> tuple[list[Problem], list[str]]:
    """Rewrite ArcticTraining's spellings in `raw` into Arctic's; return (problems, warnings).

    A key the recipe's own config class has (a method or feature that defines it) is left alone.
    """
    result = _Result()
    tables: dict[str, dict[str, Any]] = {"": raw}
    for name in ("model", "ref_model", "tokenizer", "data", "scheduler", "optimizer", "logger", "wandb"):
        if isinstance(raw.get(name), dict):
            tables[name] = raw[name]
    if raw.get("arctic_moe") == "auto" and "arctic_moe" not in _fields(config_class):
        del raw["arctic_moe"]  # ArcticTraining's "ArcticMoE where it applies": here it never does
        result.notes.append(f"arctic_moe = 'auto': {_MOE_AUTO}")
    for path, rule in KEYS.items():
        table_name, _, key = path.rpartition(".")
        table = tables.get(table_name)
        own = config_class if not table_name else _table_class(config_class, table_name)
        if table is None or key not in table or (own is not None and key in _fields(own)):
            continue
        value = table.pop(key)
        if _is_neutral(value, rule.neutral) or (key == "type" and value == ""):  # "": the default
            continue
        if isinstance(rule, Kept):
            result.kept(path, rule.why)
        else:
            result.refused(path, rule.why)
    for name, rewrite in _TABLE_REWRITES.items():
        if name in tables:
            rewrite(tables[name], config_class, name, result)
    data = tables.get("data")
    if data is not None:
        for key in ("sources", "eval_sources"):
            if isinstance(data.get(key), list):
                for i, source in enumerate(data[key]):
                    if isinstance(source, dict):
                        _source(source, f"data.{key}[{i}]", result)
    return result.problems, result.notes


# --- tables ---------------------------------------------------------------------------------------


def _model(table: dict[str, Any], config_class: type, name: str, result: _Result) -> None:
    if table.get("type") == "":  # ArcticTraining's "the trainer's default factory"
        del table["type"]
    if table.get("type") == "liger":
        from arctic_core.compat import liger

        if not liger.installed():
            result.notes.append(
                f"{name}.type = 'liger': the liger-kernel package is not installed ({liger.EXTRA}); "
                "a run on GPUs stops, a run on CPUs goes without Liger kernels"
            )


def _tokenizer(table: dict[str, Any], config_class: type, name: str, result: _Result) -> None:
    if table.get("name_or_path") == "":  # ArcticTraining's "the model's"
        del table["name_or_path"]


def _optimizer(table: dict[str, Any], config_class: type, name: str, result: _Result) -> None:
    kind = table.get("type")
    if kind == "":
        del table["type"]
    elif isinstance(kind, str) and kind.endswith("_moe"):  # expert parameters in their own group, for EP
        table["type"] = kind.removesuffix("_moe")
        result.notes.append(
            f"{name}.type = {kind!r} read as {table['type']!r}: without expert parallelism the experts' "
            "parameters need no group of their own (docs/moe.md)"
        )


# transformers' schedule names that Arctic reads as one of its own (with scheduler_specific_kwargs).
_HF_SCHEDULES = {"cosine_with_min_lr": "cosine", "warmup_stable_decay": "wsd"}
_SPECIFIC_KWARGS = {
    "min_lr_rate": "min_lr_ratio",
    "min_lr_ratio": "min_lr_ratio",
    "num_decay_steps": "num_decay_steps",
}


def _scheduler(table: dict[str, Any], config_class: type, name: str, result: _Result) -> None:
    own = _fields(_table_class(config_class, name))
    kind = table.pop("type", None) if "type" not in own else None
    if kind == "wds":  # ArcticTraining's registered name of its WSD scheduler
        table.setdefault("name", "wsd")
    elif kind not in (None, "", "huggingface"):
        result.refused(f"{name}.type", f"schedulers are chosen by {name}.name ({', '.join(SCHEDULES)})")
    schedule = table.get("name")
    if isinstance(schedule, str) and schedule in _HF_SCHEDULES:
        table["name"] = _HF_SCHEDULES[schedule]
    elif isinstance(schedule, str) and schedule not in SCHEDULES:
        table.pop("name")
        result.refused(
            f"{name}.name",
            f"Arctic's schedules are {', '.join(SCHEDULES)}; transformers' {schedule!r} is not one of them",
        )
    kwargs = table.pop("scheduler_specific_kwargs", None) if "scheduler_specific_kwargs" not in own else None
    for key, value in (kwargs or {}).items():
        if key in _SPECIFIC_KWARGS and _SPECIFIC_KWARGS[key] not in table:
            table[_SPECIFIC_KWARGS[key]] = value
        else:
            result.refused(
                f"{name}.scheduler_specific_kwargs.{key}",
                f"Arctic's schedules take {', '.join(sorted(set(_SPECIFIC_KWARGS.values())))} as keys "
                f"of [{name}]",
            )


def _data(table: dict[str, Any], config_class: type, name: str, result: _Result) -> None:
    own = _fields(_table_class(config_class, name))
    if "dpo_prompt_truncation_mode" in table and "prompt_truncation" in own:
        if "prompt_truncation" in table:
            result.problems.append(
                (
                    f"{name}.dpo_prompt_truncation_mode",
                    "is ArcticTraining's name of prompt_truncation; set one",
                )
            )
        else:
            table["prompt_truncation"] = table.pop("dpo_prompt_truncation_mode")
    if table.get("type") == "":
        del table["type"]
    if "always_max_length" not in own and table.pop("always_max_length", False) is True:
        table.setdefault("pack_samples", True)
        result.notes.append(
            f"{name}.always_max_length: read as {name}.pack_samples = true: Arctic fills rows with "
            "whole samples and never cuts one to reach max_length"
        )


_TABLE_REWRITES: dict[str, Callable[[dict[str, Any], type, str, _Result], None]] = {
    "model": _model,
    "ref_model": _model,
    "tokenizer": _tokenizer,
    "optimizer": _optimizer,
    "scheduler": _scheduler,
    "data": _data,
}


# --- sources --------------------------------------------------------------------------------------

_SNOWFLAKE = (
    "Arctic has no Snowflake source; export the table to Parquet or JSON lines and list the files as a source"
)


def _source(source: dict[str, Any], path: str, result: _Result) -> None:
    """One source table: ArcticTraining's source types and keys into Arctic's."""
    mapping = source.get("role_mapping")
    mapping = dict(mapping) if isinstance(mapping, dict) else {}
    if source.get("split") == "":
        del source["split"]
    name = source.get("name_or_path")
    if isinstance(name, str) and ":" in name and "split" not in source and "://" not in name:
        parsed = SourceConfig.from_string(name)  # ArcticTraining splits "name:split" in tables too
        if parsed.split is not None:
            source["name_or_path"], source["split"] = parsed.name_or_path, parsed.split
    kind = source.get("type")
    if kind == "snowflake":  # its own keys (sql, table_name, ...) are part of the one problem
        for key in [k for k in source if k not in attrs.fields_dict(SourceConfig)]:
            del source[key]
        del source["type"]
        source.setdefault("name_or_path", "snowflake")
        result.refused(f"{path}.type", _SNOWFLAKE)
        return
    if kind == "huggingface_instruct":
        del source["type"]  # role mappings and format detection do what its config did
    elif kind == "huggingface_causal":
        del source["type"]
        source.setdefault("format", "text")
    elif kind == "ProjectGutenbergSFT":
        del source["type"]
        source.setdefault("format", "text")  # distilled on every token of the text
        result.notes.append(
            f"{path}.type: ProjectGutenbergSFT is read as plain text (format 'text'), every token "
            "trained, without a chat template around it"
        )
    if "content_key" in source:
        content = source.pop("content_key")
        if content is not None:
            mapping.setdefault("content", content)
    if "column" in source:
        column = source.pop("column")
        if column != "text":
            mapping.setdefault("text", column)
    if mapping:
        source["role_mapping"] = mapping
