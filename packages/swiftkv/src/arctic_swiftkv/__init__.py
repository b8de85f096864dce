"""Arctic SwiftKV: SwiftKV models for Llama and Qwen2, self-distillation, a prefill that skips layers.

`import arctic_swiftkv` registers the SwiftKV configs and models with transformers' `AutoConfig`,
`AutoModel` and `AutoModelForCausalLM` (as every transformers add-on does), so that afterwards
`AutoModelForCausalLM.from_pretrained` loads SwiftKV checkpoints (ArcticTraining's and Arctic's).
That imports torch and transformers. The `arctic` command does not run this file: it reads the
package's light modules (`plugin`, `config`, `cli`) without the package root
(`arctic_core.plugins.import_light`), so `arctic --help` stays free of torch.
"""

from __future__ import annotations

from typing import Any

from arctic_swiftkv.models import (
    LlamaSwiftKVConfig,
    LlamaSwiftKVForCausalLM,
    LlamaSwiftKVModel,
    Qwen2SwiftKVConfig,
    Qwen2SwiftKVForCausalLM,
    Qwen2SwiftKVModel,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "LlamaSwiftKVConfig",
    "LlamaSwiftKVForCausalLM",
    "LlamaSwiftKVModel",
    "Qwen2SwiftKVConfig",
    "Qwen2SwiftKVForCausalLM",
    "Qwen2SwiftKVModel",
    "SwiftKVTrainer",
    "__version__",
    "register",
]


def __getattr__(name: str) -> Any:
    if name == "SwiftKVTrainer":  # the trainer pulls in deepspeed: only on use
        from arctic_swiftkv import trainer

        return trainer.SwiftKVTrainer
    raise AttributeError(f"module 'arctic_swiftkv' has no attribute {name!r}")
