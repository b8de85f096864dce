"""Pairs/triplets and ArcticTraining's pre-batched layout: reading, checking, splitting over ranks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from embed_support import write_prebatched

from arctic_embed import data
from arctic_embed.config import EmbedDataConfig
from arctic_embed.loss import build_targets


def _pairs_of(batch):
    """{(query row, document key): value} of a batch."""
    return {
        (int(q), int(d)): int(v)
        for q, d, v in zip(batch["relation_query"], batch["relation_document"], batch["relation_value"])
    }


def test_prebatched_folder_reads_in_place(tmp_path):
    root = write_prebatched(tmp_path / "pb", batches=2, queries=8, seed=0, negatives=2)
    stored = data.StoredBatches(root)
    assert len(stored) == 2
    batch = stored[1]
    table = pq.read_table(root / "batch_00000001" / "relations.parquet").to_pylist()
    expected = {(r["BATCH_QUERY_ID"], r["BATCH_DOCUMENT_ID"]): r["RELEVANCE"] for r in table}
    assert _pairs_of(batch) == expected  # ids are the rows here
    docs = (
        pq.read_table(root / "batch_00000001" / "documents.parquet")
        .column("DOCUMENT_TOKEN_ID_LIST")
        .to_pylist()
    )
    for i, tokens in enumerate(docs):
        n = int(batch["document_attention_mask"][i].sum())
        assert batch["document_input_ids"][i, :n].tolist() == tokens and n == len(tokens)
    assert data.StoredBatches(root, split_factor=2)[3]["query_input_ids"].shape[0] == 4


def test_truncation_to_max_seq_length(tmp_path):
    root = write_prebatched(tmp_path / "pb", batches=1, queries=4, seed=0)
    batch = data.StoredBatches(root, max_query=3, max_document=2)[0]
    assert batch["query_input_ids"].shape[1] == 3 and batch["document_input_ids"].shape[1] == 2
    # a text ending in the tokenizer's closing tokens ([SEP], EOS) keeps them when cut
    assert data.truncate([5, 1, 2, 3, 4, 9], 4, (9,)) == [5, 1, 2, 9]
    assert data.truncate([5, 1, 2, 3, 4, 8], 4, (9,)) == [5, 1, 2, 3]  # no closing token: a plain cut
    assert data.truncate([5, 1, 9], 4, (9,)) == [5, 1, 9]
    ids, mask = data.pad([[5, 1, 2, 3, 9], [5, 9]], 3, (9,))
    assert ids.tolist() == [[5, 1, 9], [5, 9, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def _corrupt(folder: Path, name: str, column: str, row: int, value) -> None:
    table = pq.read_table(folder / name).to_pydict()
    table[column][row] = value
    pq.write_table(pa.table(table), folder / name)


@pytest.mark.parametrize(
    ("name", "column", "row", "value", "message"),
    [
        (
            "relations.parquet",
            "BATCH_DOCUMENT_ID",
            3,
            999,
            "relations.parquet: row 3: BATCH_DOCUMENT_ID 999 is not in",
        ),
        ("relations.parquet", "RELEVANCE", 2, 5, "relations.parquet: row 2: RELEVANCE must be 1, -1 or 0"),
        (
            "documents.parquet",
            "BATCH_DOCUMENT_ID",
            4,
            0,
            "documents.parquet: row 4: BATCH_DOCUMENT_ID 0 repeats row 0",
        ),
        (
            "queries.parquet",
            "QUERY_TOKEN_ID_LIST",
            1,
            [],
            "queries.parquet: row 1: QUERY_TOKEN_ID_LIST must be",
        ),
    ],
)
def test_malformed_rows_are_named_by_file_and_row(tmp_path, name, column, row, value, message):
    root = write_prebatched(tmp_path / "pb", batches=1, queries=4, seed=0)
    _corrupt(root / "batch_00000000", name, column, row, value)
    data.read_stored_batch.cache_clear()
    with pytest.raises(data.DataError, match=message.replace("(", r"\(")):
        data.StoredBatches(root)[0]


def test_pairs_rows_are_checked_and_prefixed():
    config = EmbedDataConfig(sources=["x.jsonl"], query_prefix="query: ", document_prefix="passage: ")
    rows = data.pair_rows([{"query": "a", "positive": "b", "negatives": ["c", "d"]}], "x.jsonl", config)
    assert rows == [
        {"query": ["query: a"], "positives": ["passage: b"], "negatives": ["passage: c", "passage: d"]}
    ]
    with pytest.raises(data.DataError, match=r"x.jsonl: row 1: column 'positive' must be a non-empty string"):
        data.pair_rows([{"query": "a", "positive": "b"}, {"query": "a", "positive": ""}], "x.jsonl", config)
    with pytest.raises(data.DataError, match=r"row 0: needs columns"):
        data.pair_rows([{"question": "a"}], "x.jsonl", config)


@pytest.mark.parametrize("parts", [2, 3])
def test_split_over_ranks_and_gather_recover_every_labelled_pair(tmp_path, parts):
    """Splitting a stored batch over ranks, then gathering the document keys, places every pair."""
    whole = data.StoredBatches(write_prebatched(tmp_path / "pb", batches=1, queries=9, seed=3, negatives=1))[
        0
    ]
    pieces = [data.split_batch(whole, i, parts) for i in range(parts)]
    gathered = torch.cat([p["document_keys"] for p in pieces])
    assert gathered.tolist() == whole["document_keys"].tolist()
    found, offset = set(), 0
    for piece in pieces:
        q, col, v = data.resolve_columns(piece, gathered)
        found |= {(int(a) + offset, int(gathered[c]), int(b)) for a, c, b in zip(q, col, v)}
        offset += piece["query_input_ids"].shape[0]
    assert found == {(q, d, v) for (q, d), v in _pairs_of(whole).items()}
    rows = sum(
        build_targets(
            *data.resolve_columns(p, gathered), num_columns=len(gathered), in_batch_negatives=True
        ).rows
        for p in pieces
    )
    assert rows == int((whole["relation_value"] == 1).sum())


def test_collated_pairs_have_unique_keys_per_rank():
    samples = [
        {"query": [[1, 2]], "positives": [[3]], "negatives": [[4], [5]]},
        {"query": [[6]], "positives": [[7]], "negatives": []},
    ]
    a = data.collate_pairs(samples, rank=0, max_query=None, max_document=None)
    b = data.collate_pairs(samples, rank=1, max_query=None, max_document=None)
    assert not set(a["document_keys"].tolist()) & set(b["document_keys"].tolist())
    assert a["document_input_ids"][:, 0].tolist() == [3, 7, 4, 5]  # positives first, then negatives
    assert sorted(_pairs_of(a).values()) == [-1, -1, 1, 1]
