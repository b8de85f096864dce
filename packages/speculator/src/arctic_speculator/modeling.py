"""Speculators: small draft heads on a frozen base model's last hidden state.

`n_predict` heads draft the tokens after the base model's next one. Head i (0-based), at position
t, sees the base model's last hidden state h_t and the tokens x_{t+1} ... x_{t+1+i}, and predicts
x_{t+2+i}. Every variant is a recurrence over the heads, `step(i, carry, token)`, started from
s_0 = h_t (with `scale_input`: norm_0(h_t) / sqrt(2), norm_0 without parameters); a = emb_weight /
state_weight with the published constants `state_weight = 0.5 ** (0.5 / n_predict)` and
`emb_weight = sqrt((1 - state_weight**2) * width / 2)`:

- MLP (IBM fms-extras, vLLM's `MLPSpeculator`): s_{i+1} = GELU(norm_i(proj_i(s_i) + a * emb_i(x)));
- `sum_rnn` (ArcticTraining): the same step, where emb, proj and norm may be multi-stage
  ("4096.4096": Linear -> norm -> GELU stages after the first);
- `sum_lstm` (ArcticTraining): four gates, each g = proj_g(s_i) + a * emb_g(x), then
  f, in, o = sigmoid(.), c_{i+1} = f * c_i + in * GELU(cell_norm(g_cell)),
  s_{i+1} = GELU(state_norm(c_{i+1})) * o, with c_0 = 0.

logits_i = head_i(s_{i+1}). The norm is fms-extras' `LayerNormParameterized` as the inference
engines run it: x * rsqrt(mean(x^2) + eps) * weight + bias (no mean subtraction; `SpeculatorNorm`).
Parameter names are those of the published checkpoints: `emb.{i}.weight`, `proj.{i}.weight`,
`head.{i}.weight`, `ln.{i}.weight|bias` (MLP); ArcticTraining's `emb.{i}.0.weight`, `proj.{i}.0.weight`,
`ln.{i}.0.weight|bias` (sum_rnn) and `{forget,input,cell,output}_emb.0.weight`,
`{gate}_proj.{0,1}.weight`, `cell_ln.0.*`, `state_ln.0.*` (sum_lstm). Tying (`tie_weights`): one
embedding, norm and output layer for every head, `proj.0` for the first head (it reads the base
width) and `proj.1` for the others.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from arctic_speculator.kernels import fused_head_step

Carry = tuple[torch.Tensor, torch.Tensor | None]
"""(state, LSTM cell or None) between two heads."""


def parse_dims(value: int | str, default: int) -> list[int]:
    """ArcticTraining's width spelling: 4096, "4096" or multi-stage "4096.4096"; 0 means `default`."""
    if isinstance(value, int):
        return [value or default]
    try:
        dims = [int(part) for part in str(value).split(".")]
    except ValueError:
        raise ValueError(f"expected an integer or integers joined by '.', got {value!r}") from None
    if not dims or any(d < 0 for d in dims):
        raise ValueError(f"expected positive widths, got {value!r}")
    return [d or default for d in dims]


class SpeculatorNorm(nn.Module):
    """fms-extras' LayerNormParameterized: x * rsqrt(mean(x^2) + eps) (* weight + bias when affine).

    Called with `emb` and `alpha` it is a head's whole step after its projection,
    GELU(norm(x + alpha * emb)), fused (`arctic_speculator.kernels`), by the implementation that
    `kernels` (the recipe's switch, set with `Speculator.use_kernels`) picks.
    """

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.dim, self.eps, self.affine = dim, eps, affine
        self.kernels = "auto"
        if affine:
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, alpha: float = 1.0) -> torch.Tensor:
        if emb is not None:
            return fused_head_step(x, emb, alpha, self.weight, self.bias, self.eps, kernels=self.kernels)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * self.weight + self.bias if self.affine else x


def _stages(first: nn.Module, dims: list[int], activation: nn.Module) -> nn.Sequential:
    """`first`, then per extra stage: norm, GELU, Linear(dims[k-1] -> dims[k]) (ArcticTraining's order)."""
    layers: list[nn.Module] = [first]
    for k in range(1, len(dims)):
        layers += [SpeculatorNorm(dims[k - 1]), activation, nn.Linear(dims[k - 1], dims[k], bias=False)]
    return nn.Sequential(*layers)


def _norm_stages(dims: list[int], activation: nn.Module) -> nn.Sequential:
    """norm(dims[0]), then per extra stage: GELU, Linear, norm (ArcticTraining's `ln` stack)."""
    layers: list[nn.Module] = [SpeculatorNorm(dims[0])]
    for k in range(1, len(dims)):
        layers += [activation, nn.Linear(dims[k - 1], dims[k], bias=False), SpeculatorNorm(dims[k])]
    return nn.Sequential(*layers)


class Speculator(nn.Module):
    """What every variant shares: the input scaling, the recurrence over heads, drafting, export."""

    model_type = "mlp_speculator"
    architecture = ""
    head: nn.ModuleList

    def __init__(self, input_hidden_dim: int, vocab_size: int, n_predict: int, scale_input: bool):
        super().__init__()
        if n_predict < 1:
            raise ValueError(f"n_predict must be >= 1, got {n_predict}")
        self.n_predict, self.input_hidden_dim, self.vocab_size = n_predict, input_hidden_dim, vocab_size
        self.scale_input = scale_input
        self.activation = nn.GELU()
        if scale_input:
            self.ln0 = SpeculatorNorm(input_hidden_dim, affine=False)
        self.state_weight = 0.5 ** (0.5 / n_predict)

    def use_kernels(self, mode: str) -> None:
        """The kernel switch (auto, torch, triton: the recipe's `kernels`) for every fused head step."""
        for module in self.modules():
            if isinstance(module, SpeculatorNorm):
                module.kernels = mode

    def set_emb_weight(self, width: int) -> None:
        self.emb_weight = math.sqrt((1 - self.state_weight**2) * (width / 2))

    @property
    def alpha(self) -> float:
        """The embedding's weight in each step: emb_weight / state_weight."""
        return self.emb_weight / self.state_weight

    def begin(self, hidden: torch.Tensor) -> Carry:
        return (self.ln0(hidden) / math.sqrt(2) if self.scale_input else hidden), None

    def step(self, i: int, carry: Carry, token: torch.Tensor) -> Carry:
        raise NotImplementedError

    @property
    def state_width(self) -> int:
        """The width of a head's final state (the output layers' input)."""
        raise NotImplementedError

    def step_flops(self, i: int) -> int:
        """Forward FLOPs of head i's step at one position: its matrix products (embeddings are lookups;
        norms, activations and gates are not counted)."""
        raise NotImplementedError

    def forward_flops(self, positions: int, scored: int) -> int:
        """Forward FLOPs of every head's step at `positions` positions and of the output layers at
        `scored` (position, head) pairs (2 x width x vocab each)."""
        steps = sum(self.step_flops(i) for i in range(self.n_predict))
        return positions * steps + scored * 2 * self.state_width * self.vocab_size

    def head_states(self, hidden: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Each head's final state `[B, T, width]` (before its output layer), teacher-forced.

        `hidden` `[B, T, H]`: h_t for t < T; `tokens` `[B, >= T + n_predict - 1]`: tokens[:, j] is
        x_{j+1} (the input ids shifted left by one), so head i reads tokens[:, i : i + T].
        """
        steps = hidden.shape[1]
        if tokens.shape[1] < steps + self.n_predict - 1:
            raise ValueError(
                f"tokens has {tokens.shape[1]} positions; {self.n_predict} heads over {steps} need "
                f"{steps + self.n_predict - 1}"
            )
        carry, states = self.begin(hidden), []
        for i in range(self.n_predict):
            carry = self.step(i, carry, tokens[:, i : i + steps])
            states.append(carry[0])
        return states

    def forward(
        self, hidden: torch.Tensor, tokens: torch.Tensor, *, return_states: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits `[n_predict, B, T, vocab]` (or, with `return_states`, `head_states`' list)."""
        states = self.head_states(hidden, tokens)
        if return_states:
            return states
        return torch.stack([self.head[i](s) for i, s in enumerate(states)], dim=0)

    @torch.no_grad()
    def draft(self, hidden: torch.Tensor, token: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Greedy draft `[B, k]` from h_t `[B, H]` and x_{t+1} `[B]`: each head reads the previous draft."""
        carry, out = self.begin(hidden), []
        for i in range(k or self.n_predict):
            carry = self.step(i, carry, token)
            token = self.head[i](carry[0]).argmax(-1)
            out.append(token)
        return torch.stack(out, dim=-1)

    def reset_parameters(self) -> None:
        """ArcticTraining's init: Normal(0, 1/sqrt(min(shape))) for embeddings and linears; norms 1, 0."""
        for module in self.modules():
            if isinstance(module, nn.Embedding | nn.Linear):
                nn.init.normal_(module.weight, 0.0, 1 / math.sqrt(min(module.weight.shape)))
            elif isinstance(module, SpeculatorNorm) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def settings(self) -> dict[str, Any]:
        """The constructor's keyword arguments (what `build_speculator` needs to rebuild it)."""
        raise NotImplementedError

    def export_config(self) -> dict[str, Any]:
        """The `config.json` fields the inference engines read for this variant."""
        raise NotImplementedError


class MLPSpeculator(Speculator):
    """`n_predict` MLP heads (fms-extras / vLLM `MLPSpeculator` layout) on hidden states of width `emb_dim`."""

    architecture = "MLPSpeculatorPreTrainedModel"

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
        super().__init__(emb_dim, vocab_size, n_predict, scale_input)
        if tie_weights and n_predict < 2:
            raise ValueError("tie_weights needs n_predict >= 2")
        self.emb_dim = emb_dim
        self.inner_dim = inner = inner_dim or emb_dim
        self.tie_weights = tie_weights
        self.emb = nn.ModuleList([nn.Embedding(vocab_size, inner) for _ in range(n_predict)])
        self.proj = nn.ModuleList(
            [nn.Linear(emb_dim if i == 0 else inner, inner, bias=False) for i in range(n_predict)]
        )
        self.head = nn.ModuleList([nn.Linear(inner, vocab_size, bias=False) for _ in range(n_predict)])
        self.ln = nn.ModuleList([SpeculatorNorm(inner) for _ in range(n_predict)])
        self.set_emb_weight(inner)
        if tie_weights:
            for i in range(1, n_predict):
                self.emb[i].weight = self.emb[0].weight
                self.head[i].weight = self.head[0].weight
                self.ln[i].weight, self.ln[i].bias = self.ln[0].weight, self.ln[0].bias
                if i >= 2:
                    self.proj[i].weight = self.proj[1].weight
        self.reset_parameters()

    def step(self, i: int, carry: Carry, token: torch.Tensor) -> Carry:
        return self.ln[i](self.proj[i](carry[0]), self.emb[i](token), self.alpha), None

    @property
    def state_width(self) -> int:
        return self.inner_dim

    def step_flops(self, i: int) -> int:
        return 2 * (self.emb_dim if i == 0 else self.inner_dim) * self.inner_dim

    def settings(self) -> dict[str, Any]:
        return {
            "method": "mlp",
            "n_predict": self.n_predict,
            "inner_dim": self.inner_dim,
            "tie_weights": self.tie_weights,
            "scale_input": self.scale_input,
        }

    def export_config(self) -> dict[str, Any]:
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "emb_dim": self.emb_dim,
            "inner_dim": self.inner_dim,
            "n_predict": self.n_predict,
            "top_k_tokens_per_head": [1] * self.n_predict,
            "n_candidates": self.n_predict,
            "tie_weights": self.tie_weights,
            "scale_input": self.scale_input,
        }


class LSTMSpeculator(Speculator):
    """ArcticTraining's `ArcticLSTMSpeculator`: `sum_rnn` or `sum_lstm` heads, its parameter names."""

    architecture = "ArcticLSTMSpeculatorPreTrainedModel"
    GATES = ("forget", "input", "cell", "output")

    def __init__(
        self,
        input_hidden_dim: int,
        vocab_size: int,
        *,
        n_predict: int = 3,
        method: str = "sum_rnn",
        inner_dim: int | str = 0,
        proj_dim: int | str = 0,
        emb_dim: int | str = 0,
        tie_weights: bool = False,
        scale_input: bool = False,
        tie_lstm_embs: bool = False,
    ):
        super().__init__(input_hidden_dim, vocab_size, n_predict, scale_input)
        self.inner = parse_dims(inner_dim, input_hidden_dim)
        self.proj_dims = parse_dims(proj_dim, self.inner[0])
        self.emb_dims = parse_dims(emb_dim, self.proj_dims[-1])
        self.method, self.tie_weights, self.tie_lstm_embs = method, tie_weights, tie_lstm_embs
        check_lstm_shape(method, self.inner, self.proj_dims, self.emb_dims, tie_weights, n_predict)
        if method == "sum_rnn":
            self._build_rnn()
        else:
            self._build_lstm()
        self.head = nn.ModuleList(
            [nn.Linear(self.inner[-1], vocab_size, bias=False) for _ in range(n_predict)]
        )
        if tie_weights:
            for head in self.head[1:]:
                head.weight = self.head[0].weight
        self.set_emb_weight(self.emb_dims[-1])
        self.reset_parameters()

    def _build_rnn(self) -> None:
        heads = 1 if self.tie_weights else self.n_predict
        projs = 2 if self.tie_weights else self.n_predict
        act, width = self.activation, self.inner[-1]
        self.emb = nn.ModuleList(
            [
                _stages(nn.Embedding(self.vocab_size, self.emb_dims[0]), self.emb_dims, act)
                for _ in range(heads)
            ]
        )
        self.proj = nn.ModuleList(
            [
                _stages(
                    nn.Linear(self.input_hidden_dim if i == 0 else width, self.proj_dims[0], bias=False),
                    self.proj_dims,
                    act,
                )
                for i in range(min(projs, self.n_predict))
            ]
        )
        self.ln = nn.ModuleList([_norm_stages(self.inner, act) for _ in range(heads)])

    def _build_lstm(self) -> None:
        width, p0 = self.inner[-1], self.proj_dims[0]
        first = nn.ModuleList([nn.Embedding(self.vocab_size, self.emb_dims[0])])
        for gate in self.GATES:
            emb = (
                first
                if self.tie_lstm_embs or gate == "forget"
                else nn.ModuleList([nn.Embedding(self.vocab_size, self.emb_dims[0])])
            )
            setattr(self, f"{gate}_emb", emb)
            projs = [nn.Linear(self.input_hidden_dim, p0, bias=False), nn.Linear(width, p0, bias=False)]
            setattr(self, f"{gate}_proj", nn.ModuleList(projs))
        self.cell_ln = nn.ModuleList([SpeculatorNorm(self.inner[0])])
        self.state_ln = nn.ModuleList([SpeculatorNorm(self.inner[0])])

    def _indices(self, i: int) -> tuple[int, int]:
        """(embedding/norm index, projection index) of head i."""
        if self.tie_weights:
            return 0, min(i, 1)
        return i, i

    def step(self, i: int, carry: Carry, token: torch.Tensor) -> Carry:
        e, p = self._indices(i)
        state, cell = carry
        if self.method == "sum_rnn":
            norm: Any = self.ln[e]
            if len(norm) == 1:  # single-stage: the fused step
                return norm[0](self.proj[p](state), self.emb[e](token), self.alpha), None
            return self.activation(norm(self.proj[p](state) + self.alpha * self.emb[e](token))), None
        parts = {}
        for gate in self.GATES:
            proj: Any = getattr(self, f"{gate}_proj")
            emb: Any = getattr(self, f"{gate}_emb")
            parts[gate] = (proj[p](state), emb[e](token))
        gates = {g: a + self.alpha * b for g, (a, b) in parts.items() if g != "cell"}
        candidate = self.cell_ln[e](*parts["cell"], self.alpha) * torch.sigmoid(gates["input"])
        cell = candidate if cell is None else cell * torch.sigmoid(gates["forget"]) + candidate
        state = self.activation(self.state_ln[e](cell)) * torch.sigmoid(gates["output"])
        return state, cell

    @property
    def state_width(self) -> int:
        return self.inner[-1]

    def step_flops(self, i: int) -> int:
        first = self.input_hidden_dim if i == 0 else self.inner[-1]
        if self.method == "sum_lstm":  # four gates, one projection each
            return 4 * 2 * first * self.proj_dims[0]
        chains = sum(
            a * b for dims in (self.proj_dims, self.emb_dims, self.inner) for a, b in itertools.pairwise(dims)
        )
        return 2 * (first * self.proj_dims[0] + chains)

    def settings(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_predict": self.n_predict,
            "inner_dim": ".".join(map(str, self.inner)),
            "proj_dim": ".".join(map(str, self.proj_dims)),
            "emb_dim": ".".join(map(str, self.emb_dims)),
            "tie_weights": self.tie_weights,
            "scale_input": self.scale_input,
            "tie_lstm_embs": self.tie_lstm_embs,
        }

    def export_config(self) -> dict[str, Any]:
        s = self.settings()
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "input_hidden_dim": self.input_hidden_dim,
            "inner_dim": s["inner_dim"],
            "proj_dim": s["proj_dim"],
            "emb_dim": s["emb_dim"],
            "vocab_size": self.vocab_size,
            "n_predict": self.n_predict,
            "n_candidates": self.n_predict,
            "top_k_tokens_per_head": [1] * self.n_predict,
            "scale_input": self.scale_input,
            "tie_weights": self.tie_weights,
            "tie_lstm_embs": self.tie_lstm_embs,
            "method": self.method,
        }


def check_lstm_shape(
    method: str, inner: list[int], proj: list[int], emb: list[int], tie_weights: bool, n_predict: int
) -> None:
    """Raise ValueError (naming the setting) for widths or options that cannot make a working LSTM speculator."""
    if method not in ("sum_rnn", "sum_lstm"):
        raise ValueError(f"method: expected sum_rnn or sum_lstm, got {method!r}")
    if proj[-1] != emb[-1]:
        raise ValueError(
            f"proj_dim ends at {proj[-1]} but emb_dim at {emb[-1]}: they are added, so must match"
        )
    if proj[-1] != inner[0]:
        raise ValueError(
            f"proj_dim ends at {proj[-1]} but speculator_width starts at {inner[0]}; they must match"
        )
    if method == "sum_lstm":
        if not tie_weights:
            raise ValueError("sum_lstm needs speculator_tie_weights = true (as ArcticTraining)")
        if len(proj) > 1 or len(emb) > 1 or len(inner) > 1:
            raise ValueError("sum_lstm takes single-stage widths (multi-stage widths are for sum_rnn)")
    if tie_weights and n_predict < 2:
        raise ValueError("tie_weights needs n_predict >= 2")


def build_speculator(input_hidden_dim: int, vocab_size: int, settings: dict[str, Any]) -> Speculator:
    """A speculator from `settings` (`Speculator.settings()` or a recipe's): method mlp, sum_rnn or sum_lstm."""
    options = dict(settings)
    method = options.pop("method", "mlp")
    if method == "mlp":
        options.pop("proj_dim", None), options.pop("emb_dim", None), options.pop("tie_lstm_embs", None)
        inner = options.pop("inner_dim", 0)
        return MLPSpeculator(input_hidden_dim, vocab_size, inner_dim=int(inner or 0), **options)
    return LSTMSpeculator(input_hidden_dim, vocab_size, method=method, **options)
