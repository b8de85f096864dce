"""The MLP speculator (IBM fms-extras formulation, as ArcticTraining trains it for vLLM/ArcticInference).

`n_predict` heads draft the tokens after the base model's next one. Head i (0-based), at position t,
sees the base model's last hidden state h_t and the tokens x_{t+1} ... x_{t+1+i}, and predicts
x_{t+2+i}:

    s_0 = h_t                      (with `scale_input`: LN_0(h_t) / sqrt(2), LN_0 without parameters)
    s_{i+1} = GELU(LN_i(proj_i(s_i) + (emb_weight / state_weight) * emb_i(x_{t+1+i})))
    logits_i = head_i(s_{i+1})

with the published constants `state_weight = 0.5 ** (0.5 / n_predict)` and
`emb_weight = sqrt((1 - state_weight**2) * inner_dim / 2)`. They keep the state's scale about
constant over the heads: the state is a running mix of the projected state and the new token.

Parameter names are those of the published checkpoints (`emb.{i}.weight`, `proj.{i}.weight`,
`head.{i}.weight`, `ln.{i}.weight`, `ln.{i}.bias`). With `tie_weights`, every head shares
`emb.0`, `head.0` and `ln.0`, and heads >= 1 share `proj.1` (`proj.0` reads the base width, so it
stays separate). Initialisation: Normal(0, 1/sqrt(inner_dim)) for embeddings, projections and
heads; LayerNorm weight 1, bias 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPSpeculator(nn.Module):
    """`n_predict` MLP heads on a base model's last hidden states (width `emb_dim`)."""

    def __init__(
        self,
        emb_dim: int,
        vocab_size: int,
        *,
        n_predict: int = 3,
        inner_dim: int = 0,
        tie_weights: bool = False,
        scale_input: bool = False,
    ):
        super().__init__()
        if n_predict < 1:
            raise ValueError(f"n_predict must be >= 1, got {n_predict}")
        if tie_weights and n_predict < 2:
            raise ValueError("tie_weights needs n_predict >= 2")
        self.n_predict = n_predict
        self.emb_dim = emb_dim
        self.inner_dim = inner_dim or emb_dim
        self.vocab_size = vocab_size
        self.tie_weights = tie_weights
        self.scale_input = scale_input
        inner = self.inner_dim
        self.emb = nn.ModuleList([nn.Embedding(vocab_size, inner) for _ in range(n_predict)])
        self.proj = nn.ModuleList(
            [nn.Linear(emb_dim if i == 0 else inner, inner, bias=False) for i in range(n_predict)]
        )
        self.head = nn.ModuleList([nn.Linear(inner, vocab_size, bias=False) for _ in range(n_predict)])
        self.ln = nn.ModuleList([nn.LayerNorm(inner, eps=1e-6) for _ in range(n_predict)])
        if scale_input:
            self.ln0 = nn.LayerNorm(emb_dim, eps=1e-6, elementwise_affine=False)
        self.state_weight = 0.5 ** (0.5 / n_predict)
        self.emb_weight = math.sqrt((1 - self.state_weight**2) * (inner / 2))
        self.activation = nn.GELU()
        if tie_weights:
            for i in range(1, n_predict):
                self.emb[i].weight = self.emb[0].weight
                self.head[i].weight = self.head[0].weight
                self.ln[i].weight = self.ln[0].weight
                self.ln[i].bias = self.ln[0].bias
                if i >= 2:
                    self.proj[i].weight = self.proj[1].weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1 / math.sqrt(self.inner_dim)
        for module in self.modules():
            if isinstance(module, nn.Embedding | nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def head_states(self, hidden: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Each head's final state `[B, T, inner_dim]` (before its output layer).

        `hidden` `[B, T, emb_dim]`: h_t for t < T; `tokens` `[B, >= T + n_predict - 1]`: tokens[:, j]
        is x_{j+1} (the input ids shifted left by one), so head i reads tokens[:, i : i + T].
        """
        steps = hidden.shape[1]
        if tokens.shape[1] < steps + self.n_predict - 1:
            raise ValueError(
                f"tokens has {tokens.shape[1]} positions; {self.n_predict} heads over {steps} need "
                f"{steps + self.n_predict - 1}"
            )
        state = self.ln0(hidden) / math.sqrt(2) if self.scale_input else hidden
        states = []
        for i in range(self.n_predict):
            z = self.emb[i](tokens[:, i : i + steps])
            state = self.proj[i](state) + (self.emb_weight / self.state_weight) * z
            state = self.activation(self.ln[i](state))
            states.append(state)
        return states

    def forward(
        self, hidden: torch.Tensor, tokens: torch.Tensor, *, return_states: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits `[n_predict, B, T, vocab]` (or, with `return_states`, `head_states`' list)."""
        states = self.head_states(hidden, tokens)
        if return_states:
            return states
        return torch.stack([self.head[i](s) for i, s in enumerate(states)], dim=0)
