"""Arctic's embed training against sentence-transformers: one run, one machine, one model folder.

The starting model is "published-like": a BERT-shaped encoder pre-trained with
sentence-transformers' MNRL (`--pretrain-steps` steps at the small batch, on pairs that no other
split holds) and saved **by sentence-transformers** with mean pooling, as a published model is
(offline there is no published model to download). Every row starts from that same folder.
Arctic's recipes set only its path (the folder gives the pooling), and sentence-transformers loads
the same folder. Both sides read the same pre-batched steps in the same order, with AdamW (lr 5e-4,
no weight decay, constant LR, gradient clipping 1.0), fp32. Texts vary in length (documents 6-30
words, queries 2-6 of their words).

The other side is sentence-transformers itself, in a plain training loop:
`MultipleNegativesRankingLoss` on (anchor, positive, hard negative) triplets (cosine similarity x
scale 20 between every query and every positive and negative of the batch, cross-entropy with the
query's own positive as the target), and `CachedMultipleNegativesRankingLoss` (GradCache). Arctic
runs `use_in_batch_negatives = true` at temperature 0.05 (= 1 / 20), the same loss. Each
configuration runs in its own process, so peak resident memory is its own (it includes the
process's imports, about the same for both sides); CPU s is the process's user + system time.

Small batch (held-out nDCG@10 after training, the same steps): MNRL, CachedMNRL, Arctic (each
query: its positive and a random negative), and Arctic+mined: `arctic embed mine` with the starting
folder as its own teacher over the training queries and documents (the teacher's top `--depth`,
the positive skipped, candidates above `--margin` x the positive's score dropped as likely false
negatives, the best `--negatives` kept per query), then Arctic on the mined pre-batched steps
(mined and in-batch negatives). Large batch: Arctic's memory-bounded mode (`embed_chunk_size`:
checkpointed encoder chunks, longest rows first, each chunk cut to its own longest row;
`loss_chunk_size`: the chunked analytic InfoNCE) against computing everything at once and
against CachedMultipleNegativesRankingLoss.

    uv run python bench/embed/bench_embed.py [--steps 60] [--batch 32] [--big-batch 1024]
        [--pretrain-steps 100] [--negatives 3] [--margin 0.95] [--depth 400] [--only "mined;MNRL, batch 32"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENCODER = {  # bert-tiny's shape: 2 layers, hidden 128 (about 0.5M parameters with the 1024-token vocabulary)
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 512,
    "max_position_embeddings": 512,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "pad_token_id": 0,
}
LR = 5e-4
WARMUP_STEPS = 1
CHUNK = {"small": 8, "big": 64}  # CachedMNRL's mini-batch, Arctic's embed_chunk_size
SCALE = 20.0  # MultipleNegativesRankingLoss's default; Arctic's temperature 1 / SCALE
DOC_WORDS, QUERY_WORDS = (6, 30), (2, 6)  # ranges
MAX_LENGTH = 256  # the folder's max_seq_length: above every text's length
PRETRAIN_STEPS = 100  # the published-like starting folder's MNRL pre-training
NEGATIVES, MARGIN, DEPTH = (
    3,
    0.95,
    400,
)  # mined negatives per query; drop candidates above MARGIN x positive's score
PRETRAIN_SEED = 500_000  # the pre-training pairs' seeds: disjoint from the fine-tuning and held-out ones


WORDS = (  # the vocabulary of the quickstart's synthetic task
    "apple river stone cloud tiger piano candle forest rocket garden silver window mountain lemon "
    "ocean violin castle desert engine falcon harbor island jacket kettle ladder marble needle "
    "orange pepper quartz rabbit saddle tunnel umbrella valley wagon yellow zebra anchor basket "
    "copper dragon feather glacier hammer igloo jungle koala lantern magnet nectar orbit pebble"
).split()


def _rows(count: int, seed: int) -> list[dict]:
    """A document is 6-30 random words; its query 2-6 of them; one random negative document."""
    rng, words = random.Random(seed), WORDS
    rows = []
    for _ in range(count):
        doc = rng.sample(words, rng.randint(*DOC_WORDS))
        rows.append(
            {
                "query": " ".join(rng.sample(doc, min(len(doc), rng.randint(*QUERY_WORDS)))),
                "positive": " ".join(doc),
                "negative": " ".join(rng.sample(words, rng.randint(*DOC_WORDS))),
            }
        )
    return rows


def write_beir(folder: Path, rows: list[dict], split: str) -> None:
    """Queries, their positives as the corpus, and qrels (one positive each)."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": r["positive"]}) + "\n" for i, r in enumerate(rows))
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": r["query"]}) + "\n" for i, r in enumerate(rows))
    )
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(rows))]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(qrels) + "\n")


def save_published(encoder: Path, out: Path) -> None:
    """The encoder as sentence-transformers saves a published model: Transformer + mean Pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(encoder), max_seq_length=MAX_LENGTH)
    transformer.tokenizer.pad_token = transformer.tokenizer.eos_token  # the shipped tokenizer has none
    model = SentenceTransformer(modules=[transformer, Pooling(ENCODER["hidden_size"], "mean")], device="cpu")
    model.save(str(out))


def pretrain(encoder: Path, out: Path, *, steps: int, batch: int) -> list[float]:
    """The "published" model: sentence-transformers' MNRL on pairs no other split holds, saved by it.

    Offline there is no published encoder to start from, so the random-init one is pre-trained the
    way one is published: `steps` steps of (query, positive, random negative) triplets at `batch`,
    then saved as a sentence-transformers folder (Transformer + mean Pooling). Returns the losses.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(encoder), max_seq_length=MAX_LENGTH)
    transformer.tokenizer.pad_token = transformer.tokenizer.eos_token  # the shipped tokenizer has none
    torch.manual_seed(0)
    model = SentenceTransformer(modules=[transformer, Pooling(ENCODER["hidden_size"], "mean")], device="cpu")
    loss_fn = MultipleNegativesRankingLoss(model, scale=SCALE)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        rows = _rows(batch, seed=PRETRAIN_SEED + step)
        features = [model.preprocess([r[k] for r in rows]) for k in ("query", "positive", "negative")]
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.save(str(out))
    return losses


def prepare(
    folder: Path, *, steps: int, batch: int, big_batch: int, big_steps: int, pretrain_steps: int
) -> None:
    """The published-like folder, pre-batched training steps and a held-out BEIR folder."""
    import torch
    from transformers import AutoModel, BertConfig

    from arctic_core.testing import save_tokenizer_files, tiny_tokenizer
    from arctic_embed.data import write_stored_batch

    tok = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(BertConfig(vocab_size=len(tok), **ENCODER))
    model.save_pretrained(folder / "encoder")
    save_tokenizer_files(folder / "encoder")
    if pretrain_steps:
        losses = pretrain(folder / "encoder", folder / "model", steps=pretrain_steps, batch=batch)
        print(f"pre-training: {pretrain_steps} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    else:
        save_published(folder / "encoder", folder / "model")

    def ids(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=True)["input_ids"]

    trained: list[dict] = []
    for name, count, size in (("small", steps, batch), ("big", big_steps, big_batch)):
        for b in range(count):
            rows = _rows(size, seed=1000 * size + b)
            trained += rows if name == "small" else []
            docs = [r["positive"] for r in rows] + [r["negative"] for r in rows]
            relations = [(i, i, 1) for i in range(size)] + [(i, size + i, -1) for i in range(size)]
            write_stored_batch(
                folder / name / f"batch_{b:08d}", ids([r["query"] for r in rows]), ids(docs), relations
            )
    write_beir(folder / "train-beir", trained, "train")  # what `mine` searches: the training pairs
    write_beir(folder / "heldout", _rows(200, seed=7), "test")


def run_arctic(folder: Path, name: str, data: str, steps: int, *, bounded: bool, evaluate: bool) -> dict:
    out = folder / f"run-{name}"
    recipe = folder / f"{name}.toml"
    recipe.write_text(
        f"""
type = "embed"
micro_batch_size = 1
train_iters = {steps}
seed = 0
loss_temperature = {1 / SCALE}
use_in_batch_negatives = true
embed_chunk_size = {CHUNK["big"] if bounded else 0}
loss_chunk_size = {128 if bounded else 100000}
[model]
name_or_path = "{folder / "model"}"
dtype = "fp32"
disable_activation_checkpoint = true
[data]
root_directory = "{folder / data}"
[optimizer]
lr = {LR}
weight_decay = 0.0
[scheduler]
name = "constant"
warmup_ratio = 0.0
[logger]
output_dir = "{out}"
progress_bar = false
"""
        + (f'[retrieval_eval]\npath = "{folder / "heldout"}"\n' if evaluate else "")
    )
    cpu = child_cpu_seconds()
    subprocess.run([sys.executable, "-m", "arctic_core", "train", str(recipe)], check=True)
    cpu = child_cpu_seconds() - cpu
    sources = (out / "recipe.yaml").read_text() if (out / "recipe.yaml").exists() else ""
    assert "pooling: mean" in sources or not sources, "the folder's mean pooling was not used"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").open()]
    timed = lines[WARMUP_STEPS:]
    result = {
        "cpu_s": cpu,
        "first_loss": lines[0]["loss"],
        "last_loss": lines[-1]["loss"],
        "s_per_step": statistics.median(x["seconds"] for x in timed),
        "peak_rss_gb": max(x.get("peak_memory_gb") or 0 for x in lines),
    }
    if evaluate:
        evals = [json.loads(x) for x in (out / "retrieval_eval.jsonl").open()]
        result["ndcg@10"], result["ndcg_before"] = evals[-1]["ndcg@10"], evals[0]["ndcg@10"]
    return result


def loop_worker(folder: Path, data: str, steps: int, evaluate: bool, cached: bool) -> None:
    """Runs in a subprocess: sentence-transformers' (Cached)MultipleNegativesRankingLoss on the stored batches."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import AutoTokenizer

    from arctic_embed.config import RetrievalEvalConfig
    from arctic_embed.data import StoredBatches
    from arctic_embed.retrieval import evaluate_folder

    torch.manual_seed(0)
    model = SentenceTransformer(str(folder / "model"), device="cpu", local_files_only=True).train()
    loss_fn = (
        CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=CHUNK[data])
        if cached
        else MultipleNegativesRankingLoss(model, scale=SCALE)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    stored = StoredBatches(folder / data)
    losses, times = [], []
    for step in range(steps):
        batch = stored[step % len(stored)]
        start = time.perf_counter()
        queries = batch["query_input_ids"].shape[0]  # documents: the positives first, then the negatives
        features = [
            {"input_ids": batch["query_input_ids"], "attention_mask": batch["query_attention_mask"]},
            *(
                {
                    "input_ids": batch["document_input_ids"][part],
                    "attention_mask": batch["document_attention_mask"][part],
                }
                for part in (slice(0, queries), slice(queries, None))
            ),
        ]
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    result = {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "s_per_step": statistics.median(times[WARMUP_STEPS:]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if evaluate:
        settings = RetrievalEvalConfig(path=str(folder / "heldout"), max_length=MAX_LENGTH)
        tokenizer = AutoTokenizer.from_pretrained(folder / "model")
        encoder = model[0].auto_model.eval()  # the Hugging Face model inside, scored by the same evaluator
        result["ndcg@10"] = evaluate_folder(encoder, tokenizer, settings, pooling="mean")["ndcg@10"]
    print("RESULT " + json.dumps(result))


def run_loop(folder: Path, data: str, steps: int, *, evaluate: bool, cached: bool = False) -> dict:
    command = [sys.executable, __file__, "--worker", str(folder), "--data", data, "--steps", str(steps)]
    if evaluate:
        command.append("--evaluate")
    if cached:
        command.append("--cached")
    cpu = child_cpu_seconds()
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {**result, "cpu_s": child_cpu_seconds() - cpu}


def child_cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes (the whole run: start-up, training, eval)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mine(folder: Path, batch: int, *, negatives: int, margin: float, depth: int = DEPTH) -> dict:
    """`arctic embed mine` with the starting folder as its own teacher over the training pairs.

    As practitioners mine (NV-Retriever's TopK-PercPos): the teacher's top documents, the positive
    skipped, those scoring above `margin` x the positive's score dropped as likely false negatives,
    the best `negatives` of the rest kept.
    """
    out = folder / "mined"
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "arctic_core",
        "embed",
        "mine",
        str(folder / "model"),
        str(folder / "train-beir"),
        str(out),
    ]
    command += ["--num-negatives", str(negatives), "--margin", str(margin), "--queries-per-batch", str(batch)]
    command += ["--max-length", str(MAX_LENGTH), "--depth", str(depth)]
    subprocess.run(command, check=True)
    kept = sum(1 for _ in (out / "triplets.jsonl").open())
    return {
        "seconds": time.perf_counter() - start,
        "queries": kept,
        "batches": len(list((out / "batches").iterdir())),
    }


def run_rows(folder: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Every configuration, one process each, in a fixed order."""
    small, big = args.batch, args.big_batch
    rows = {
        f"sentence-transformers MNRL, batch {small}": lambda: run_loop(
            folder, "small", args.steps, evaluate=True
        ),
        f"sentence-transformers CachedMNRL, batch {small}": lambda: run_loop(
            folder, "small", args.steps, evaluate=True, cached=True
        ),
        f"arctic, batch {small}": lambda: run_arctic(
            folder, "small", "small", args.steps, bounded=False, evaluate=True
        ),
        f"arctic + mined negatives, batch {small}": lambda: run_arctic(
            folder, "mined", "mined/batches", args.steps, bounded=False, evaluate=True
        ),
        f"arctic, batch {big}": lambda: run_arctic(
            folder, "big", "big", args.big_steps, bounded=False, evaluate=False
        ),
        f"arctic memory-bounded, batch {big}": lambda: run_arctic(
            folder, "bounded", "big", args.big_steps, bounded=True, evaluate=False
        ),
        f"sentence-transformers MNRL, batch {big}": lambda: run_loop(
            folder, "big", args.big_steps, evaluate=False
        ),
        f"sentence-transformers CachedMNRL, batch {big}": lambda: run_loop(
            folder, "big", args.big_steps, evaluate=False, cached=True
        ),
    }
    chosen = [n for n in rows if not args.only or any(part in n for part in args.only.split(";"))]
    return {name: rows[name]() for name in chosen}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="steps at the small batch")
    parser.add_argument("--batch", type=int, default=32, help="queries per small global batch")
    parser.add_argument("--big-batch", type=int, default=1024, help="queries per large global batch")
    parser.add_argument("--big-steps", type=int, default=4)
    parser.add_argument(
        "--pretrain-steps", type=int, default=PRETRAIN_STEPS, help="0: start from random init"
    )
    parser.add_argument("--negatives", type=int, default=NEGATIVES, help="mined negatives per query")
    parser.add_argument("--margin", type=float, default=MARGIN, help="mining's false-negative margin")
    parser.add_argument("--depth", type=int, default=DEPTH, help="documents the teacher retrieves per query")
    parser.add_argument(
        "--only", default="", help="parts of row names to run, separated by ';' (row names hold commas)"
    )
    parser.add_argument("--worker")
    parser.add_argument("--data")
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--cached", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        loop_worker(Path(args.worker), args.data, args.steps, args.evaluate, args.cached)
        return
    small, big = args.batch, args.big_batch
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(
            folder,
            steps=args.steps,
            batch=small,
            big_batch=big,
            big_steps=args.big_steps,
            pretrain_steps=args.pretrain_steps,
        )
        mined = mine(folder, small, negatives=args.negatives, margin=args.margin, depth=args.depth)
        results = run_rows(folder, args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load:.1f} at the end; fp32; encoder BERT {ENCODER['num_hidden_layers']} layers x "
        f"{ENCODER['hidden_size']}, pre-trained {args.pretrain_steps} MNRL steps, saved by sentence-transformers "
        f"with mean pooling; each query has 1 positive + 1 random negative, or {args.negatives} mined "
        f"(margin {args.margin}, depth {args.depth}); {args.steps} steps at batch {small}, {args.big_steps} "
        f"at {big}; CachedMNRL mini-batch / Arctic embed_chunk_size {CHUNK['small']} and {CHUNK['big']}; "
        f"s/step: median after {WARMUP_STEPS} warm-up steps"
    )
    print(
        f"mined: {mined['queries']} of {small * args.steps} training queries kept {args.negatives} negatives, "
        f"{mined['batches']} batches, {mined['seconds']:.1f} s (the arctic + mined row cycles over them)"
    )
    before = next((r["ndcg_before"] for r in results.values() if "ndcg_before" in r), float("nan"))
    print(f"held-out nDCG@10 of the starting folder: {before:.4f}")
    print(
        "\n| run | s/step | samples/s | CPU s (process) | peak RSS GB | first loss | last loss | nDCG@10 after |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        queries = small if f"batch {small}" in name else big
        ndcg = f"{r['ndcg@10']:.4f}" if "ndcg@10" in r else "-"
        print(
            f"| {name} | {r['s_per_step']:.3f} | {queries / r['s_per_step']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f} "
            f"| {r['first_loss']:.5f} | {r['last_loss']:.5f} | {ndcg} |"
        )


if __name__ == "__main__":
    main()
