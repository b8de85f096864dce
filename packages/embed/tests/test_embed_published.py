"""Starting from a published sentence-transformers folder: its pooling, prompts, normalisation and
length are the defaults; Arctic then embeds and trains exactly as sentence-transformers' MNRL does.

The folders are built and saved by sentence-transformers itself (a tiny BERT, mean/CLS/last-token
pooling, a query and a document prompt, a Normalize module); the recipe sets only the model's path.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from embed_support import save_tiny_encoder, task, write_beir, write_jsonl

from arctic_core.recipe import load_recipe
from arctic_embed.folder import read_folder, resolve

pytestmark = pytest.mark.slow

TEMPERATURE = 0.05
PROMPTS = {"query": "query: ", "document": "passage: "}
ST_MODES = {"mean": "mean", "first_token": "cls", "last_token": "lasttoken"}


@pytest.fixture(scope="module")
def st_folders(tmp_path_factory):
    """One sentence-transformers folder per pooling kind, saved by sentence-transformers 6."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    root = tmp_path_factory.mktemp("published")
    encoder = save_tiny_encoder(root / "encoder", "bert", seed=2)
    tokenizer = json.loads((encoder / "tokenizer_config.json").read_text())
    tokenizer.pop(
        "chat_template"
    )  # a text encoder's tokenizer (with one, sentence-transformers 6 applies it)
    (encoder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    _add_closing_tokens(encoder)
    folders = {}
    for pooling, mode in ST_MODES.items():
        transformer = Transformer(str(encoder), max_seq_length=64)
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
        model = SentenceTransformer(
            modules=[transformer, Pooling(64, mode), Normalize()], prompts=PROMPTS, device="cpu"
        )
        model.save(str(root / pooling))
        folders[pooling] = root / pooling
    folders["data"] = write_jsonl(root / "pairs.jsonl", _rows())
    return folders


def _add_closing_tokens(encoder: Path) -> None:
    """A BERT-style tokenizer: `<bos> text <eos>` (the shipped one adds no special tokens)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    tokenizer.save_pretrained(encoder)


def _rows() -> list[dict]:
    """Eight pairs; one query and one document longer than the folders' 64-token maximum."""
    rows = task(8, seed=5)
    rows[1]["positive"] = " ".join([rows[1]["positive"]] * 12)  # about 100 tokens
    rows[2]["query"] = " ".join([rows[2]["query"]] * 25)
    return rows


def _trainer(model: Path, data: Path, tmp_path: Path, **extra):
    recipe = {
        "type": "embed",
        "micro_batch_size": 8,
        "train_iters": 1,
        "use_in_batch_negatives": True,
        "loss_temperature": TEMPERATURE,
        "model": {"name_or_path": str(model), "dtype": "fp32"},
        "data": {"sources": [str(data)]},
        "logger": {"output_dir": str(tmp_path / "run"), "progress_bar": False},
        **extra,
    }
    loaded = load_recipe(None, data=recipe)
    return loaded.trainer_class()(loaded.config)


@pytest.mark.parametrize("pooling", list(ST_MODES))
def test_same_embeddings_loss_and_gradients_as_sentence_transformers(st_folders, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from arctic_embed.retrieval import encode_texts

    folder = st_folders[pooling]
    trainer = _trainer(folder, st_folders["data"], tmp_path)
    trainer.setup()
    config = trainer.config
    assert (config.model.pooling, config.model.normalize) == (pooling, True)
    assert (config.data.query_prefix, config.data.document_prefix) == ("query: ", "passage: ")
    assert config.data.max_seq_length_query == config.data.max_seq_length_doc == 64
    assert trainer.config_sources["model.pooling"] == "1_Pooling/config.json"

    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    rows = _rows()
    queries, documents = [r["query"] for r in rows], [r["positive"] for r in rows]
    lengths = [len(trainer.tokenizer(PROMPTS["document"] + d)["input_ids"]) for d in documents]
    assert max(lengths) > 64 and trainer.tokenizer("a")["input_ids"][-1] == trainer.tokenizer.eos_token_id
    # 1. embeddings before training (each side applies the folder's prompts itself), long texts
    # truncated to 64 tokens with the closing EOS kept, as sentence-transformers' tokenizer call does
    for kind, texts in (("query", queries), ("document", documents)):
        theirs = st.encode(texts, prompt_name=kind, convert_to_tensor=True, batch_size=8)
        ours = encode_texts(
            trainer.model,
            trainer.tokenizer,
            [PROMPTS[kind] + t for t in texts],
            pooling=config.model.pooling,
            max_length=64,
        )
        torch.testing.assert_close(ours, theirs.cpu(), atol=1e-5, rtol=0, msg=lambda m, k=kind: f"{k}: {m}")
    # 2. the first step's loss and gradients: MNRL at scale 1/T on (prompted) pairs
    st.train()
    mnrl = MultipleNegativesRankingLoss(st, scale=1 / TEMPERATURE)
    features = [
        st.preprocess([PROMPTS["query"] + q for q in queries]),
        st.preprocess([PROMPTS["document"] + d for d in documents]),
    ]
    st_loss = mnrl(features, None)
    st_params = dict(st[0].auto_model.named_parameters())
    st_grads = torch.autograd.grad(st_loss, list(st_params.values()), allow_unused=True)

    batch = trainer.prepare_batch(trainer.collate([trainer.train_dataset[i] for i in range(8)]))
    arctic_loss = trainer.loss(batch).loss
    params = dict(trainer.model.named_parameters())
    assert params.keys() == st_params.keys()
    trainer.engine.backward(arctic_loss)  # DeepSpeed's backward, as a training step does
    grads = [p.grad for p in params.values()]
    torch.testing.assert_close(arctic_loss, st_loss, atol=1e-5, rtol=0)
    used = [(name, a, b) for name, a, b in zip(params, grads, st_grads) if b is not None]
    assert len(used) >= len(params) - 2  # all but BERT's pooler head, which neither uses
    for name, a, b in used:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_published_quirks_load_and_a_contradicting_recipe_value_warns(st_folders, tmp_path):
    folder = tmp_path / "quirky"
    shutil.copytree(st_folders["mean"], folder)
    shutil.rmtree(folder / "2_Normalize")  # listed in modules.json, no folder (as often published)
    (folder / "1_Pooling" / "config.json").write_text(  # sentence-transformers 2.x flags, no newer keys
        json.dumps(
            {
                "word_embedding_dimension": 64,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
            }
        )
    )
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer.pop("model_max_length", None)  # a tokenizer without model_max_length
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False})
    )

    found = read_folder(str(folder))
    assert (found.pooling.value, found.normalize.value, found.max_seq_length.value) == ("mean", True, 128)
    trainer = _trainer(folder, st_folders["data"], tmp_path / "a")
    trainer.setup()  # the model and tokenizer load
    assert trainer.config.model.pooling == "mean" and trainer.config.data.max_seq_length_doc == 128

    (folder / "sentence_bert_config.json").unlink()  # now no length declared anywhere: the defaults
    loaded = load_recipe(
        None,
        data={
            "type": "embed",
            "use_in_batch_negatives": True,
            "model": {"name_or_path": str(folder), "pooling": "cls"},
            "data": {"sources": [str(st_folders["data"])], "max_length": 100},
        },
    )
    res = resolve(loaded.config)
    assert res.config.model.pooling == "first_token" and res.sources["model.pooling"] == "recipe"
    assert res.config.data.max_seq_length_query == 100 and res.config.retrieval_eval.max_length == 512
    assert res.sources["data.query_prefix"].startswith("config_sentence_transformers.json")
    [warning] = res.warnings  # one warning, naming both values and the folder's file
    assert "'first_token' (recipe)" in warning and "'mean' (1_Pooling/config.json)" in warning


def test_config_show_prints_resolved_values_with_sources(st_folders, tmp_path):
    from click.testing import CliRunner

    from arctic_core.cli import cli

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'type = "embed"\nuse_in_batch_negatives = true\n[model]\nname_or_path = "{st_folders["last_token"]}"\n'
        f'[data]\nsources = ["{st_folders["data"]}"]\n'
    )
    result = CliRunner().invoke(cli, ["config", "show", str(recipe)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "pooling: last_token" in out and "query_prefix: 'query: '" in out
    assert "#   model.pooling: 1_Pooling/config.json" in out and "#   model.normalize: modules.json" in out


def test_a_run_made_worse_reports_the_drop(st_folders, tmp_path):
    rows = task(32, seed=11)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    heldout = write_beir(tmp_path / "heldout", rows)
    trainer = _trainer(
        st_folders["mean"],
        data,
        tmp_path,
        train_iters=3,
        optimizer={"lr": 1.0, "weight_decay": 0.0},  # far too high on purpose
        scheduler={"name": "constant", "warmup_ratio": 0.0},
        retrieval_eval={"path": str(heldout)},
    )
    trainer.train()
    before, after = (
        json.loads(line) for line in (tmp_path / "run" / "retrieval_eval.jsonl").read_text().splitlines()
    )
    assert after["ndcg@10"] < before["ndcg@10"] and "warning" not in before
    assert "made retrieval worse" in after["warning"] and f"{before['ndcg@10']:.4f}" in after["warning"]
    log = (tmp_path / "run" / "logs").glob("*")
    assert any("made retrieval worse" in p.read_text() for p in log if p.is_file())


HUB_ID = "published/minilm-mean"  # a hub id this test's empty cache has never seen


def _fake_hub(folder: Path, calls: list[tuple[str, str | None]], *, unreachable: bool = False):
    """`hf_hub_download` serving `folder` as the hub repo HUB_ID (404 for what it lacks), or down."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError, Response

    http = importlib.import_module(Response.__module__.split(".")[0])  # httpx, or hf's fork of it

    def download(repo_id, filename, *, revision=None, **_):
        assert repo_id == HUB_ID
        calls.append((filename, revision))
        if unreachable:  # what hf_hub_download raises on a connection error with nothing cached
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
        path = folder / filename
        if not path.is_file():
            url = f"https://huggingface.co/{repo_id}/resolve/{revision}/{filename}"
            response = Response(404, request=http.Request("HEAD", url))
            raise RemoteEntryNotFoundError(f"404 Entry Not Found: {filename}", response=response)
        return str(path)

    return download


def test_a_hub_id_not_yet_cached_resolves_from_the_hub_folder_at_training_time(
    st_folders, tmp_path, monkeypatch
):
    from click.testing import CliRunner
    from huggingface_hub import constants

    from arctic_core.cli import cli
    from arctic_embed.folder import HubUnreachable

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    calls: list[tuple[str, str | None]] = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _fake_hub(st_folders["mean"], calls))
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'type = "embed"\nuse_in_batch_negatives = true\n[model]\nname_or_path = "{HUB_ID}"\n'
        f'revision = "v1"\n[data]\nsources = ["{st_folders["data"]}"]\n'
    )
    # config show: offline, no download; the folder's keys are said to come at training time
    shown = CliRunner().invoke(cli, ["config", "show", str(recipe)])
    assert shown.exit_code == 0, shown.output
    assert calls == [] and "pooling: null" in shown.output and "pooling: first_token" not in shown.output
    assert f"#   model.pooling: the hub folder of {HUB_ID}, read at training time" in shown.output

    # training's resolve step (core's setup step `recipe`) fetches the small files (at the
    # recipe's revision): mean pooling
    from arctic_core.engine import setup

    trainer = load_recipe(str(recipe)).trainer_class()(load_recipe(str(recipe)).config)
    setup.recipe(trainer)
    config = trainer.config
    assert (config.model.pooling, config.model.normalize) == ("mean", True)
    assert (config.data.query_prefix, config.data.document_prefix) == ("query: ", "passage: ")
    assert config.data.max_seq_length_query == 64 and config.retrieval_eval.max_length == 64
    assert trainer.config_sources["model.pooling"] == "1_Pooling/config.json"
    assert ("biencoder_config.json", "v1") in calls  # asked for, a 404, read as absent
    assert {revision for _, revision in calls} == {"v1"}

    # the hub unreachable: an error naming the model, unless the recipe sets every key
    monkeypatch.setattr(
        "huggingface_hub.hf_hub_download", _fake_hub(st_folders["mean"], calls, unreachable=True)
    )
    monkeypatch.setattr("arctic_embed.folder._offline", lambda: False)  # the tests run offline
    with pytest.raises(HubUnreachable, match=f"'{HUB_ID}'.*model.pooling"):
        resolve(load_recipe(str(recipe)).config, fetch=True)
    explicit = [
        "model.pooling=mean",
        "model.normalize=true",
        "data.query_prefix=q",
        "data.document_prefix=d",
        "data.max_seq_length_query=32",
        "data.max_seq_length_doc=32",
    ]
    loaded = load_recipe(str(recipe), explicit)
    res = resolve(loaded.config, fetch=True)
    assert res.config.model.pooling == "mean" and res.config.data.max_seq_length_doc == 32
    assert any("used unchecked" in warning for warning in res.warnings)
    # under offline mode (HF_HUB_OFFLINE=1), a file the cache lacks is read as absent, with a note
    monkeypatch.setattr("arctic_embed.folder._offline", lambda: True)
    res = resolve(load_recipe(str(recipe)).config, fetch=True)
    assert res.config.model.pooling == "first_token" and res.sources["model.pooling"] == "default"
    assert any("offline mode and modules.json is not in the cache" in note for note in res.warnings)
