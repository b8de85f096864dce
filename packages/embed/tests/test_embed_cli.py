"""`arctic embed eval|export|mine` on a tiny encoder and a synthetic BEIR folder.

The commands run through Arctic's own command group in this process (plugin discovery included);
`arctic train --num_gpus 2` in test_embed_two_ranks.py covers the real `arctic` process.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from embed_support import task, write_beir
from transformers import AutoModel, AutoTokenizer

from arctic_core.cli import cli
from arctic_embed.mine import mine_negatives
from arctic_embed.retrieval import retrieval_metrics

pytestmark = pytest.mark.slow


def arctic(*args: str) -> str:
    """`arctic ARGS` in this process; its output, or a failure showing it."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output[-4000:]
    return result.output


def test_retrieval_metrics_by_hand():
    qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1}, "q3": {}}
    ranked = {"q1": ["x", "a", "y"], "q2": ["c", "z", "b"], "q3": ["a"]}
    m = retrieval_metrics(ranked, qrels, ks=(1, 2))
    ndcg1 = (1 / 1.584962500721156) / 1.0
    ndcg2 = (1 / 1 + 2 / 2.0) / (2 / 1 + 1 / 1.584962500721156)
    assert m["ndcg@10"] == pytest.approx((ndcg1 + ndcg2) / 2)
    assert m["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2) and m["recall@2"] == pytest.approx((1 + 0.5) / 2)


def test_mining_excludes_positives_and_near_positives():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]]), dim=-1
    )
    got = mine_negatives(q, d, [[0]], num_negatives=2, margin=0.95, depth=5)
    assert got == [[2, 3]]  # 1 scores above 0.95 x the positive: a likely false negative
    assert mine_negatives(q, d, [[0]], num_negatives=4, margin=0.95, depth=5) == [None]


def test_faiss_search_finds_the_exact_neighbours():
    pytest.importorskip("faiss")
    from arctic_embed.mine import search

    g = torch.Generator().manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(40, 32, generator=g), dim=-1)
    exact_scores, exact = search(queries, docs, 10, backend="exact")
    faiss_scores, found = search(queries, docs, 10, backend="faiss")
    assert torch.equal(found, exact)  # random vectors: no exact ties
    torch.testing.assert_close(faiss_scores, exact_scores, atol=1e-5, rtol=0)


def test_eval_export_and_mine_commands(encoder_dir, tmp_path):
    beir = write_beir(tmp_path / "beir", task(40, seed=5))
    (beir / "qrels" / "train.tsv").write_text((beir / "qrels" / "test.tsv").read_text())
    out = arctic("embed", "eval", str(encoder_dir), str(beir), "--json", str(tmp_path / "m.json"))
    assert "ndcg@10" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["ndcg@10"] <= 1.0 and metrics["recall@100"] == 1.0

    st = tmp_path / "st"
    arctic(
        "embed",
        "export",
        str(encoder_dir),
        str(st),
        "--pooling",
        "mean",
        "--query-prefix",
        "query: ",
    )
    modules = json.loads((st / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((st / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "query: "
    assert AutoTokenizer.from_pretrained(st).pad_token is not None
    # the folder alone (AutoModel + 1_Pooling) embeds as the source encoder does
    source, exported = AutoModel.from_pretrained(encoder_dir).eval(), AutoModel.from_pretrained(st).eval()
    ids = torch.tensor([[257, 5, 9, 44]])
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=ids).last_hidden_state.mean(1), source(input_ids=ids).last_hidden_state.mean(1)
        )
    # starting again from the exported folder: its pooling and prompts are read back
    again = arctic("embed", "eval", str(st), str(beir))
    assert "ndcg@10" in again

    arctic(
        "embed",
        "mine",
        str(encoder_dir),
        str(beir),
        str(tmp_path / "mined"),
        "--num-negatives",
        "3",
        "--queries-per-batch",
        "4",
    )
    rows = [json.loads(line) for line in (tmp_path / "mined" / "triplets.jsonl").read_text().splitlines()]
    assert rows and all(
        len(r["negatives"]) == 3 and not set(r["negatives"]) & set(r["positive"]) for r in rows
    )
    assert (tmp_path / "mined" / "batches" / "batch_00000000" / "relations.parquet").is_file()


def test_export_loads_in_sentence_transformers_and_embeds_as_arctic_does(encoder_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from arctic_embed.retrieval import encode_texts

    st = tmp_path / "st"
    arctic("embed", "export", str(encoder_dir), str(st), "--pooling", "mean", "--query-prefix", "query: ")
    texts = ["apple river stone", "a much longer text about rivers, stones and the apples beside them"]
    model = SentenceTransformer(str(st), device="cpu", local_files_only=True)
    theirs = model.encode(texts, prompt_name="query", convert_to_tensor=True, batch_size=2)
    tokenizer = AutoTokenizer.from_pretrained(st)
    encoder = AutoModel.from_pretrained(encoder_dir)
    ours = encode_texts(encoder, tokenizer, ["query: " + t for t in texts], pooling="mean")
    assert theirs.shape == ours.shape  # batched with padding on both sides
    torch.testing.assert_close(theirs.cpu(), ours, atol=1e-5, rtol=0)
    documents = model.encode(texts, convert_to_tensor=True)  # no prompt for documents
    torch.testing.assert_close(
        documents.cpu(), encode_texts(encoder, tokenizer, texts, pooling="mean"), atol=1e-5, rtol=0
    )
