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

Where the files come from (`FolderFiles`): a local folder; for a hub id, at training time
(`fetch=True`) the hub itself (`hf_hub_download` at `model.revision`, only the cache under
offline mode): a file the repo lacks is absent, a network failure is an error naming the model
unless the recipe sets every key. `arctic config show` stays offline: it reads the cache, and
leaves unset (saying so) the keys an uncached hub folder will decide when training starts.
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
    undecided: set[str] = field(default_factory=set)
    """Settings (pooling, normalize, prompts, max_seq_length) a hub folder's uncached files may declare."""
    unknown: list[str] = field(default_factory=list)
    """The hub folder's files the local cache knows nothing about (read offline only)."""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArcticError(f"{path}: not readable JSON ({exc})") from None


class HubUnreachable(ArcticError):
    """A hub model folder's files could not be fetched (network failure, hub down, not in the cache)."""


class FolderFiles:
    """Where each file of a model folder is: in a local folder, in the Hugging Face cache, or on the hub.

    Offline (`fetch=False`, as `arctic config show` reads): a local folder's files, else what the
    cache holds; a hub file the cache knows nothing about is recorded in `unknown`. With
    `fetch=True` (training), a hub id's files are downloaded (`hf_hub_download`, at `revision`;
    under offline mode only the cache is read): a file the repo lacks is absent (None), a network
    failure raises `HubUnreachable` naming the model and the file.
    """

    def __init__(self, name_or_path: str, *, revision: str | None = None, fetch: bool = False):
        self.name_or_path, self.revision, self.fetch = name_or_path, revision, fetch
        self.local = Path(name_or_path).is_dir()
        self.unknown: list[str] = []
        self.notes: list[str] = []
        self._seen: dict[str, Path | None] = {}

    def get(self, relative: str) -> Path | None:
        """The file's local path, None when the folder has no such file (or it is not known offline)."""
        if relative not in self._seen:
            if self.local:
                path = Path(self.name_or_path) / relative
                self._seen[relative] = path if path.is_file() else None
            else:
                self._seen[relative] = self._download(relative) if self.fetch else self._cached(relative)
        return self._seen[relative]

    def _cached(self, relative: str) -> Path | None:
        """The cached file; a file the cache knows nothing about (neither cached nor known absent) is
        recorded in `unknown`."""
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(self.name_or_path, relative, revision=self.revision)
        except Exception:  # not a hub id (a missing local path): nothing declared
            return None
        if found is None:
            self.unknown.append(relative)
        return Path(found) if isinstance(found, str) else None

    def _download(self, relative: str) -> Path | None:
        import huggingface_hub
        from huggingface_hub import errors

        where = f"model.name_or_path {self.name_or_path!r}"
        where += f" (revision {self.revision!r})" if self.revision else ""
        try:
            return Path(huggingface_hub.hf_hub_download(self.name_or_path, relative, revision=self.revision))
        except errors.LocalEntryNotFoundError:  # not in the cache, and offline or the hub unreachable
            if not _offline():
                raise HubUnreachable(
                    f"{where}: could not fetch {relative} from the hub (network failure?) and it is not in "
                    "the local cache"
                ) from None
            if self._cached(relative) is None and relative in self.unknown:
                self.notes.append(f"{where}: offline mode and {relative} is not in the cache: read as absent")
            return None
        except errors.EntryNotFoundError:  # the repo has no such file (a 404): simply absent
            return None
        except errors.HFValidationError:  # not a hub id (a missing local path): the model loader says so
            return None
        except errors.RepositoryNotFoundError as exc:  # also gated or private without a token
            raise ArcticError(f"{where}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # a connection error mid-download, the hub down (5xx), ...
            raise HubUnreachable(
                f"{where}: could not fetch {relative} from the hub ({type(exc).__name__}: {exc})"
            ) from None


def _offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else getattr(constants, "HF_HUB_OFFLINE", False))


def _modules(files: FolderFiles) -> list[dict[str, Any]]:
    path = files.get("modules.json")
    return list(_json(path)) if path else []


def _pooling(files: FolderFiles, notes: list[str]) -> Declared | None:
    arctic = files.get(BIENCODER_CONFIG)
    if arctic:
        return Declared(str(_json(arctic)["pooling"]), BIENCODER_CONFIG)
    modules = _modules(files)
    entry = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    where = f"{entry.get('path') or '1_Pooling'}/config.json" if entry else "1_Pooling/config.json"
    path = files.get(where)
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


def _max_seq_length(files: FolderFiles) -> Declared | None:
    bert = files.get("sentence_bert_config.json")
    if bert and isinstance(_json(bert).get("max_seq_length"), int):
        return Declared(int(_json(bert)["max_seq_length"]), "sentence_bert_config.json")
    tokenizer = files.get("tokenizer_config.json")
    limit = _json(tokenizer).get("model_max_length") if tokenizer else None
    if not isinstance(limit, (int, float)) or limit >= UNLIMITED:
        return None  # a tokenizer without a (real) model_max_length: no declared length
    config = files.get("config.json")
    positions = _json(config).get("max_position_embeddings") if config else None
    if isinstance(positions, int) and positions > 0 and positions < limit:
        return Declared(positions, "config.json (max_position_embeddings, below the tokenizer's)")
    return Declared(int(limit), "tokenizer_config.json (model_max_length)")


def read_folder(name_or_path: str, *, revision: str | None = None, fetch: bool = False) -> FolderSettings:
    """What `name_or_path` declares: a local folder, a hub id's cached files, or (`fetch`) its hub files."""
    files = FolderFiles(name_or_path, revision=revision, fetch=fetch)
    found = FolderSettings()
    found.pooling = _pooling(files, found.notes)
    if files.unknown:
        found.undecided.add("pooling")
    modules = _modules(files)
    if modules:
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        found.normalize = Declared(normalize, "modules.json")
    elif found.pooling is not None and found.pooling.source == BIENCODER_CONFIG:
        found.normalize = Declared(True, BIENCODER_CONFIG)  # ArcticTraining's bi-encoder always normalises
    elif "modules.json" in files.unknown:
        found.undecided.add("normalize")
    path = files.get("config_sentence_transformers.json")
    if "config_sentence_transformers.json" in files.unknown:
        found.undecided.add("prompts")
    prompts = dict(_json(path).get("prompts") or {}) if path else {}
    where = "config_sentence_transformers.json (prompts.{})"
    if "query" in prompts:
        found.query_prompt = Declared(str(prompts["query"]), where.format("query"))
    for name in ("document", "passage"):
        if name in prompts:
            found.document_prompt = Declared(str(prompts[name]), where.format(name))
            break
    before = len(files.unknown)
    found.max_seq_length = _max_seq_length(files)
    if len(files.unknown) > before:
        found.undecided.add("max_seq_length")
    bert = files.get("sentence_bert_config.json")
    if bert and _json(bert).get("do_lower_case"):
        found.notes.append(
            "sentence_bert_config.json: do_lower_case = true is not reproduced (texts are not lowercased)"
        )
    found.notes += files.notes
    found.unknown = files.unknown
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


# The recipe keys each folder setting decides (`FolderSettings.undecided` names the settings).
SETTING_KEYS = {
    "pooling": ("model.pooling",),
    "normalize": ("model.normalize",),
    "prompts": ("data.query_prefix", "data.document_prefix"),
    "max_seq_length": ("data.max_seq_length_query", "data.max_seq_length_doc", "retrieval_eval.max_length"),
}


def _recipe_value(config: Any, key: str) -> Any:
    table, name = key.split(".")
    return getattr(getattr(config, table), name)


def _unset_keys(config: Any) -> list[str]:
    """The folder-dependent keys the recipe leaves unset (retrieval_eval's only when it evaluates)."""
    keys = [key for group in SETTING_KEYS.values() for key in group]
    if config.retrieval_eval.path is None:
        keys.remove("retrieval_eval.max_length")
    return [key for key in keys if _recipe_value(config, key) is None]


def _read(config: Any, fetch: bool) -> tuple[FolderSettings, list[str]]:
    """The folder's settings; a hub it cannot reach is an error unless the recipe sets every key."""
    name, revision = config.model.name_or_path, config.model.revision
    try:
        return read_folder(name, revision=revision, fetch=fetch), []
    except HubUnreachable as exc:
        unset = _unset_keys(config)
        if unset:
            raise HubUnreachable(
                f"{exc}. Unset, {', '.join(unset)} come from the model's folder: restore the network, "
                "or run with HF_HUB_OFFLINE=1 on a cached model, or set them in the recipe"
            ) from None
        note = f"{exc}: the recipe sets every key the folder would give, used unchecked against it"
        return read_folder(name, revision=revision), [note]


def _defer(config: Any, found: FolderSettings, res: Resolution) -> Any:
    """For `config show` on a hub id not (fully) in the cache: the keys its hub folder will decide at
    training time are left unset, not shown as if the defaults were final."""
    deferred = [
        key
        for setting in sorted(found.undecided)
        for key in SETTING_KEYS[setting]
        if _recipe_value(config, key) is None
    ]
    if not deferred:
        return res.config
    name = config.model.name_or_path
    files = ", ".join(found.unknown)
    for key in deferred:
        res.sources[key] = (
            f"the hub folder of {name}, read at training time ({files}: not in the local cache)"
        )
    res.warnings.append(
        f"model.name_or_path {name!r}: {files} not in the local cache; {', '.join(deferred)} will be read "
        "from its hub folder when training starts"
    )
    unset: dict[str, dict[str, Any]] = {}
    for key in deferred:
        table, field_name = key.split(".")
        unset.setdefault(table, {})[field_name] = None
    return attrs.evolve(
        res.config,
        **{table: attrs.evolve(getattr(res.config, table), **fields) for table, fields in unset.items()},
    )


def resolve(config: Any, *, fetch: bool = False) -> Resolution:
    """`config` (an `EmbedConfig`) with pooling, normalisation, prefixes and lengths set (see module doc).

    `fetch=False` (`arctic config show`) reads only local and cached files and leaves the keys an
    uncached hub folder decides unset; `fetch=True` (training) downloads a hub folder's small files.
    """
    found, notes = _read(config, fetch)
    res = Resolution(config, {}, [*notes, *found.notes])
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
    if not fetch:
        res.config = _defer(config, found, res)
    return res
