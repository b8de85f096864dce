"""Hard-negative mining with a teacher model, written as triplets Arctic trains on.

For each query of a BEIR-style folder (corpus, queries, qrels): embed everything with the
teacher, retrieve the top `depth` documents (faiss's exact inner-product index when faiss is
installed, `pip install 'arctic-embed[faiss]'`; else the chunked matrix product; same neighbours),
drop the query's positives, and keep the `num_negatives` best remaining documents whose score
is below `margin` x the lowest positive score (ArcticTraining's false-negative guard: a
document the teacher scores almost as high as a positive is likely an unlabelled positive).
Queries with fewer eligible negatives than asked are dropped. Output: JSONL rows
`{"query", "positive": [...], "negatives": [...]}` (read by `data.sources`), and, with a
tokenizer, ArcticTraining's pre-batched layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from arctic_embed.retrieval import document_text, encode_texts, read_beir, top_k


def faiss_available() -> bool:
    """Whether faiss can be imported (the `arctic-embed[faiss]` extra)."""
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def search(
    queries: torch.Tensor, documents: torch.Tensor, k: int, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and indices `[Q, k]` of the k best documents per query by inner product.

    `backend`: `faiss` (an exact `IndexFlatIP`, many CPU threads), `exact` (torch, chunked), or
    `auto` (faiss when installed). Both are exact: they differ only in the order of exact ties.
    """
    if backend == "exact" or (backend == "auto" and not faiss_available()):
        return top_k(queries, documents, k)
    import faiss  # type: ignore[import-not-found]

    k = min(k, documents.shape[0])
    index = faiss.IndexFlatIP(documents.shape[1])
    index.add(documents.float().contiguous().numpy())
    scores, indices = index.search(queries.float().contiguous().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(indices).long()


def mine_negatives(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    positives: list[list[int]],
    *,
    num_negatives: int,
    margin: float = 0.95,
    depth: int = 100,
) -> list[list[int] | None]:
    """Per query, the indices of its mined negatives (None when too few are eligible)."""
    scores, indices = search(query_embeddings, document_embeddings, depth)
    out: list[list[int] | None] = []
    for q, pos in enumerate(positives):
        if not pos:
            out.append(None)
            continue
        ceiling = margin * float((query_embeddings[q] @ document_embeddings[pos].T).min())
        chosen = [
            int(j) for s, j in zip(scores[q].tolist(), indices[q].tolist()) if j not in pos and s < ceiling
        ][:num_negatives]
        out.append(chosen if len(chosen) == num_negatives else None)
    return out


def mine_folder(
    module: Any,
    tokenizer: Any,
    folder: str | Path,
    *,
    pooling: str,
    split: str = "train",
    num_negatives: int = 10,
    margin: float = 0.95,
    depth: int = 100,
    query_prefix: str = "",
    document_prefix: str = "",
    batch_size: int = 64,
    max_length: int = 512,
) -> list[dict[str, Any]]:
    """Triplet rows (texts without prefixes) mined from a BEIR folder's `split` qrels."""
    corpus, queries, qrels = read_beir(folder, split)
    queries = [q for q in queries if str(q["_id"]) in qrels]
    where = {str(d["_id"]): i for i, d in enumerate(corpus)}
    texts = [document_text(d) for d in corpus]
    common: dict[str, Any] = {"pooling": pooling, "batch_size": batch_size, "max_length": max_length}
    docs = encode_texts(module, tokenizer, [document_prefix + t for t in texts], **common)
    qs = encode_texts(module, tokenizer, [query_prefix + str(q["text"]) for q in queries], **common)
    positives = [[where[d] for d, g in qrels[str(q["_id"])].items() if g > 0 and d in where] for q in queries]
    mined = mine_negatives(qs, docs, positives, num_negatives=num_negatives, margin=margin, depth=depth)
    return [
        {"query": str(q["text"]), "positive": [texts[j] for j in pos], "negatives": [texts[j] for j in neg]}
        for q, pos, neg in zip(queries, positives, mined)
        if neg is not None
    ]


def write_prebatched(
    rows: list[dict[str, Any]],
    root: str | Path,
    tokenizer: Any,
    *,
    queries_per_batch: int,
    query_prefix: str = "",
    document_prefix: str = "",
) -> list[Path]:
    """The mined rows as ArcticTraining's `batch_*/{queries,documents,relations}.parquet` (full batches only)."""
    from arctic_embed.data import write_stored_batch

    def ids(texts: list[str]) -> list[list[int]]:
        return [list(t) for t in tokenizer(texts, add_special_tokens=True)["input_ids"]]

    folders = []
    for b in range(len(rows) // queries_per_batch):
        part = rows[b * queries_per_batch : (b + 1) * queries_per_batch]
        docs: list[str] = []
        relations = []
        for i, row in enumerate(part):
            for value, kind in ((1, "positive"), (-1, "negatives")):
                for text in row[kind]:
                    relations.append((i, len(docs), value))
                    docs.append(document_prefix + text)
        queries = ids([query_prefix + r["query"] for r in part])
        folders.append(write_stored_batch(Path(root) / f"batch_{b:08d}", queries, ids(docs), relations))
    return folders
