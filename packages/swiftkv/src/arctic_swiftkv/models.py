"""The SwiftKV models, registered with AutoConfig / AutoModel / AutoModelForCausalLM on import."""

from arctic_swiftkv.configuration import LlamaSwiftKVConfig, Qwen2SwiftKVConfig
from arctic_swiftkv.modeling import (
    LlamaSwiftKVForCausalLM,
    LlamaSwiftKVModel,
    Qwen2SwiftKVForCausalLM,
    Qwen2SwiftKVModel,
    register,
)

register()

__all__ = [
    "LlamaSwiftKVConfig",
    "LlamaSwiftKVForCausalLM",
    "LlamaSwiftKVModel",
    "Qwen2SwiftKVConfig",
    "Qwen2SwiftKVForCausalLM",
    "Qwen2SwiftKVModel",
    "register",
]
