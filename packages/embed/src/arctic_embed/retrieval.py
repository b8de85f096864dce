"""Retrieval evaluation on BEIR-style folders, and the exact top-k search that mining shares.

A folder holds `corpus.jsonl` (`_id`, `text`, optional `title`), `queries.jsonl` (`_id`,
`text`) and `qrels/<split>.tsv` (`query-id  corpus-id  score`, header line; score > 0 is
relevant, its value the graded gain). Queries and documents are embedded with their prefixes,
pooled and L2-normalised; documents are ranked by cosine score (exact matrix product, in query chunks).

    nDCG@k   = DCG@k / IDCG@k,  DCG@k = sum_{i<=k} gain_i / log2(i + 1)   (linear gain, as pytrec_eval)
    recall@k = |relevant in top k| / |relevant|
    MRR@10   = 1 / rank of the first relevant document in the top 10 (0 if none)

each averaged over the queries that have at least one relevant document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from arctic_embed.data import DataError, closing_tokens, pad
from arctic_embed.modeling import encode, normalize


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: row {i}: not JSON ({exc.msg})") from None
        if "_id" not in rows[-1] or "text" not in rows[-1]:
            raise DataError(f"{path}: row {i}: needs '_id' and 'text'")
    return rows


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    qrels: dict[str, dict[str, int]] = {}
    for i, line in enumerate(path.read_text().splitlines()):
        parts = line.split("\t")
        if i == 0 and not parts[-1].strip().lstrip("-").isdigit():
            continue  # header
        if len(parts) != 3:
            raise DataError(f"{path}: row {i}: expected query-id, corpus-id, score separated by tabs")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def read_beir(
    folder: str | Path, split: str = "test"
) -> tuple[list[dict], list[dict], dict[str, dict[str, int]]]:
    root = Path(folder)
    corpus = read_jsonl(root / "corpus.jsonl")
    queries = read_jsonl(root / "queries.jsonl")
    qrels = read_qrels(root / "qrels" / f"{split}.tsv")
    return corpus, queries, qrels


def document_text(doc: dict[str, Any]) -> str:
    title = doc.get("title") or ""
    return f"{title} {doc['text']}".strip() if title else str(doc["text"])


@torch.no_grad()
def encode_texts(
    module: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str,
    batch_size: int = 64,
    max_length: int = 512,
    device: Any = "cpu",
    dim: int | None = None,
) -> torch.Tensor:
    """Normalised embeddings `[N, H]` (fp32, CPU) of `texts`, `batch_size` at a time."""
    was_training = getattr(module, "training", False)
    module.eval()
    parts, closing = [], closing_tokens(tokenizer)
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), add_special_tokens=True)["input_ids"]
        ids, mask = pad(tokens, max_length, closing)
        parts.append(normalize(encode(module, ids.to(device), mask.to(device), pooling), dim).cpu())
    if was_training:
        module.train()
    width = parts[0].shape[1] if parts else 0
    return torch.cat(parts) if parts else torch.zeros(0, width)


def top_k(queries: torch.Tensor, documents: torch.Tensor, k: int, *, chunk: int = 1024):
    """Scores and indices `[Q, k]` of the k best documents per query by exact inner product, in query chunks."""
    k = min(k, documents.shape[0])
    scores, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        s, i = torch.topk(queries[start : start + chunk] @ documents.T, k, dim=1)
        scores.append(s)
        indices.append(i)
    return torch.cat(scores), torch.cat(indices)


def retrieval_metrics(
    ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], ks: Sequence[int] = (1, 5, 10, 100)
) -> dict[str, float]:
    """nDCG@10, recall@k, MRR@10 averaged over queries with a relevant document."""
    totals: dict[str, float] = {"ndcg@10": 0.0, "mrr@10": 0.0, **{f"recall@{k}": 0.0 for k in ks}}
    counted = 0
    for qid, docs in ranked.items():
        relevant = {d: g for d, g in qrels.get(qid, {}).items() if g > 0}
        if not relevant:
            continue
        counted += 1
        dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs[:10]))
        ideal = sorted(relevant.values(), reverse=True)[:10]
        totals["ndcg@10"] += dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        first = next((i for i, d in enumerate(docs[:10]) if d in relevant), None)
        totals["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        for k in ks:
            totals[f"recall@{k}"] += len(set(docs[:k]) & relevant.keys()) / len(relevant)
    return {name: value / max(counted, 1) for name, value in totals.items()}


def _shared_encode(module: Any, tokenizer: Any, texts: list[str], group: Any, **kwargs: Any) -> torch.Tensor:
    """Each rank of `group` embeds every R-th text; all ranks get every embedding (None: embed all here).

    The ranks embed in lockstep (`arctic_core.gather.lockstep`: as many batches each, a rank short
    of texts, or with none, embeds the first text and drops it), so a ZeRO-3 model's collective
    forwards stay in step, and a rank with no texts still knows the embedding width to gather.
    """
    from arctic_core.gather import all_gather_detached, group_rank_and_size, lockstep

    rank, size = group_rank_and_size(group) if group is not None else (0, 1)
    if size == 1:
        return encode_texts(module, tokenizer, texts, **kwargs)
    mine, step = texts[rank::size], kwargs["batch_size"]
    parts, width = [], 0
    for batch, real in lockstep(
        [mine[i : i + step] for i in range(0, len(mine), step)], filler=lambda: texts[:1], group=group
    ):
        embedded = encode_texts(module, tokenizer, batch, **kwargs)
        width = embedded.shape[1]
        if real:
            parts.append(embedded)
    local = torch.cat(parts) if parts else torch.zeros(0, width)
    gathered = all_gather_detached(local.to(kwargs["device"]), group=group).cpu()
    out = torch.empty(len(texts), width)
    start = 0
    for r in range(size):
        count = len(texts[r::size])
        out[r::size] = gathered[start : start + count]
        start += count
    return out


def evaluate_folder(
    module: Any,
    tokenizer: Any,
    settings: Any,
    *,
    pooling: str,
    query_prefix: str = "",
    document_prefix: str = "",
    device: Any = "cpu",
    group: Any = None,
    dim: int | None = None,
) -> dict[str, float]:
    """Retrieval metrics of the model on the folder of `settings` (a `RetrievalEvalConfig`)."""
    corpus, queries, qrels = read_beir(settings.path, settings.split)
    queries = [q for q in queries if str(q["_id"]) in qrels]
    common = {
        "pooling": pooling,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "device": device,
        "dim": dim,
    }
    docs = _shared_encode(
        module, tokenizer, [document_prefix + document_text(d) for d in corpus], group, **common
    )
    qs = _shared_encode(module, tokenizer, [query_prefix + str(q["text"]) for q in queries], group, **common)
    _, indices = top_k(qs, docs, max(max(settings.ks), 10))
    ids = [str(d["_id"]) for d in corpus]
    ranked = {str(q["_id"]): [ids[j] for j in row.tolist()] for q, row in zip(queries, indices)}
    return retrieval_metrics(ranked, qrels, settings.ks)


def worse_than_untouched(log: str | Path, after: dict[str, float], metric: str = "ndcg@10") -> str | None:
    """A warning when `after[metric]` is below the untouched model's (the run's first "before
    training" record in `log`, a `retrieval_eval.jsonl`); None when not worse or never measured."""
    path = Path(log)
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("when") == "before training" and metric in record:
            before = float(record[metric])
            if after[metric] < before:
                return (
                    f"training made retrieval worse: held-out {metric} {after[metric]:.4f} after training, "
                    f"{before:.4f} for the untouched model (check lr, temperature, pooling and prompts)"
                )
            return None
    return None
