"""Initialising the SwiftKV parameters from the teacher's own weights, as the paper does (ZeRO-3 safe).

- `norm_swiftkv` <- layer L_kv's `input_layernorm` (h' then equals what layer L_kv's attention saw);
- each layer j >= L_kv: `q_proj_swiftkv` <- its `q_proj`;
- each AcrossKV group: `k_proj_swiftkv`/`v_proj_swiftkv` <- the mean of the group's `k_proj`/`v_proj`
  (weights and biases).

Under ZeRO-3 every rank calls this; each destination is gathered with its sources, written on rank 0
and broadcast (`arctic_core.gather`), so at most one group's parameters are whole at a time.
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_core.gather import gathered_parameters, init_parameters_from
from arctic_swiftkv.modeling import kv_owner

SWIFTKV_PARAMETERS = ("*_swiftkv.*",)
"""Glob patterns of the parameters SwiftKV adds (and trains)."""


def _mean_into(dst: torch.nn.Parameter, sources: list[torch.nn.Parameter], zero3: bool) -> None:
    with gathered_parameters([dst, *sources], enabled=zero3, modifier_rank=0), torch.no_grad():
        dst.copy_(torch.stack([s.detach() for s in sources]).mean(dim=0))


def initialise_swiftkv(model: Any, *, zero3: bool) -> None:
    """Copy the teacher's weights into the SwiftKV parameters of `model` (a SwiftKV causal LM)."""
    config, layers = model.config, model.model.layers
    n_kv = config.num_key_value_layers
    init_parameters_from(
        model.model.norm_swiftkv.parameters(), layers[n_kv].input_layernorm.parameters(), zero3=zero3
    )
    for j in range(n_kv, config.num_hidden_layers):
        attn = layers[j].self_attn
        init_parameters_from(attn.q_proj_swiftkv.parameters(), attn.q_proj.parameters(), zero3=zero3)
        if kv_owner(config, j) != j:
            continue
        group = [layers[i].self_attn for i in range(j, j + config.key_value_group_size)]
        for name in ("k_proj", "v_proj"):
            for param_name, dst in getattr(attn, f"{name}_swiftkv").named_parameters():
                sources = [getattr(a, name).get_parameter(param_name) for a in group]
                _mean_into(dst, sources, zero3)
