"""Shared pieces of the arctic-embed tests: tiny encoders, a synthetic retrieval task, data on disk."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from arctic_core.testing import save_tokenizer_files, tiny_tokenizer
from arctic_core.testing.runs import arctic, read_metrics  # noqa: F401  (re-exported to the tests)

WORDS = (
    "apple river stone cloud tiger piano candle forest rocket garden silver window mountain lemon "
    "ocean violin castle desert engine falcon harbor island jacket kettle ladder marble needle "
    "orange pepper quartz rabbit saddle tunnel umbrella valley wagon yellow zebra anchor basket "
    "copper dragon feather glacier hammer igloo jungle koala lantern magnet nectar orbit pebble"
).split()


def tiny_encoder_config(arch: str = "bert", **overrides: Any) -> Any:
    """A 2-layer, hidden-64 encoder config for the shipped tokenizer (no dropout: deterministic)."""
    from transformers import BertConfig, ModernBertConfig

    from arctic_core.testing.models import tiny_config

    vocab = len(tiny_tokenizer())
    if arch == "bert":
        base = {
            "vocab_size": vocab,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "pad_token_id": 0,
        }
        return BertConfig(**{**base, **overrides})
    if arch == "modernbert":
        base = {
            "vocab_size": vocab,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
            "pad_token_id": 0,
            "global_attn_every_n_layers": 1,
        }
        return ModernBertConfig(**{**base, **overrides})
    return tiny_config(arch, **overrides)


def save_tiny_encoder(path: str | Path, arch: str = "bert", seed: int = 0, **overrides: Any) -> Path:
    """A saved tiny `AutoModel` encoder with the shipped tokenizer; weights depend only on `seed`."""
    from transformers import AutoModel

    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(tiny_encoder_config(arch, **overrides))
    model.save_pretrained(path)
    return save_tokenizer_files(path)


def task(n: int, seed: int, *, negatives: int = 0) -> list[dict[str, Any]]:
    """Synthetic retrieval: a document is 6 random words; its query is 3 of them, shuffled."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        doc = rng.sample(WORDS, 6)
        row: dict[str, Any] = {"query": " ".join(rng.sample(doc, 3)), "positive": " ".join(doc)}
        if negatives:
            row["negatives"] = [" ".join(rng.sample(WORDS, 6)) for _ in range(negatives)]
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_beir(folder: str | Path, rows: list[dict[str, Any]]) -> Path:
    """A BEIR folder whose corpus is the rows' positives, each the answer to its query."""
    folder = Path(folder)
    write_jsonl(
        folder / "corpus.jsonl", [{"_id": f"d{i}", "text": r["positive"]} for i, r in enumerate(rows)]
    )
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": r["query"]} for i, r in enumerate(rows)])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(rows))]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_prebatched(root: str | Path, *, batches: int, queries: int, seed: int, negatives: int = 1) -> Path:
    """ArcticTraining's layout: each query has a positive (and known negatives); some have 2 positives."""
    from arctic_embed.data import write_stored_batch

    tok = tiny_tokenizer()
    rng = random.Random(seed)
    root = Path(root)
    for b in range(batches):
        rows = task(queries, seed * 1000 + b, negatives=negatives)
        docs, relations = [], []
        for i, row in enumerate(rows):
            relations.append((i, len(docs), 1))
            docs.append(row["positive"])
            for neg in row.get("negatives", []):
                relations.append((i, len(docs), -1))
                docs.append(neg)
            if rng.random() < 0.25:  # a second positive: the query itself, as a document
                relations.append((i, len(docs), 1))
                docs.append(row["query"])
        ids = lambda texts: tok(texts, add_special_tokens=True)["input_ids"]  # noqa: E731
        write_stored_batch(root / f"batch_{b:08d}", ids([r["query"] for r in rows]), ids(docs), relations)
    return root
