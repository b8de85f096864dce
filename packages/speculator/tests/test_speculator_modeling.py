"""The speculators' formulations: teacher-forcing shift, published constants, the LSTM step, tying, names, recipe keys."""

from __future__ import annotations

import math

import pytest
import torch

from arctic_speculator.modeling import LSTMSpeculator, MLPSpeculator, build_speculator


def speculator(**kwargs) -> MLPSpeculator:
    torch.manual_seed(0)
    return MLPSpeculator(16, 50, **{"n_predict": 3, "inner_dim": 24, **kwargs}).eval()


@pytest.mark.parametrize("scale_input", [False, True])
def test_head_i_at_t_depends_only_on_h_t_and_tokens_up_to_t_plus_1_plus_i(scale_input):
    spec = speculator(scale_input=scale_input)
    n, steps = spec.n_predict, 7
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, steps, 16, generator=generator)
    ids = torch.randint(0, 50, (1, steps + n + 1), generator=generator)  # input_ids x_0 ... x_{L-1}
    with torch.no_grad():
        base = spec(hidden, ids[:, 1:])
    assert base.shape == (n, 1, steps, 50)
    for t in range(steps):
        for j in range(ids.shape[1]):  # change token x_j
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 1) % 50
            with torch.no_grad():
                out = spec(hidden, changed[:, 1:])
            for i in range(n):
                same = torch.equal(out[i, 0, t], base[i, 0, t])
                # head i at t reads x_{t+1} ... x_{t+1+i} (x_{t+2+i} is its target)
                assert same == (not t + 1 <= j <= t + 1 + i), (t, j, i)
        moved = hidden.clone()
        moved[0, t] += 1.0
        with torch.no_grad():
            out = spec(moved, ids[:, 1:])
        for s in range(steps):  # only position t's outputs read h_t
            assert torch.equal(out[:, 0, s], base[:, 0, s]) == (s != t)


def test_published_constants_and_a_step_written_out():
    spec = speculator()
    sw = 0.5 ** (0.5 / 3)
    assert spec.state_weight == pytest.approx(sw)
    assert spec.emb_weight == pytest.approx(math.sqrt((1 - sw**2) * 24 / 2))
    hidden = torch.randn(2, 5, 16)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        logits = spec(hidden, ids)
        state = torch.nn.functional.linear(hidden, spec.proj[0].weight)
        state = state + spec.emb_weight / spec.state_weight * spec.emb[0].weight[ids[:, :5]]
        # fms-extras' LayerNormParameterized as vLLM runs it: no mean subtraction, eps inside the root
        normed = state / torch.sqrt(state.pow(2).mean(-1, keepdim=True) + 1e-6)
        state = torch.nn.functional.gelu(normed * spec.ln[0].weight + spec.ln[0].bias)
        expected = state @ spec.head[0].weight.T
    torch.testing.assert_close(logits[0], expected)


def test_parameter_names_and_tying():
    names = {n for n, _ in speculator().named_parameters()}
    assert names == {
        f"{part}.{i}.{w}"
        for i in range(3)
        for part, ws in (
            ("emb", ["weight"]),
            ("proj", ["weight"]),
            ("head", ["weight"]),
            ("ln", ["weight", "bias"]),
        )
        for w in ws
    }
    tied = speculator(tie_weights=True)
    assert tied.emb[2].weight is tied.emb[0].weight and tied.head[1].weight is tied.head[0].weight
    assert tied.ln[2].bias is tied.ln[0].bias and tied.proj[2].weight is tied.proj[1].weight
    assert tied.proj[1].weight is not tied.proj[0].weight
    assert tied.proj[0].weight.shape == (24, 16) and tied.proj[1].weight.shape == (24, 24)
    with pytest.raises(ValueError, match="n_predict >= 2"):
        MLPSpeculator(16, 50, n_predict=1, tie_weights=True)


def rms(x, norm):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight + norm.bias


def test_sum_lstm_heads_written_out():
    """ArcticTraining's sum_lstm: gates from proj(state) + a*emb(token), c = f*c + i*GELU(LN(cand)), s = GELU(LN(c))*o."""
    torch.manual_seed(0)
    spec = LSTMSpeculator(
        16, 50, n_predict=3, method="sum_lstm", inner_dim=24, tie_weights=True, scale_input=True
    )
    hidden, ids = torch.randn(2, 5, 16), torch.randint(0, 50, (2, 7))
    gelu, sig = torch.nn.functional.gelu, torch.sigmoid
    a = math.sqrt((1 - spec.state_weight**2) * 24 / 2) / spec.state_weight
    state = hidden / torch.sqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6) / math.sqrt(2)
    cell = torch.zeros(2, 5, 24)
    expected = []
    for i in range(3):
        p, tok = min(i, 1), ids[:, i : i + 5]
        g = {
            n: getattr(spec, f"{n}_proj")[p](state) + a * getattr(spec, f"{n}_emb")[0](tok)
            for n in spec.GATES
        }
        cell = cell * sig(g["forget"]) + gelu(rms(g["cell"], spec.cell_ln[0])) * sig(g["input"])
        state = gelu(rms(cell, spec.state_ln[0])) * sig(g["output"])
        expected.append(state @ spec.head[0].weight.T)
    with torch.no_grad():
        torch.testing.assert_close(spec(hidden, ids), torch.stack(expected).detach(), atol=1e-5, rtol=1e-5)
    assert spec.input_emb is not spec.forget_emb  # untied embeddings: four tables
    assert spec.head[2].weight is spec.head[0].weight


def test_sum_rnn_multistage_widths_and_arctictraining_parameter_names():
    spec = build_speculator(
        16,
        50,
        {
            "method": "sum_rnn",
            "n_predict": 3,
            "inner_dim": "24.20",
            "proj_dim": "24",
            "emb_dim": "24",
            "tie_weights": True,
            "scale_input": False,
        },
    )
    names = set(spec.state_dict())
    assert {
        "emb.0.0.weight",
        "proj.0.0.weight",
        "proj.1.0.weight",
        "ln.0.0.weight",
        "ln.0.2.weight",
        "ln.0.3.bias",
        "head.2.weight",
    } <= names
    assert not any(n.startswith(("emb.1", "proj.2", "ln.1")) for n in names)  # tied: one of each
    assert spec.proj[1][0].weight.shape == (24, 20) and spec.head[0].weight.shape == (50, 20)
    out = spec(torch.randn(1, 4, 16), torch.randint(0, 50, (1, 6)))
    assert out.shape == (3, 1, 4, 50)
    # emb_weight follows the embedding width, as ArcticTraining's
    assert spec.emb_weight == pytest.approx(math.sqrt((1 - spec.state_weight**2) * 24 / 2))


@pytest.mark.parametrize("method", ["mlp", "sum_rnn", "sum_lstm"])
def test_greedy_draft_equals_teacher_forcing_on_its_own_drafts(method):
    torch.manual_seed(3)
    settings = {"method": method, "n_predict": 3, "inner_dim": 24, "tie_weights": True, "scale_input": True}
    spec = build_speculator(16, 50, settings).eval()
    h, x = torch.randn(4, 16), torch.randint(0, 50, (4,))
    drafts = spec.draft(h, x)
    tokens = torch.cat([x[:, None], drafts], dim=1)  # x_{t+1}, d_1, d_2, d_3
    with torch.no_grad():
        logits = spec(h[:, None], tokens)  # one position t, heads read x_{t+1} ... x_{t+1+i}
    assert torch.equal(logits[:, :, 0].argmax(-1).T, drafts)


def test_arctictraining_recipe_spellings_and_type_alias(tmp_path):
    from arctic_core.errors import RecipeError
    from arctic_core.recipe import load_recipe
    from arctic_speculator.config import ArcticLSTMSpeculatorConfig

    recipe = tmp_path / "at.yaml"
    recipe.write_text(
        "type: arctic-lstm-speculator\nmodel:\n  name_or_path: x\n  n_speculator_heads: 2\n"
        "  speculator_width: 4096\n  speculator_tie_weights: true\n  speculator_scale_input: true\n"
        "  tie_lstm_embs: true\n  method: sum_lstm\n  proj_dim: 4096\n  emb_dim: 4096\n"
    )
    config = load_recipe(recipe, []).config
    assert isinstance(config, ArcticLSTMSpeculatorConfig)
    m = config.model
    assert (m.n_predict, m.inner_dim, m.tie_weights, m.scale_input, m.method) == (
        2,
        "4096",
        True,
        True,
        "sum_lstm",
    )
    recipe.write_text("type: arctic-lstm-speculator\nmodel:\n  name_or_path: x\n")
    assert load_recipe(recipe, []).config.model.method == "sum_rnn"  # ArcticTraining's default
    assert load_recipe(recipe, ["model.emb_dim=4096"]).config.model.emb_dim == "4096"  # inner_dim 0: base's
    for bad, key in [
        ("model.method=sum_lstm", "model.tie_weights"),
        ("model.speculator_width=oops", "model.inner_dim"),
        (("model.emb_dim=32", "model.inner_dim=64"), "model.proj_dim"),
        ("model.tie_lstm_embs=true", "model.tie_lstm_embs"),
    ]:
        with pytest.raises(RecipeError) as error:
            load_recipe(recipe, [bad] if isinstance(bad, str) else list(bad))
        assert key in str(error.value), (bad, str(error.value))


def test_step_flops_hand_count_base_forward_and_heads_at_real_lengths():
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from arctic_speculator.trainer import SpeculatorTrainer

    layers, hidden, inter, heads, kv, vocab = 2, 32, 40, 4, 2, 128
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
    )
    trainer = object.__new__(SpeculatorTrainer)  # step_flops reads only these three
    trainer.tokenizer = None
    trainer.base = SimpleNamespace(module=LlamaForCausalLM(config))
    trainer.model = MLPSpeculator(hidden, vocab, n_predict=3, inner_dim=16)
    labels = torch.tensor([[-100, -100, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, -100, -100, -100]])
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    batch = {"input_ids": torch.ones(2, 8, dtype=torch.long), "labels": labels, "attention_mask": mask}
    d = hidden // heads
    per_token = layers * (2 * hidden * (hidden + 2 * kv * d) + 2 * hidden * hidden + 6 * hidden * inter)
    base = sum(n * per_token + 2 * layers * hidden * n * (n + 1) for n in (8, 5))  # causal, no logits
    steps = 2 * hidden * 16 + 2 * (2 * 16 * 16)  # head 0 reads the base width, heads 1, 2 the inner
    positions = 6 + 3  # t < n - 2 in each sample
    scored = (6 + 5 + 4) + (3 + 2 + 1)  # head i at t scores label t + 2 + i where it is trained
    assert trainer.step_flops(batch) == base + 3 * (positions * steps + scored * 2 * 16 * vocab)
    lstm = LSTMSpeculator(hidden, vocab, n_predict=2, method="sum_lstm", tie_weights=True, inner_dim=16)
    assert [lstm.step_flops(i) for i in range(2)] == [4 * 2 * hidden * 16, 4 * 2 * 16 * 16]
    rnn = LSTMSpeculator(
        hidden, vocab, n_predict=2, method="sum_rnn", inner_dim="16.8", proj_dim=16, emb_dim=16
    )
    assert rnn.step_flops(1) == 2 * (8 * 16 + 16 * 8) and rnn.state_width == 8
