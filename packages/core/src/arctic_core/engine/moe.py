"""Mixture-of-experts models on core's engine: ZeRO-3 leaf modules, the router loss, expert load.

No expert parallelism: every rank holds (a ZeRO shard of) every expert, as for a dense model.

- **ZeRO-3 leaf modules.** A sparse MoE block runs only the experts its tokens were routed to,
  so ranks (and steps) differ in which expert weights they touch. ZeRO-3 fetches parameters per
  module, by hooks and a traced order; a block marked as a leaf (`deepspeed.utils.
  set_z3_leaf_modules`) is fetched whole on entry and released whole on exit, so every rank
  runs the same collectives whatever its routing. `FAMILIES` names each family's block class
  by `config.model_type`; `model.moe_leaf_modules` adds class names for other models. They are
  marked in the `model` setup step, before the engine is built.
- **The router loss.** Forward hooks on the family's router modules record each layer's router
  logits during the trained model's forwards inside `Trainer.loss` (not during evaluation nor
  during activation-checkpointing recomputes). The micro-batch's auxiliary load-balancing loss
  A_i is the model's own function (`load_balancing_loss_func` of its modeling module, Switch
  Transformer eq. 4-6) over those logits, padding excluded by the forward's attention mask or, in
  a packed batch (no attention mask), by the batch's `token_mask`; a
  loss hook that runs several forwards (DPO: chosen and rejected) gets the mean of theirs.
  The micro-batch's training loss becomes L_i + c·A_i, c = `model.router_aux_loss_coef` (unset:
  the model's `router_aux_loss_coef`), so the step's loss is sum_i w_i (L_i + c·A_i) / W with the
  loop's weights w_i (trainable tokens by default; `arctic_core.engine.loop`). A_i depends on
  which tokens share micro-batch i (as in transformers' own forward), not on how micro-batches
  are spread over ranks and accumulation steps: the same micro-batches give the same step on
  one rank with accumulation as on several ranks.
- **Metrics.** `aux_loss` (sum_i w_i A_i / W) and, per MoE layer, the step's expert load over
  every rank's tokens: `expert_load_max` (max over experts of tokens routed to it, divided by
  the mean) and `experts_unused` (share of experts no token chose). transformers' routers never
  drop tokens (no capacity limit), so there is no dropped-token share to report.

No family transformers ships as a causal LM defines a router z-loss (only the encoder-decoder
Switch Transformers and NLLB-MoE do), so none is added.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from arctic_core.errors import RecipeError


@attrs.frozen
class MoeFamily:
    """Where a transformers MoE family keeps its sparse block and its router."""

    block: str
    """Class name of the sparse MoE block (marked as a ZeRO-3 leaf module)."""
    router: str
    """Class name of the router module; its output `router_index` is the router logits `[tokens, experts]`."""
    router_index: int = 0
    aux_loss: bool = True
    """Whether the family trains with a load-balancing loss (`load_balancing_loss_func` in its module)."""


FAMILIES: dict[str, MoeFamily] = {
    "qwen3_moe": MoeFamily("Qwen3MoeSparseMoeBlock", "Qwen3MoeTopKRouter"),
    "qwen2_moe": MoeFamily("Qwen2MoeSparseMoeBlock", "Qwen2MoeTopKRouter"),
    "qwen3_next": MoeFamily("Qwen3NextSparseMoeBlock", "Qwen3NextTopKRouter"),
    "mixtral": MoeFamily("MixtralSparseMoeBlock", "MixtralTopKRouter"),
    "olmoe": MoeFamily("OlmoeSparseMoeBlock", "OlmoeTopKRouter"),
    "gpt_oss": MoeFamily("GptOssMLP", "GptOssTopKRouter"),
    "phimoe": MoeFamily("PhimoeSparseMoeBlock", "PhimoeTopKRouter"),
    "granitemoe": MoeFamily("GraniteMoeMoE", "GraniteMoeTopKRouter"),
    "deepseek_v3": MoeFamily("DeepseekV3MoE", "DeepseekV3TopkRouter", aux_loss=False),
}
"""MoE families by `config.model_type` (transformers 5). DeepSeek-V3 balances by a router bias
(auxiliary-loss-free), so it gets leaf modules and expert-load metrics but no aux loss."""


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The outermost transformers model in `model` (a PEFT wrapper's base model, or `model` itself)."""
    from transformers import PreTrainedModel

    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), model)


def family_of(model: torch.nn.Module) -> MoeFamily | None:
    """The MoE family of `model` (by its config's `model_type`), None for a dense model."""
    config = getattr(causal_lm(model), "config", None)
    return FAMILIES.get(getattr(config, "model_type", ""))


def mark_leaf_modules(model: torch.nn.Module, extra: Sequence[str] = ()) -> list[str]:
    """Mark the family's sparse blocks and the `extra` class names as ZeRO-3 leaf modules.

    Returns the class names marked (empty for a dense model without `extra`). A name in `extra`
    that matches no module of the model is a RecipeError (`model.moe_leaf_modules`).
    """
    from deepspeed.utils import set_z3_leaf_modules

    family = family_of(model)
    names = ([family.block] if family else []) + [n for n in extra if not family or n != family.block]
    present = {type(m).__name__ for m in model.modules()}
    missing = [n for n in extra if n not in present]
    if missing:
        raise RecipeError(
            f"no module of class {', '.join(map(repr, missing))} in {type(causal_lm(model)).__name__}",
            path="model.moe_leaf_modules",
        )
    names = [n for n in names if n in present]
    if names:
        set_z3_leaf_modules(model, names)
    return names


class RouterRecorder:
    """Records router logits of the trained model's forwards between `start()` and `take()`.

    One forward pre-hook on the transformers model (it opens a forward: the attention mask, an
    empty list of layer logits) and one forward hook per router module (it appends that layer's
    logits, with their graph). Outside `start()`/`take()`, and during activation-checkpointing
    recomputes (in backward, outside any root forward), nothing is recorded.
    """

    def __init__(self, model: torch.nn.Module, family: MoeFamily, coef: float):
        self.model: Any = causal_lm(model)
        self.family = family
        self.coef = coef
        self.num_experts = _first_int(self.model, "num_experts", "num_local_experts", "n_routed_experts")
        self.top_k = _first_int(self.model, "num_experts_per_tok")
        self.loss_function: Callable[..., Any] | None = None
        if family.aux_loss:
            module = sys.modules[type(self.model).__module__]
            self.loss_function = getattr(module, "load_balancing_loss_func", None)
            if self.loss_function is None:
                raise RecipeError(
                    f"{module.__name__} has no load_balancing_loss_func (transformers changed the family?)",
                    path="model.name_or_path",
                )
        routers = [m for m in self.model.modules() if type(m).__name__ == family.router]
        if not routers:
            raise RecipeError(
                f"{type(self.model).__name__} has no {family.router} module (transformers changed the family?)",
                path="model.name_or_path",
            )
        self.layers = len(routers)
        self.recording = False
        self.in_forward = False
        self.forwards: list[tuple[torch.Tensor | None, list[torch.Tensor]]] = []
        self.step_counts = torch.zeros(self.layers, self.num_experts, dtype=torch.float64)
        self.handles = [self.model.register_forward_pre_hook(self._open, with_kwargs=True)]
        self.handles.append(self.model.register_forward_hook(self._close))
        self.handles += [r.register_forward_hook(self._keep) for r in routers]

    def _open(self, _: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.in_forward = True
        if self.recording:
            self.forwards.append((kwargs.get("attention_mask"), []))

    def _close(self, *_: Any) -> None:
        self.in_forward = False

    def _keep(self, _: Any, __: Any, output: Any) -> None:
        if self.recording and self.in_forward and self.forwards:
            logits = output if isinstance(output, torch.Tensor) else output[self.family.router_index]
            self.forwards[-1][1].append(logits)

    def start(self) -> None:
        """Record the forwards from now until `take()`."""
        self.forwards, self.recording = [], True

    def take(self, token_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Stop recording; the recorded forwards' mean aux loss A_i (None when nothing was recorded).

        Adds each forward's tokens per expert and layer (padding excluded) to the step's counts.
        Padding is what the forward's attention mask excludes, else `token_mask` (a packed batch's
        real tokens) when it has one entry per routed token.
        """
        self.recording = False
        forwards, self.forwards = self.forwards, []
        losses = []
        for mask, logits in forwards:
            if not logits:
                continue
            if mask is None and token_mask is not None and token_mask.numel() == logits[0].shape[0]:
                mask = token_mask
            self.step_counts += expert_counts(logits, self.top_k, self.num_experts, mask)
            if self.loss_function is not None:
                losses.append(self.loss_function(tuple(logits), self.num_experts, self.top_k, mask))
        if not losses:
            return None
        return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in losses]).mean()

    def step_metrics(self, all_reduce_sum: Callable[[list[float]], list[float]]) -> dict[str, Any]:
        """The step's expert load over every rank (a collective), then a fresh count for the next step."""
        counts = torch.tensor(all_reduce_sum(self.step_counts.flatten().tolist()), dtype=torch.float64)
        self.step_counts.zero_()
        return expert_load(counts.view(self.layers, self.num_experts))

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self.handles:
            handle.remove()


def _first_int(model: Any, *names: str) -> int:
    """The first of `names` set on the model or its config (families name the expert count differently)."""
    for source in (model, model.config):
        for name in names:
            value = getattr(source, name, None)
            if isinstance(value, int) and value > 0:
                return value
    raise RecipeError(f"{type(model).__name__} sets none of {', '.join(names)}", path="model.name_or_path")


def expert_counts(
    logits: Sequence[torch.Tensor], top_k: int, num_experts: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Tokens routed to each expert, per layer `[layers, experts]` (float64), padding excluded.

    Top-k of the logits is top-k of the routing probabilities (softmax is monotone).
    """
    rows = []
    for layer in logits:
        chosen = torch.topk(layer.detach(), top_k, dim=-1).indices
        weights = torch.ones_like(chosen, dtype=torch.float64)
        if mask is not None:
            weights = weights * mask.reshape(-1, 1).to(weights)
        counts = torch.zeros(num_experts, dtype=torch.float64, device=chosen.device)
        rows.append(counts.scatter_add_(0, chosen.reshape(-1), weights.reshape(-1)).cpu())
    return torch.stack(rows)


def expert_load(counts: torch.Tensor) -> dict[str, Any]:
    """Per layer, from tokens per expert `[layers, experts]`: max/mean load and the unused experts' share."""
    mean = counts.mean(dim=1)
    ratio = torch.where(mean > 0, counts.max(dim=1).values / mean.clamp(min=1e-12), torch.zeros_like(mean))
    unused = (counts == 0).double().mean(dim=1)
    return {
        "expert_load_max": [round(float(v), 4) for v in ratio],
        "experts_unused": [round(float(v), 4) for v in unused],
    }


def router_coefficient(model: torch.nn.Module, override: float | None) -> float:
    """c: the recipe's `model.router_aux_loss_coef`, else the model's own (0 when it has none)."""
    if override is not None:
        return float(override)
    inner = causal_lm(model)
    value = getattr(inner, "router_aux_loss_coef", None)
    if value is None:
        value = getattr(inner.config, "router_aux_loss_coef", 0.0)
    return float(value or 0.0)


def prepare_moe(model: torch.nn.Module, config: Any, log: Any) -> RouterRecorder | None:
    """The `model` setup step's MoE part: leaf modules marked, and the router recorder (None if dense).

    `config` is the recipe's `[model]` table. Logs what it did.
    """
    leaves = mark_leaf_modules(model, config.moe_leaf_modules)
    family = family_of(model)
    if leaves:
        log.info("ZeRO-3 leaf modules: %s", ", ".join(leaves))
    if family is None:
        return None
    coef = router_coefficient(model, config.router_aux_loss_coef)
    recorder = RouterRecorder(model, family, coef)
    log.info(
        "MoE: %d layers of %d experts (top %d), router aux loss coefficient %g%s",
        recorder.layers,
        recorder.num_experts,
        recorder.top_k,
        coef,
        "" if family.aux_loss else " (this family has no aux loss)",
    )
    return recorder


def loss_with_router(recorder: RouterRecorder | None, loss: Callable[[Any], Any], batch: Any) -> Any:
    """`loss(batch)` as a `LossOutput`, plus c·A_i and the `aux_loss` metric when `recorder` is set."""
    from arctic_core.engine.loop import LossOutput, as_loss_output

    if recorder is None:
        return as_loss_output(loss(batch))
    recorder.start()
    try:
        out = as_loss_output(loss(batch))
    finally:
        aux = recorder.take(batch.get("token_mask") if isinstance(batch, dict) else None)
    if aux is None:
        return out
    total = out.loss + recorder.coef * aux.to(out.loss) if recorder.coef else out.loss
    return LossOutput(total, out.weight, {**out.metrics, "aux_loss": aux.detach()})
