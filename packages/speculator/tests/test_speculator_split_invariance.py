"""The trained (position, head) pairs are a property of each sample: splitting a batch into micro-batches
of other padded lengths, or packing its samples into rows, leaves the step's loss and gradients unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from arctic_core.data.collate import collate_rows
from arctic_core.engine.frozen import FrozenModel
from arctic_core.recipe import bundled_recipes, load_recipe
from arctic_core.testing.models import tiny_model

QUICKSTART = bundled_recipes("arctic_speculator") / "quickstart.toml"
LENGTHS = (13, 9, 12, 6)  # 12 is the longest of its half, 4 short of the whole batch's 13


class Engine:
    """What the trainer calls its engine: callable like the speculator, `.module` the speculator."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


@pytest.fixture(scope="module")
def trainer() -> Any:
    """A speculator trainer (3 MLP heads, 5-row loss chunks) on a tiny random Llama, without setup."""
    from arctic_speculator.modeling import build_speculator

    loaded = load_recipe(QUICKSTART, ["logger.progress_bar=false", "loss_chunk_size=5"])
    trainer = loaded.trainer_class()(loaded.config)
    base = tiny_model("llama", seed=1, attn_implementation="sdpa").eval().requires_grad_(False)
    trainer.base = FrozenModel(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        speculator = build_speculator(
            base.config.hidden_size, base.config.vocab_size, loaded.config.model.speculator_settings()
        )
    trainer.engine = Engine(speculator)
    return trainer


def samples(vocab: int) -> list[dict[str, list[int]]]:
    """Samples whose every label is trained but the first two (a prompt), so heads reach the last token."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for length in LENGTHS:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [-100, -100, *ids[2:]]})
    return out


def packed(rows: Sequence[dict[str, list[int]]]) -> dict[str, list[int]]:
    """The rows concatenated into one packed row, position ids restarting at each (as core's packing)."""
    return {
        "input_ids": [t for row in rows for t in row["input_ids"]],
        "labels": [t for row in rows for t in row["labels"]],
        "position_ids": [p for row in rows for p in range(len(row["input_ids"]))],
    }


def step(trainer: Any, micro_batches: Sequence[Sequence[dict[str, list[int]]]], div_length: int):
    """The step's loss sum_b w_b loss_b / sum_b w_b, as core's loop weighs micro-batches, and its gradients."""
    speculator = trainer.engine.module
    speculator.zero_grad(set_to_none=True)
    batches = [collate_rows(rows, pad_id=0, div_length=div_length, max_length=64) for rows in micro_batches]
    weights = [trainer.micro_batch_weight(batch) for batch in batches]
    total = torch.zeros(())
    for batch, weight in zip(batches, weights):
        loss = trainer.loss(batch).loss * weight / sum(weights)
        loss.backward()
        total += loss.detach()
    return total, sum(weights), [p.grad.clone() for p in speculator.parameters()]


def test_micro_batch_splits_and_packing_give_the_whole_batch_loss_and_gradients(trainer):
    rows = samples(trainer.base.module.config.vocab_size)
    whole = step(trainer, [rows], div_length=1)
    # every head-0 target (t + 2 < length, labels trained from index 2) counts once
    assert whole[1] == sum(length - 2 for length in LENGTHS)
    splits = {
        "halves": step(trainer, [rows[:2], rows[2:]], div_length=1),  # the second padded to 12, not 13
        "singles": step(trainer, [[row] for row in rows], div_length=1),  # each row at its own length
        "padded": step(trainer, [rows[:1], rows[1:]], div_length=16),
        "packed": step(trainer, [[packed(rows[:2])], [packed(rows[2:])]], div_length=1),
    }
    for name, (loss, weight, grads) in splits.items():
        assert weight == whole[1], name
        torch.testing.assert_close(loss, whole[0], rtol=1e-6, atol=1e-7, msg=name)
        for got, want in zip(grads, whole[2]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
