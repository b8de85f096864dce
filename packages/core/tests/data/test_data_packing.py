"""Packing and collation: bins, position resets, padding, and packed samples that never see each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arctic_core.data import DataFactory
from arctic_core.data.collate import collate_rows, padded_length
from arctic_core.data.packing import pack_dataset, pack_rows, plan_bins
from arctic_core.testing import tiny_model, write_dataset

IGNORE = -100


def test_bins_are_deterministic_full_and_complete() -> None:
    lengths = [6, 5, 4, 3, 2, 9, 1, 7]
    bins = plan_bins(lengths, 10)
    assert bins == plan_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 37 tokens: the fewest rows of 10 that can hold them
    with pytest.raises(ValueError, match="more than the row capacity"):
        plan_bins([11], 10)


def test_packed_rows_restart_positions() -> None:
    columns = {
        "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
        "labels": [[-100, 2, 3], [-100, 5], [-100, 7, 8, 9]],
    }
    packed = pack_rows(columns, capacity=6)
    assert packed["seqlens"] == [[2, 4], [3]]  # samples keep their order inside a row
    assert packed["input_ids"][0] == [4, 5, 6, 7, 8, 9]
    assert packed["position_ids"][0] == [0, 1, 0, 1, 2, 3]
    assert packed["labels"][0] == [-100, 5, -100, 7, 8, 9]


def test_pack_dataset_reads_in_chunks_and_reports_padding() -> None:
    import datasets

    ids = [list(range(n)) for n in (5, 3, 7, 2, 6, 4, 1)]
    table = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids, "length": [len(i) for i in ids]})
    packed, padding = pack_dataset(table, capacity=8, chunk_rows=2)
    assert packed.to_dict() == pack_rows({"input_ids": ids, "labels": ids}, 8)
    assert padding == pytest.approx(1 - 28 / (8 * len(packed)))


def test_collate_unpacked_pads_right_with_a_mask() -> None:
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [-100]}]
    batch = collate_rows(rows, pad_id=0, div_length=4, max_length=16)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100] * 4]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3]] * 2
    assert int(batch["num_trainable_tokens"]) == 2
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_packed_has_no_mask_and_counts_positions_on() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 0]}]
    batch = collate_rows(rows, pad_id=9, div_length=8, max_length=8)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9, 9, 9, 9, 9]]
    assert (
        collate_rows(rows, pad_id=9, div_length=2, max_length=32, pad_to="max_length")["input_ids"].shape[1]
        == 32
    )


def test_padded_length() -> None:
    assert padded_length(5, 4, 100, "div_length") == 8
    assert padded_length(90, 64, 100, "div_length") == 100  # never rounded past max_length
    assert padded_length(5, 4, 100, "max_length") == 100
    # div_length unset (the default): the longest row rounded up to 8, not ArcticTraining's 256
    assert [padded_length(n, None, 8192, "div_length") for n in (1, 8, 9, 141)] == [8, 8, 16, 144]
    assert padded_length(141, None, 142, "div_length") == 142


def test_pad_token_is_used_when_set_else_eos(tmp_path: Path, make_config, tokenizer) -> None:
    config = make_config(write_dataset(tmp_path / "a.jsonl", "chat", n=4, max_turns=1), div_length=64)
    rows = list(DataFactory(config, tokenizer).train_dataset())
    batch = DataFactory(config, tokenizer).collate(rows)
    assert batch["input_ids"][batch["attention_mask"] == 0].unique().tolist() == [tokenizer.eos_token_id]
    tokenizer.add_special_tokens({"pad_token": "<|im_start|>"})
    batch = DataFactory(config, tokenizer).collate(rows)
    assert batch["input_ids"][batch["attention_mask"] == 0].unique().tolist() == [tokenizer.pad_token_id]


def sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean shifted cross-entropy of one sample's logits [n, V] against its unshifted labels [n]."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE)


def grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_match_samples_run_alone(tmp_path: Path, make_config, tokenizer, attn: str) -> None:
    config = make_config(
        write_dataset(tmp_path / "a.jsonl", "chat", n=10, seed=4, max_turns=2),
        pack_samples=True,
        max_length=128,
        div_length=32,
    )
    factory = DataFactory(config, tokenizer)
    rows = list(factory.train_dataset())[-2:]  # micro_batch_size 2: padding between rows
    assert len(rows[0]["input_ids"]) != len(rows[1]["input_ids"])
    batch = factory.collate(rows)
    assert "attention_mask" not in batch and any(len(r["seqlens"]) > 1 for r in rows)
    model = tiny_model("llama", seed=0, attn_implementation=attn)
    inputs = {k: v for k, v in batch.items() if not k.startswith("num_")}  # all the model gets
    out = model(**inputs, use_cache=False)

    per_token = []
    for b, row in enumerate(rows):
        start = 0
        for n in row["seqlens"]:
            ids, labels = batch["input_ids"][b, start : start + n], batch["labels"][b, start : start + n]
            packed_logits = out.logits[b, start : start + n]
            alone_logits = model(input_ids=ids[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits, alone_logits, atol=1e-5, rtol=0)
            packed_loss, alone_loss = sample_loss(packed_logits, labels), sample_loss(alone_logits, labels)
            torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=0)
            for g_packed, g_alone in zip(grads(model, packed_loss), grads(model, alone_loss)):
                torch.testing.assert_close(g_packed, g_alone, atol=1e-5, rtol=1e-4)
            per_token.append((alone_loss.detach() * (labels != IGNORE).sum(), (labels != IGNORE).sum()))
            start += n
    # the loss the trainer computes from the batch is the token-weighted mean of the samples' own losses
    total = sum(s for s, _ in per_token) / sum(c for _, c in per_token)
    torch.testing.assert_close(out.loss, total, atol=1e-5, rtol=0)
    assert int(batch["num_trainable_tokens"]) == int(sum(c for _, c in per_token))
