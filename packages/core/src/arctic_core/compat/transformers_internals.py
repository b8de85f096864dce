"""The transformers internals that arctic-swiftkv and arctic-alst rely on, each with a check.

Every package pins `transformers<6`: these are the shapes of the tested 5.x line that Arctic's
code depends on beyond transformers' documented API (SwiftKV subclasses Llama's and Qwen2's
modules and calls their mask, cache and attention helpers itself; ALST selects its own attention
function, replaces MLP modules and hooks checkpointing layers). `check_all()` runs every check
and returns the failures, each naming who relies on what and what changed; the test suite runs it
(`packages/core/tests/test_transformers_internals.py`), so a new transformers that changes
one of them fails there with that message, not somewhere deep in a training run.

Checks that need a model build a tiny random Llama in memory. The attention check registers a
probe under Arctic's own name `arctic_internals_probe` (never an existing name) and selects it on
its own tiny model only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

PROBE = "arctic_internals_probe"
HERE = "arctic_core/compat/transformers_internals.py"


class Internal(NamedTuple):
    """One internal: who relies on it, what it must look like, and the check (raises AssertionError)."""

    users: str
    expects: str
    check: Callable[[], None]


def _params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _tiny_llama(**overrides: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **overrides,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def _attention_modules() -> None:
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    for module in (llama, qwen2):
        prefix = module.__name__.rsplit("_", 1)[1].capitalize()
        for name in ("Attention", "MLP", "RMSNorm", "RotaryEmbedding", "PreTrainedModel"):
            assert hasattr(module, f"{prefix}{name}"), f"{module.__name__}.{prefix}{name} is gone"
        assert hasattr(module, "eager_attention_forward"), (
            f"{module.__name__}.eager_attention_forward is gone"
        )
        found = _params(getattr(module, f"{prefix}Attention").forward)[:5]
        assert found == ["self", "hidden_states", "position_embeddings", "attention_mask", "cache"], found
        assert _params(getattr(module, f"{prefix}Attention").__init__)[1:3] == ["config", "layer_idx"]


def _mask_and_cache() -> None:
    from transformers.cache_utils import DynamicCache
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    for function in (create_causal_mask, create_sliding_window_causal_mask):
        found = _params(function)[:5]
        assert found == ["config", "inputs_embeds", "attention_mask", "cache", "position_ids"], found
    assert all(hasattr(DynamicCache, m) for m in ("update", "get_seq_length")), "DynamicCache methods"
    assert _params(DynamicCache.update)[1:4] == ["key_states", "value_states", "layer_idx"]


def _outputs() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

    for output in (BaseModelOutputWithPast, CausalLMOutputWithPast):
        fields = set(output.__dataclass_fields__)
        assert {"cache", "hidden_states"} <= fields, f"{output.__name__} fields: {sorted(fields)}"


_seen: dict[str, Any] = {}


def _probe(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """The attention function the check registers as `arctic_internals_probe`: records, then runs sdpa."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    _seen.update(query=tuple(query.shape), mask=attention_mask, kwargs=set(kwargs))
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def _attention_interface() -> None:
    import torch
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ALL_ATTENTION_FUNCTIONS.get(PROBE) is None:
        AttentionInterface.register(PROBE, _probe)
    _seen.clear()
    model = _tiny_llama(attn_implementation="sdpa").eval()
    model.set_attn_implementation(PROBE)
    assert model.config._attn_implementation == PROBE, "set_attn_implementation ignored a registered name"
    ids, positions = torch.arange(1, 8)[None], torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    with torch.no_grad():
        model(input_ids=ids, position_ids=positions, use_cache=False)
    assert _seen.get("query") == (1, 4, 7, 8), (
        f"query reached the function as {_seen.get('query')}, not [B, H, L, D]"
    )
    assert _seen["mask"] is None, "a mask was built for an implementation without a mask function"
    assert {"dropout", "scaling", "position_ids"} <= _seen["kwargs"], f"keyword arguments: {_seen['kwargs']}"


def _checkpointing_layers() -> None:
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = _tiny_llama(attn_implementation="sdpa").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layer = model.model.layers[1]
    assert isinstance(layer, GradientCheckpointingLayer) and layer.gradient_checkpointing
    calls, saved = [0], []

    def keep(tensor: Any) -> Any:
        saved.append(tensor)
        return tensor

    def enter(_module: Any, _args: Any) -> None:
        calls[0] += 1
        context = torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t)
        context.__enter__()
        contexts.append(context)

    contexts: list[Any] = []
    layer.register_forward_pre_hook(enter)
    layer.register_forward_hook(lambda *_: contexts.pop().__exit__(None, None, None))
    model(input_ids=torch.arange(1, 9)[None], use_cache=False).logits.sum().backward()
    assert calls[0] == 1, "module hooks ran again in the recompute: the checkpoint wraps the hooks"
    grads = [t for t in saved if t.requires_grad]
    assert [tuple(t.shape) for t in grads] == [(1, 8, 32)], "a layer's saved tensors are not its input alone"


def _gated_mlp() -> None:
    mlp = _tiny_llama().model.layers[0].mlp
    for name in ("gate_proj", "up_proj", "down_proj", "act_fn"):
        assert hasattr(mlp, name), f"LlamaMLP has no {name}"


INTERNALS: tuple[Internal, ...] = (
    Internal(
        "arctic-swiftkv",
        "Llama/Qwen2 Attention, MLP, RMSNorm, RotaryEmbedding, PreTrainedModel, eager_attention_forward; "
        "Attention(config, layer_idx).forward(hidden_states, position_embeddings, attention_mask, cache, ...)",
        _attention_modules,
    ),
    Internal(
        "arctic-swiftkv",
        "create_causal_mask / create_sliding_window_causal_mask(config, inputs_embeds, attention_mask, cache, "
        "position_ids); DynamicCache.update(key_states, value_states, layer_idx), get_seq_length()",
        _mask_and_cache,
    ),
    Internal("arctic-swiftkv", "model outputs with `cache` and `hidden_states` fields", _outputs),
    Internal(
        "arctic-alst",
        "AttentionInterface.register(name, fn) + set_attn_implementation(name) on one model; fn(module, "
        "query [B, H, L, D], key, value, attention_mask=None (no mask built), dropout=, scaling=, position_ids=)",
        _attention_interface,
    ),
    Internal(
        "arctic-alst",
        "GradientCheckpointingLayer checkpoints inside the module call (hooks outside, run once) and saves "
        "only the layer input for the backward",
        _checkpointing_layers,
    ),
    Internal("arctic-alst", "gated MLPs with gate_proj, up_proj, down_proj, act_fn (LlamaMLP)", _gated_mlp),
)


def check_all() -> list[str]:
    """Run every check; one message per internal that no longer has the expected shape."""
    import transformers

    failures = []
    for internal in INTERNALS:
        try:
            internal.check()
        except Exception as exc:  # whatever the change broke, report it as that internal's
            failures.append(
                f"{internal.users} relies on transformers' {internal.expects}; transformers "
                f"{transformers.__version__} changed it ({type(exc).__name__}: {exc}): see {HERE}"
            )
    return failures
