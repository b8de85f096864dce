"""Training end to end on one rank (in process): it learns, the memory bound is exact, PEFT, pre-batched data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from embed_support import read_metrics, write_prebatched
from transformers import AutoModel

from arctic_core.recipe import bundled_recipes, load_recipe
from arctic_embed.data import StoredBatches
from arctic_embed.loss import build_targets, info_nce, info_nce_reference
from arctic_embed.modeling import embed_texts, normalize

pytestmark = pytest.mark.slow

PREBATCHED = """
type = "biencoder"
micro_batch_size = 1
epochs = 2
seed = 3
loss_temperature = 0.05
use_in_batch_negatives = {ibn}
embed_chunk_size = {chunk}
loss_chunk_size = {loss_chunk}
eval_interval = 2

[model]
name_or_path = "{model}"
dtype = "fp32"
pooling = "cls"
disable_activation_checkpoint = true

[data]
type = "contrastive_pretokenized"
root_directory = "{data}"
eval_root_directories = ["{eval}"]

[optimizer]
lr = 1e-3

[logger]
output_dir = "{out}"
progress_bar = false
"""


def _train(recipe: Path, overrides: list[str] = ()):  # type: ignore[assignment]
    loaded = load_recipe(recipe, list(overrides))
    trainer = loaded.trainer_class()(loaded.config)
    trainer.train()
    return trainer


def _prebatched_recipe(tmp_path: Path, encoder_dir: Path, name: str, **values) -> Path:
    train = write_prebatched(tmp_path / "train", batches=3, queries=8, seed=0, negatives=1)
    held = write_prebatched(tmp_path / "eval", batches=1, queries=8, seed=9, negatives=1)
    settings = {"ibn": "true", "chunk": 0, "loss_chunk": 1024, **values}
    text = PREBATCHED.format(model=encoder_dir, data=train, eval=held, out=tmp_path / name, **settings)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_quickstart_raises_held_out_ndcg_and_exports_a_folder_that_embeds_the_same(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = bundled_recipes("arctic_embed") / "quickstart.toml"
    trainer = _train(recipe, [f"logger.output_dir={tmp_path / 'run'}", "epochs=4"])
    evals = [
        json.loads(line) for line in (tmp_path / "run" / "retrieval_eval.jsonl").read_text().splitlines()
    ]
    before, after = evals[0]["ndcg@10"], evals[-1]["ndcg@10"]
    assert after > before + 0.1, (before, after)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 1.0 and "accuracy" in metrics[0]
    assert all(m["tflops"] > 0 for m in metrics)  # EmbedTrainer.step_flops: the encoder's count
    # the exported folder: a plain AutoModel + its saved pooling gives the trainer's embeddings
    folder = tmp_path / "run" / "checkpoints" / "sentence_transformers"
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": "query: ", "document": "passage: "}
    reloaded = AutoModel.from_pretrained(folder).eval()
    ids = trainer.tokenizer([prompts["query"] + "apple river stone"])["input_ids"]
    ids = torch.tensor(ids)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = normalize(embed_texts(trainer.engine.module.eval(), ids, mask, "mean"))
        theirs = torch.nn.functional.normalize(
            (reloaded(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]).sum(1)
            / mask.sum(),
            dim=-1,
        )
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_memory_bounded_loss_gives_the_plain_gradients(encoder_dir, tmp_path):
    """Checkpointed encoder chunks + the chunked analytic InfoNCE = one forward + dense autograd."""
    model = AutoModel.from_pretrained(encoder_dir)
    batch = StoredBatches(write_prebatched(tmp_path / "pb", batches=1, queries=10, seed=1, negatives=2))[0]
    targets = build_targets(
        batch["relation_query"],
        batch["relation_document"],
        batch["relation_value"],
        num_columns=batch["document_keys"].shape[0],
        in_batch_negatives=False,
    )

    def gradients(chunk: int, bounded: bool):
        model.zero_grad()
        q = embed_texts(
            model, batch["query_input_ids"], batch["query_attention_mask"], "first_token", chunk_size=chunk
        )
        d = embed_texts(
            model,
            batch["document_input_ids"],
            batch["document_attention_mask"],
            "first_token",
            chunk_size=chunk,
        )
        q, d = normalize(q), normalize(d)
        loss = (
            info_nce(q, d, targets, 0.02, chunk_size=3)
            if bounded
            else info_nce_reference(q, d, targets, 0.02)
        )
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = gradients(0, bounded=False)
    bounded_loss, bounded = gradients(4, bounded=True)
    assert bounded_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == bounded.keys() and len(plain) > 10
    scale = max(float(g.abs().max()) for g in plain.values())  # key biases have ~0 gradient: absolute bound
    for name in plain:
        err = float((bounded[name] - plain[name]).abs().max())
        assert err <= 1e-5 * scale, (name, err, scale)


def test_prebatched_training_with_and_without_the_memory_bound_is_the_same_run(encoder_dir, tmp_path):
    plain = _prebatched_recipe(tmp_path, encoder_dir, "plain")
    bounded = _prebatched_recipe(tmp_path, encoder_dir, "bounded", chunk=3, loss_chunk=5)
    _train(plain)
    _train(bounded)
    a, b = (
        read_metrics(tmp_path / "plain" / "metrics.jsonl"),
        read_metrics(tmp_path / "bounded" / "metrics.jsonl"),
    )
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    assert "eval_loss" in a[1] and "eval_accuracy" in a[1]
    assert a[-1]["loss"] < a[0]["loss"]


def test_peft_trains_only_adapters_and_exports_merged(encoder_dir, tmp_path):
    recipe = _prebatched_recipe(tmp_path, encoder_dir, "lora")
    text = recipe.read_text().replace(
        "[data]",
        'peft_config = { peft_type = "LORA", r = 4, lora_alpha = 8, target_modules = ["query", "value"] }\n\n[data]',
    )
    recipe.write_text(text + '\n[[checkpoint]]\ntype = "biencoder"\nsave_end_of_training = true\n')
    trainer = _train(recipe)
    trainable = [n for n, p in trainer.engine.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    folder = tmp_path / "lora" / "checkpoints" / "biencoder"
    merged = AutoModel.from_pretrained(folder)
    base = AutoModel.from_pretrained(encoder_dir)
    changed = [
        n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])
    ]
    assert changed and all("query" in n or "value" in n for n in changed)
