"""What a published model folder declares, and the recipe's unset keys resolved from it.

A sentence-transformers folder (as its versions and its users wrote them) declares how it embeds:

| setting | read from (first found) | recipe key |
| --- | --- | --- |
| pooling | `biencoder_config.json` (ArcticTraining); the Pooling module's `config.json` (`pooling_mode`, or the older `pooling_mode_*_tokens` flags) | `model.pooling` |
| normalisation | a `Normalize` entry in `modules.json` (its folder may be missing) | `model.normalize` |
| prompts | `config_sentence_transformers.json` `prompts.query` / `prompts.document` (else `passage`) | `data.query_prefix`, `data.document_prefix` |
| longest input | `sentence_bert_config.json` `max_seq_length`; else the tokenizer's `model_max_length` capped by `max_position_embeddings` (as sentence-transformers does) | `data.max_seq_length_query/doc`, `retrieval_eval.max_length` |

A key the recipe leaves unset (None) takes the folder's value, else ArcticTraining's default; a
recipe value that contradicts the folder is kept and reported once as a warning naming both.
`resolve` returns the config with every such key set, where each value came from, and the warnings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs

from arctic_core.errors import ArcticError

BIENCODER_CONFIG = "biencoder_config.json"
# sentence-transformers' pooling names (the 6.x `pooling_mode` and the older flags) -> Arctic's
ST_MODES = {"cls": "first_token", "mean": "mean", "lasttoken": "last_token"}
LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
DEFAULTS = {"pooling": "first_token", "normalize": True, "prefix": "", "eval_max_length": 512}
UNLIMITED = 10**9  # transformers' "no limit" model_max_length is about 1e30


@dataclass
class Declared:
    """One value a folder declares and the file it came from."""

    value: Any
    source: str


@dataclass
class FolderSettings:
    """Everything a model folder declares about embedding (None: not declared)."""

    pooling: Declared | None = None
    normalize: Declared | None = None
    query_prompt: Declared | None = None
    document_prompt: Declared | None = None
    max_seq_length: Declared | None = None
    notes: list[str] = field(default_factory=list)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArcticError(f"{path}: not readable JSON ({exc})") from None


def _local(name_or_path: str, relative: str) -> Path | None:
    """The file inside a local folder, else inside the Hugging Face cache (never downloaded here)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / relative
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name_or_path, relative)
    except Exception:  # not a hub id, or no cache
        return None
    return Path(found) if isinstance(found, str) else None


def _modules(name_or_path: str) -> list[dict[str, Any]]:
    path = _local(name_or_path, "modules.json")
    return list(_json(path)) if path else []


def _pooling(name_or_path: str, modules: list[dict[str, Any]], notes: list[str]) -> Declared | None:
    arctic = _local(name_or_path, BIENCODER_CONFIG)
    if arctic:
        return Declared(str(_json(arctic)["pooling"]), BIENCODER_CONFIG)
    entry = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    where = f"{entry.get('path') or '1_Pooling'}/config.json" if entry else "1_Pooling/config.json"
    path = _local(name_or_path, where)
    if path is None:
        return None
    config = _json(path)
    mode = config.get("pooling_mode")
    if mode is None:  # sentence-transformers before 6: one boolean flag per mode; none set means mean
        modes = [name for flag, name in LEGACY_FLAGS.items() if config.get(flag)]
        mode = modes[0] if len(modes) == 1 else (modes or ["mean"])
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if not isinstance(mode, str) or mode not in ST_MODES:
        raise ArcticError(
            f"{path}: pooling {mode!r} has no Arctic equivalent (first_token, mean, last_token); "
            "set model.pooling to train this folder with another pooling"
        )
    if config.get("include_prompt") is False:
        notes.append(
            f"{where}: include_prompt = false (prompt tokens left out of the pooling) is not reproduced: "
            "Arctic pools the prompt's tokens too"
        )
    return Declared(ST_MODES[mode], where)


def _max_seq_length(name_or_path: str) -> Declared | None:
    bert = _local(name_or_path, "sentence_bert_config.json")
    if bert and isinstance(_json(bert).get("max_seq_length"), int):
        return Declared(int(_json(bert)["max_seq_length"]), "sentence_bert_config.json")
    tokenizer = _local(name_or_path, "tokenizer_config.json")
    limit = _json(tokenizer).get("model_max_length") if tokenizer else None
    if not isinstance(limit, (int, float)) or limit >= UNLIMITED:
        return None  # a tokenizer without a (real) model_max_length: no declared length
    config = _local(name_or_path, "config.json")
    positions = _json(config).get("max_position_embeddings") if config else None
    if isinstance(positions, int) and positions > 0 and positions < limit:
        return Declared(positions, "config.json (max_position_embeddings, below the tokenizer's)")
    return Declared(int(limit), "tokenizer_config.json (model_max_length)")


def read_folder(name_or_path: str) -> FolderSettings:
    """What `name_or_path` (a local folder, or a hub id already in the cache) declares."""
    found = FolderSettings()
    modules = _modules(name_or_path)
    found.pooling = _pooling(name_or_path, modules, found.notes)
    if modules:
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        found.normalize = Declared(normalize, "modules.json")
    elif found.pooling is not None and found.pooling.source == BIENCODER_CONFIG:
        found.normalize = Declared(True, BIENCODER_CONFIG)  # ArcticTraining's bi-encoder always normalises
    path = _local(name_or_path, "config_sentence_transformers.json")
    prompts = dict(_json(path).get("prompts") or {}) if path else {}
    where = "config_sentence_transformers.json (prompts.{})"
    if "query" in prompts:
        found.query_prompt = Declared(str(prompts["query"]), where.format("query"))
    for name in ("document", "passage"):
        if name in prompts:
            found.document_prompt = Declared(str(prompts[name]), where.format(name))
            break
    bert = _local(name_or_path, "sentence_bert_config.json")
    if bert and _json(bert).get("do_lower_case"):
        found.notes.append(
            "sentence_bert_config.json: do_lower_case = true is not reproduced (texts are not lowercased)"
        )
    found.max_seq_length = _max_seq_length(name_or_path)
    return found


@dataclass
class Resolution:
    """A config with its folder-dependent keys set, where each came from, and the warnings to log once."""

    config: Any
    sources: dict[str, str]
    warnings: list[str]


def _choose(
    key: str, recipe: Any, declared: Declared | None, default: Any, res: Resolution, *, warn: bool = True
) -> Any:
    """The recipe's value if set (a warning when the folder says otherwise), else the folder's, else the default."""
    if recipe is not None:
        res.sources[key] = "recipe"
        if warn and declared is not None and declared.value != recipe:
            res.warnings.append(
                f"{key} = {recipe!r} (recipe) contradicts the model folder's {declared.value!r} "
                f"({declared.source}); the recipe's value is used"
            )
        return recipe
    if declared is not None:
        res.sources[key] = declared.source
        return declared.value
    res.sources[key] = "default"
    return default


def resolve(config: Any) -> Resolution:
    """`config` (an `EmbedConfig`) with pooling, normalisation, prefixes and lengths set (see module doc)."""
    found = read_folder(config.model.name_or_path)
    res = Resolution(config, {}, list(found.notes))
    model, data, evals = config.model, config.data, config.retrieval_eval
    pooling = _choose("model.pooling", model.pooling, found.pooling, DEFAULTS["pooling"], res)
    normalize = _choose("model.normalize", model.normalize, found.normalize, DEFAULTS["normalize"], res)
    query = _choose("data.query_prefix", data.query_prefix, found.query_prompt, DEFAULTS["prefix"], res)
    document = _choose(
        "data.document_prefix", data.document_prefix, found.document_prompt, DEFAULTS["prefix"], res
    )
    # Training lengths: the folder's, but never above data.max_length (the longest sample).
    declared = found.max_seq_length
    if declared is not None and declared.value > data.max_length:
        declared = Declared(data.max_length, "data.max_length (below the folder's)")
    lengths = {}
    for key in ("max_seq_length_query", "max_seq_length_doc"):
        fallback = Declared(data.max_length, "data.max_length")
        lengths[key] = _choose(f"data.{key}", getattr(data, key), declared or fallback, None, res, warn=False)
    eval_length = _choose(
        "retrieval_eval.max_length",
        evals.max_length,
        found.max_seq_length,
        DEFAULTS["eval_max_length"],
        res,
        warn=False,
    )
    res.config = attrs.evolve(
        config,
        model=attrs.evolve(model, pooling=pooling, normalize=normalize),
        data=attrs.evolve(data, query_prefix=query, document_prefix=document, **lengths),
        retrieval_eval=attrs.evolve(evals, max_length=eval_length),
    )
    return res
