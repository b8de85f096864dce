"""Initialisation from the teacher: norm, queries copied; each group's keys/values the group's mean."""

from __future__ import annotations

import torch
from swiftkv_support import swiftkv_pair


def test_new_parameters_start_from_the_teachers_weights():
    teacher, model = swiftkv_pair("qwen2", layers=6, n_kv=2, group=2)
    t, m = teacher.model.layers, model.model.layers
    assert torch.equal(model.model.norm_swiftkv.weight, t[2].input_layernorm.weight)
    for j in range(2, 6):
        assert torch.equal(m[j].self_attn.q_proj_swiftkv.weight, t[j].self_attn.q_proj.weight)
        assert torch.equal(m[j].self_attn.q_proj_swiftkv.bias, t[j].self_attn.q_proj.bias)
    for owner in (2, 4):
        for proj in ("k_proj", "v_proj"):
            for part in ("weight", "bias"):
                mean = (
                    getattr(getattr(t[owner].self_attn, proj), part)
                    + getattr(getattr(t[owner + 1].self_attn, proj), part)
                ) / 2
                got = getattr(getattr(m[owner].self_attn, f"{proj}_swiftkv"), part)
                torch.testing.assert_close(got, mean, atol=1e-7, rtol=0)
        assert not hasattr(m[owner + 1].self_attn, "k_proj_swiftkv")


def test_with_group_one_layer_l_kv_is_exactly_the_teachers():
    """G = 1: layer L_kv's SwiftKV path equals its teacher path, so its output is unchanged at init."""
    teacher, model = swiftkv_pair("llama", layers=4, n_kv=2, group=1)
    ids = torch.randint(3, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = teacher(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        s = model.swiftkv(True)(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(s[3], t[3], atol=1e-5, rtol=1e-5)  # output of layer 2 = L_kv
    assert (s[4] - t[4]).abs().max() > 1e-4  # layer 3 uses layer 2's input for its KV: it differs
