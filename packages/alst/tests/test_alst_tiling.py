"""Tiled MLP and activation-checkpoint offload each give the loss and gradients of the plain model."""

from __future__ import annotations

import copy

import pytest
import torch

from arctic_alst.offload import offload_checkpoints
from arctic_alst.tiling import TiledMLP, tile_count, tile_mlps
from arctic_core import losses
from arctic_core.testing import tiny_model


def loss_and_grads(model, batch):
    loss = losses.causal_lm_loss(model, batch, chunk_size=16)
    loss.backward()
    return float(loss.detach()), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def sample_batch(vocab: int, length: int = 150) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, length), generator=g)
    labels = ids.clone()
    labels[:, :20] = -100
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(length).expand(2, length)}


@pytest.mark.parametrize("change", ["tiled_mlp", "offload", "both"])
def test_tiled_mlp_and_offload_keep_loss_and_gradients(change):
    plain = tiny_model("llama", seed=1, attention_dropout=0.0).train()
    model = copy.deepcopy(plain)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if change in ("tiled_mlp", "both"):
        assert tile_mlps(model) == 2
        assert tile_count(150, 64, torch.device("cpu")) == 3  # 150 tokens per row, hidden 64: 3 tiles
    if change in ("offload", "both"):
        assert len(offload_checkpoints(model)) == 4  # a pre-hook and a hook on each of the 2 decoder layers
    batch = sample_batch(plain.config.vocab_size)
    expected_loss, expected = loss_and_grads(plain, batch)
    loss, got = loss_and_grads(model, batch)
    assert loss == pytest.approx(expected_loss, abs=1e-6)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_tiled_mlp_runs_the_mlp_in_tiles():
    model = tiny_model("llama", seed=1)
    names = [name for name, _ in model.named_parameters()]
    tile_mlps(model)
    assert [name for name, _ in model.named_parameters()] == names  # the checkpoint's keys stay
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp, TiledMLP) and "forward" not in vars(
        mlp
    )  # a module in its place, no patched method
    seen = []
    mlp.gate_proj.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[-2]))
    x = torch.randn(1, 150, 64, requires_grad=True)
    mlp(x).sum().backward()
    assert seen == [50, 50, 50] * 2  # three tiles forward, three recomputed in the backward


def test_offload_moves_each_layer_input_alone_and_leaves_checkpointing_intact(monkeypatch):
    """What the offload hooks hand to the CPU copy: each checkpointed layer's input, nothing from
    inside a layer (those activations are still dropped and recomputed), nothing once removed."""
    from arctic_alst import offload

    model = tiny_model("llama", seed=1, attention_dropout=0.0).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    handles = offload_checkpoints(model)
    packed: list[tuple[int, ...]] = []
    pack = offload._pack

    def recording(x):
        if x.requires_grad:
            packed.append(tuple(x.shape))
        return pack(x)

    monkeypatch.setattr(offload, "_pack", recording)
    batch = sample_batch(model.config.vocab_size)
    loss_and_grads(model, batch)
    assert packed == [(2, 150, 64)] * 2  # the two decoder layers' inputs, in the forward only
    for handle in handles:
        handle.remove()
    packed.clear()
    loss_and_grads(model, batch)
    assert packed == []
