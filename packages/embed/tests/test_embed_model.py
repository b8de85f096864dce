"""Pooling, normalisation, chunked (checkpointed) embedding, several encoder families."""

from __future__ import annotations

import pytest
import torch
from embed_support import save_tiny_encoder
from transformers import AutoModel

from arctic_embed.modeling import embed_texts, encode, normalize, pool


def test_pooling_against_explicit_loops():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # right, full, left padding
    assert torch.equal(pool(hidden, mask, "first_token"), hidden[:, 0])
    for b in range(3):
        kept = [hidden[b, i] for i in range(5) if mask[b, i]]
        torch.testing.assert_close(pool(hidden, mask, "mean")[b], torch.stack(kept).mean(0))
        last = max(i for i in range(5) if mask[b, i])
        torch.testing.assert_close(pool(hidden, mask, "last_token")[b], hidden[b, last])
    e = normalize(hidden[:, 0] * 3.0, dim=2)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(e, hidden[:, 0, :2] / hidden[:, 0, :2].norm(dim=-1, keepdim=True))


@pytest.mark.parametrize(
    ("arch", "pooling"), [("bert", "first_token"), ("modernbert", "mean"), ("llama", "last_token")]
)
def test_encoders_embed_and_padding_does_not_change_embeddings(tmp_path, arch, pooling):
    model = AutoModel.from_pretrained(save_tiny_encoder(tmp_path / arch, arch, seed=1)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, 0, 0]])
    alone = encode(model, ids, torch.ones_like(ids), pooling)
    with_pad = encode(model, padded, torch.tensor([[1, 1, 1, 1, 0, 0]]), pooling)
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=1e-5)


def test_checkpointed_chunks_give_the_same_embeddings_and_gradients(encoder_dir):
    model = AutoModel.from_pretrained(encoder_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 500, (7, 9), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([9, 3, 5, 2, 9, 4, 3]):  # uneven lengths, out of order
        mask[row, length:] = 0
    weights = torch.randn(7, 64, generator=g)
    widths: list[int] = []
    hook = model.embeddings.register_forward_hook(lambda m, args, out: widths.append(out.shape[1]))

    def grads(chunk):
        model.zero_grad()
        out = embed_texts(model, ids, mask, "mean", chunk_size=chunk)
        (out * weights).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole, g_whole = grads(0)
    widths.clear()
    chunked, g_chunked = grads(3)
    hook.remove()
    # longest rows first, each chunk cut to its own longest (forward; the backward recomputes in reverse)
    assert widths == [9, 4, 2, 2, 4, 9]
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)  # and back in the rows' order
    assert len(g_whole) == len(g_chunked) > 0
    for a, b in zip(g_chunked, g_whole):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_step_flops_hand_count_bidirectional_encoder_real_lengths_no_output_layer():
    from transformers import BertConfig, BertModel

    from arctic_embed.trainer import EmbedTrainer

    layers, hidden, inter = 2, 32, 48
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=inter,
        vocab_size=90,
    )
    trainer = object.__new__(EmbedTrainer)  # step_flops reads only the model and the tokenizer
    trainer.model, trainer.tokenizer = BertModel(config), None
    batch = {
        "query_input_ids": torch.zeros(2, 6, dtype=torch.long),
        "query_attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]),
        "document_input_ids": torch.zeros(3, 7, dtype=torch.long),
        "document_attention_mask": torch.tensor([[1] * 4 + [0] * 3, [0] * 7, [1] * 7]),
    }
    # per token and layer: q, k, v, o (4 H^2 weights) and the 2-matrix MLP (2 H I), 2 FLOPs each;
    # full attention: scores and values, 2 x 2 x H x n^2 per layer
    forward = sum(
        n * layers * (8 * hidden**2 + 4 * hidden * inter) + 4 * layers * hidden * n * n for n in (3, 5, 4, 7)
    )
    assert trainer.step_flops(batch) == 3 * forward
