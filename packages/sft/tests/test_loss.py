"""The chunked SFT loss equals transformers' loss and never builds the full logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from arctic_core.testing import tiny_model
from arctic_sft.loss import causal_lm_loss


def make_batch(rows: int = 3, length: int = 40, vocab: int = 1024, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab - 4, (rows, length), generator=generator)
    labels = input_ids.clone()
    labels[:, :10] = -100  # a prompt
    labels[1, 25:] = -100  # padding at the end of row 1
    labels[:, 0] = -100
    return {"input_ids": input_ids, "labels": labels, "position_ids": torch.arange(length).expand(rows, -1)}


def reference_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 4096])
def test_same_loss_and_gradients_as_the_plain_loss(tied, chunk_size):
    model = tiny_model("llama", seed=1, tie_word_embeddings=tied)
    batch = make_batch()
    expected = reference_loss(model, batch)
    expected.backward()
    expected_grads = grads(model)
    model.zero_grad()
    loss = causal_lm_loss(model, batch, chunk_size=chunk_size)
    loss.backward()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    got = grads(model)
    assert got.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_matches_the_models_own_loss():
    model = tiny_model("qwen2", seed=2)
    batch = make_batch(seed=3)
    own = model(**batch, use_cache=False).loss
    torch.testing.assert_close(causal_lm_loss(model, batch), own, atol=1e-6, rtol=0)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any logits-like tensor (last dim = vocab) an aten op produces."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.weight_view = (hidden, vocab)  # the output layer's transposed weight, not logits
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) == self.weight_view:
                continue
            if tensor.dim() and tensor.shape[-1] == self.vocab:
                self.largest = max(self.largest, tensor.numel())
        return out


def test_never_materialises_full_logits():
    model = tiny_model("llama", seed=0)
    batch = make_batch(rows=4, length=64)
    vocab = model.config.vocab_size
    full_logits = 4 * 64 * vocab
    chunk = 16
    with LargestTensor(vocab, model.config.hidden_size) as seen:
        causal_lm_loss(model, batch, chunk_size=chunk).backward()
    assert seen.largest <= chunk * vocab < full_logits
    with LargestTensor(vocab, model.config.hidden_size) as plain:
        reference_loss(model, batch).backward()
    assert plain.largest >= full_logits  # the check can see full logits when they exist


def test_no_trainable_token_gives_zero_loss_with_a_graph():
    model = tiny_model("llama", seed=0)
    batch = make_batch()
    batch["labels"][:] = -100
    loss = causal_lm_loss(model, batch)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
