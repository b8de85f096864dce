"""Contrastive batches: queries, documents, and sparse relevance labels between them.

A batch (what `collate`/the pre-batched reader give, what `split_batch` cuts):

| key | shape | meaning |
| --- | --- | --- |
| `query_input_ids`, `query_attention_mask` | `[Q, Lq]` | right-padded query tokens |
| `document_input_ids`, `document_attention_mask` | `[D, Ld]` | right-padded document tokens |
| `document_keys` | `[D]` int64 | each document's id, unique among the documents gathered in one micro-step |
| `relation_query`, `relation_document`, `relation_value` | `[K]` | labelled pairs: local query index, document key, +1 / -1 |

Two sources, one layout:

- pairs and triplets (`query`, `positive` = a text or list, optional `negatives` = a text or
  list) from any `data.sources` entry, tokenized with the query/document prefixes; each
  micro-batch's documents are its queries' positives then their negatives, keyed by
  (data-parallel rank, position), so keys stay unique once gathered;
- ArcticTraining's pre-batched layout, `root/batch_*/{queries,documents,relations}.parquet`
  (`BATCH_QUERY_ID, QUERY_TOKEN_ID_LIST` / `BATCH_DOCUMENT_ID, DOCUMENT_TOKEN_ID_LIST` /
  `BATCH_QUERY_ID, BATCH_DOCUMENT_ID, RELEVANCE`; an absent pair is unknown), read in place one
  stored batch at a time (`arctic_core.engine.loaders.PreBatched`: streamed, and resumed by the
  loader's own position), keyed by the document's row in its stored batch.

`split_batch(batch, i, n)` gives contiguous query and document slices, and the relations of the
part's queries (re-based) with their document keys kept: the partner documents may sit on
another rank, where the gather finds them. `resolve_columns` maps keys to columns of the
gathered documents (a relation whose document is in no rank's micro-batch is dropped).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from arctic_core.errors import ArcticError

Batch = dict[str, Any]
QUERY_ID, QUERY_TOKENS = "BATCH_QUERY_ID", "QUERY_TOKEN_ID_LIST"
DOCUMENT_ID, DOCUMENT_TOKENS = "BATCH_DOCUMENT_ID", "DOCUMENT_TOKEN_ID_LIST"
RELEVANCE = "RELEVANCE"
RANK_KEY_STRIDE = 1 << 40


class DataError(ArcticError):
    """A malformed input row, named by file and row."""


# --- padding and batches -------------------------------------------------------------------------


def closing_tokens(tokenizer: Any) -> tuple[int, ...]:
    """The special tokens `tokenizer` adds after a text (BERT's [SEP], an EOS), `()` if none.

    Truncation keeps them at the end, as the tokenizer's own truncation (and sentence-transformers)
    does: a BERT-style model then still sees [SEP], a last-token-pooled model still pools its EOS.
    """
    if tokenizer is None:
        return ()
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[start + len(plain) :])
    return ()


def truncate(tokens: Sequence[int], max_length: int | None, closing: tuple[int, ...] = ()) -> list[int]:
    """`tokens` cut to `max_length`; a sequence ending in `closing` keeps it at the end."""
    tokens = list(tokens)
    if not max_length or len(tokens) <= max_length:
        return tokens
    keep = len(closing)
    if keep and max_length > keep and tuple(tokens[-keep:]) == closing:
        return tokens[: max_length - keep] + list(closing)
    return tokens[:max_length]


def pad(
    sequences: Sequence[Sequence[int]], max_length: int | None = None, closing: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists with 0 (truncated to `max_length`, keeping `closing`); ids and mask `[N, L]`."""
    cut = [truncate(s, max_length, closing) for s in sequences]
    width = max((len(s) for s in cut), default=1) or 1
    ids = torch.zeros(len(cut), width, dtype=torch.long)
    mask = torch.zeros(len(cut), width, dtype=torch.long)
    for i, s in enumerate(cut):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def make_batch(
    queries: Sequence[Sequence[int]],
    documents: Sequence[Sequence[int]],
    relations: Iterable[tuple[int, int, int]],
    *,
    document_keys: Sequence[int] | None = None,
    max_query: int | None = None,
    max_document: int | None = None,
    closing: tuple[int, ...] = (),
) -> Batch:
    """A batch from token lists and (query index, document key, relevance) triples."""
    q_ids, q_mask = pad(queries, max_query, closing)
    d_ids, d_mask = pad(documents, max_document, closing)
    keys = list(range(len(documents))) if document_keys is None else list(document_keys)
    rel = list(relations)
    return {
        "query_input_ids": q_ids,
        "query_attention_mask": q_mask,
        "document_input_ids": d_ids,
        "document_attention_mask": d_mask,
        "document_keys": torch.tensor(keys, dtype=torch.long),
        "relation_query": torch.tensor([r[0] for r in rel], dtype=torch.long),
        "relation_document": torch.tensor([r[1] for r in rel], dtype=torch.long),
        "relation_value": torch.tensor([r[2] for r in rel], dtype=torch.int8),
        "num_tokens": q_mask.sum() + d_mask.sum(),
    }


def _part(rows: int, index: int, parts: int) -> slice:
    """Contiguous, near-equal part `index` of `parts` of `rows` (the first parts get one more)."""
    base, extra = divmod(rows, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


def split_batch(batch: Batch, index: int, parts: int) -> Batch:
    """Part `index` of `parts`: contiguous queries and documents, the part's queries' relations."""
    queries = _part(batch["query_input_ids"].shape[0], index, parts)
    documents = _part(batch["document_input_ids"].shape[0], index, parts)
    mine = (batch["relation_query"] >= queries.start) & (batch["relation_query"] < queries.stop)
    out = {k: v[queries] for k, v in batch.items() if k.startswith("query_")}
    out.update({k: v[documents] for k, v in batch.items() if k.startswith("document_")})
    out["relation_query"] = batch["relation_query"][mine] - queries.start
    out["relation_document"] = batch["relation_document"][mine]
    out["relation_value"] = batch["relation_value"][mine]
    out["num_tokens"] = out["query_attention_mask"].sum() + out["document_attention_mask"].sum()
    return out


def resolve_columns(
    batch: Batch, gathered_keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's relations as (query, column in the gathered documents, value), unplaced ones dropped."""
    sorted_keys, order = torch.sort(gathered_keys)
    wanted = batch["relation_document"]
    if sorted_keys.numel() == 0 or wanted.numel() == 0:
        empty = wanted.new_zeros(0)
        return empty, empty, batch["relation_value"][:0]
    at = torch.searchsorted(sorted_keys, wanted).clamp(max=sorted_keys.numel() - 1)
    found = sorted_keys[at] == wanted
    return batch["relation_query"][found], order[at[found]], batch["relation_value"][found]


# --- pairs and triplets --------------------------------------------------------------------------


def _texts(value: Any, where: str, column: str, *, required: bool) -> list[str]:
    if value is None or value == []:
        if required:
            raise DataError(f"{where}: column {column!r} is empty")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) and t for t in items):
        raise DataError(
            f"{where}: column {column!r} must be a non-empty string or a list of them, got {value!r}"
        )
    return items


def pair_rows(rows: Iterable[dict[str, Any]], source: str, config: Any) -> list[dict[str, list[str]]]:
    """Validated {query, positives, negatives} texts (prefixes applied) from raw rows of one source."""
    out = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        if config.query_column not in row or config.positive_column not in row:
            raise DataError(f"{where}: needs columns {config.query_column!r} and {config.positive_column!r}")
        query = _texts(row[config.query_column], where, config.query_column, required=True)
        if len(query) != 1:
            raise DataError(f"{where}: column {config.query_column!r} must hold one query")
        positives = _texts(row[config.positive_column], where, config.positive_column, required=True)
        negatives = _texts(row.get(config.negatives_column), where, config.negatives_column, required=False)
        if config.num_negatives is not None:
            if len(negatives) < config.num_negatives:
                raise DataError(
                    f"{where}: {len(negatives)} negatives, data.num_negatives is {config.num_negatives}"
                )
            negatives = negatives[: config.num_negatives]
        query_prefix, document_prefix = config.query_prefix or "", config.document_prefix or ""
        out.append(
            {
                "query": [query_prefix + query[0]],
                "positives": [document_prefix + t for t in positives],
                "negatives": [document_prefix + t for t in negatives],
            }
        )
    return out


def tokenize_pairs(rows: list[dict[str, list[str]]], tokenizer: Any) -> list[dict[str, list[list[int]]]]:
    """Token ids of every text (the tokenizer's special tokens added)."""

    def ids(texts: list[str]) -> list[list[int]]:
        return [list(t) for t in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []

    return [{k: ids(v) for k, v in row.items()} for row in rows]


def collate_pairs(
    samples: Sequence[dict[str, list[list[int]]]],
    *,
    rank: int,
    max_query: int | None,
    max_document: int | None,
    closing: tuple[int, ...] = (),
) -> Batch:
    """A micro-batch of tokenized pairs/triplets: documents are positives, then negatives.

    Texts longer than the maximum keep the tokenizer's `closing` tokens (`closing_tokens`).
    """
    documents: list[list[int]] = []
    relations: list[tuple[int, int, int]] = []
    for value, kind in ((1, "positives"), (-1, "negatives")):
        for i, sample in enumerate(samples):
            for tokens in sample[kind]:
                relations.append((i, rank * RANK_KEY_STRIDE + len(documents), value))
                documents.append(tokens)
    queries = [s["query"][0] for s in samples]
    keys = [rank * RANK_KEY_STRIDE + j for j in range(len(documents))]
    return make_batch(
        queries,
        documents,
        relations,
        document_keys=keys,
        max_query=max_query,
        max_document=max_document,
        closing=closing,
    )


# --- ArcticTraining's pre-batched layout ---------------------------------------------------------


def batch_folders(root: str | Path) -> list[Path]:
    """The `batch_*` folders of a pre-batched root, sorted."""
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of batch_*/ sub-folders")
    found = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("batch_"))
    if not found:
        raise DataError(f"{folder}: no batch_* sub-folders")
    return found


def _read_table(path: Path, columns: Sequence[str]) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: missing")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(table.column_names)})"
        )
    return {c: table.column(c).to_pylist() for c in columns}


def _index(ids: list[Any], path: Path, column: str) -> dict[Any, int]:
    where: dict[Any, int] = {}
    for row, value in enumerate(ids):
        if value in where:
            raise DataError(f"{path}: row {row}: {column} {value!r} repeats row {where[value]}")
        where[value] = row
    return where


def _token_lists(values: list[Any], path: Path, column: str) -> list[list[int]]:
    for row, tokens in enumerate(values):
        if not tokens or not all(isinstance(t, int) and t >= 0 for t in tokens):
            raise DataError(f"{path}: row {row}: {column} must be a non-empty list of token ids")
    return values


@functools.lru_cache(maxsize=2)
def read_stored_batch(
    folder: Path, max_query: int | None, max_document: int | None, closing: tuple[int, ...] = ()
) -> Batch:
    """One `batch_*` folder as a batch (documents keyed by their row), every row checked."""
    q = _read_table(folder / "queries.parquet", (QUERY_ID, QUERY_TOKENS))
    d = _read_table(folder / "documents.parquet", (DOCUMENT_ID, DOCUMENT_TOKENS))
    r = _read_table(folder / "relations.parquet", (QUERY_ID, DOCUMENT_ID, RELEVANCE))
    q_rows = _index(q[QUERY_ID], folder / "queries.parquet", QUERY_ID)
    d_rows = _index(d[DOCUMENT_ID], folder / "documents.parquet", DOCUMENT_ID)
    relations = []
    path = folder / "relations.parquet"
    for row, (qid, did, value) in enumerate(zip(r[QUERY_ID], r[DOCUMENT_ID], r[RELEVANCE])):
        if qid not in q_rows:
            raise DataError(f"{path}: row {row}: {QUERY_ID} {qid!r} is not in queries.parquet")
        if did not in d_rows:
            raise DataError(f"{path}: row {row}: {DOCUMENT_ID} {did!r} is not in documents.parquet")
        if value not in (-1, 0, 1):
            raise DataError(f"{path}: row {row}: {RELEVANCE} must be 1, -1 or 0, got {value!r}")
        if value:
            relations.append((q_rows[qid], d_rows[did], int(value)))
    return make_batch(
        _token_lists(q[QUERY_TOKENS], folder / "queries.parquet", QUERY_TOKENS),
        _token_lists(d[DOCUMENT_TOKENS], folder / "documents.parquet", DOCUMENT_TOKENS),
        relations,
        max_query=max_query,
        max_document=max_document,
        closing=closing,
    )


class StoredBatches(Sequence[Batch]):
    """The pre-batched folders as a sequence of batches (`split_factor` items per folder), read lazily."""

    def __init__(
        self,
        root: str | Path,
        *,
        split_factor: int = 1,
        max_query: int | None = None,
        max_document: int | None = None,
        closing: tuple[int, ...] = (),
    ):
        self.folders = batch_folders(root)
        self.split_factor = split_factor
        self.max_query, self.max_document, self.closing = max_query, max_document, closing

    def __len__(self) -> int:
        return len(self.folders) * self.split_factor

    def __getitem__(self, index: Any) -> Any:
        folder, part = divmod(int(index), self.split_factor)
        whole = read_stored_batch(self.folders[folder], self.max_query, self.max_document, self.closing)
        return whole if self.split_factor == 1 else split_batch(whole, part, self.split_factor)


def write_stored_batch(
    folder: str | Path,
    queries: Sequence[Sequence[int]],
    documents: Sequence[Sequence[int]],
    relations: Iterable[tuple[int, int, int]],
) -> Path:
    """Write one `batch_*` folder in ArcticTraining's layout (ids = row numbers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rel = list(relations)
    pq.write_table(
        pa.table({QUERY_ID: list(range(len(queries))), QUERY_TOKENS: [list(q) for q in queries]}),
        out / "queries.parquet",
    )
    pq.write_table(
        pa.table({DOCUMENT_ID: list(range(len(documents))), DOCUMENT_TOKENS: [list(d) for d in documents]}),
        out / "documents.parquet",
    )
    pq.write_table(
        pa.table(
            {
                QUERY_ID: [r[0] for r in rel],
                DOCUMENT_ID: [r[1] for r in rel],
                RELEVANCE: pa.array([r[2] for r in rel], type=pa.int8()),
            }
        ),
        out / "relations.parquet",
    )
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
