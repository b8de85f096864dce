"""The MLP speculator's formulation: teacher-forcing shift, published constants, tying, key names."""

from __future__ import annotations

import math

import pytest
import torch

from arctic_speculator.modeling import MLPSpeculator


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
        state = torch.nn.functional.gelu(
            torch.nn.functional.layer_norm(state, (24,), spec.ln[0].weight, spec.ln[0].bias, 1e-6)
        )
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
