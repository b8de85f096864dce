"""Arctic SwiftKV: SwiftKV models for Llama and Qwen2, self-distillation, a prefill that skips layers.

`import arctic_swiftkv` stays light (the `arctic` command imports it to list methods, and must not
import torch). The models and their registration with transformers' Auto classes come with
`import arctic_swiftkv.models` (or the first use of a model name from here, e.g.
`arctic_swiftkv.LlamaSwiftKVForCausalLM`, or `arctic_swiftkv.register()`); after that,
`AutoModelForCausalLM.from_pretrained` loads SwiftKV checkpoints (ArcticTraining's and Arctic's).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_MODELS = (
    "LlamaSwiftKVConfig",
    "LlamaSwiftKVForCausalLM",
    "LlamaSwiftKVModel",
    "Qwen2SwiftKVConfig",
    "Qwen2SwiftKVForCausalLM",
    "Qwen2SwiftKVModel",
    "register",
)
__all__ = [*_MODELS, "SwiftKVTrainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        from arctic_swiftkv import models

        return getattr(models, name)
    if name == "SwiftKVTrainer":
        from arctic_swiftkv import trainer

        return trainer.SwiftKVTrainer
    raise AttributeError(f"module 'arctic_swiftkv' has no attribute {name!r}")
