"""SwiftKV configs: a Llama or Qwen2 config plus three keys, in ArcticTraining's checkpoint layout.

`swiftkv` (bool) turns the SwiftKV forward on; `num_key_value_layers` (L_kv) is how many layers,
from the first, keep their own keys and values; `key_value_group_size` (G) is how many consecutive
later layers share one key/value projection (AcrossKV). `(L - L_kv) % G == 0` is required.
`model_type` is `llama_swiftkv` / `qwen2_swiftkv`, as in ArcticTraining's published SwiftKV models.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

SWIFTKV_KEYS = ("swiftkv", "num_key_value_layers", "key_value_group_size")


def check_swiftkv_shape(num_layers: int, num_kv_layers: int, group_size: int) -> None:
    """Raise ValueError unless 1 <= L_kv <= L, G >= 1 and (L - L_kv) is a multiple of G."""
    if not 1 <= num_kv_layers <= num_layers:
        raise ValueError(
            f"num_key_value_layers must be between 1 and num_hidden_layers ({num_layers}), got {num_kv_layers}"
        )
    if group_size < 1:
        raise ValueError(f"key_value_group_size must be >= 1, got {group_size}")
    if (num_layers - num_kv_layers) % group_size:
        raise ValueError(
            f"(num_hidden_layers - num_key_value_layers) = ({num_layers} - {num_kv_layers}) must be a multiple "
            f"of key_value_group_size ({group_size})"
        )


def _finish(config: Any) -> None:
    if config.num_key_value_layers is None:
        config.num_key_value_layers = config.num_hidden_layers
    if config.key_value_group_size is None:
        config.key_value_group_size = 1
    check_swiftkv_shape(config.num_hidden_layers, config.num_key_value_layers, config.key_value_group_size)


class LlamaSwiftKVConfig(LlamaConfig):
    """A Llama config with SwiftKV's keys (`swiftkv`, `num_key_value_layers`, `key_value_group_size`)."""

    model_type = "llama_swiftkv"
    swiftkv: bool = False
    num_key_value_layers: int | None = None
    key_value_group_size: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        _finish(self)


class Qwen2SwiftKVConfig(Qwen2Config):
    """A Qwen2 config with SwiftKV's keys (`swiftkv`, `num_key_value_layers`, `key_value_group_size`)."""

    model_type = "qwen2_swiftkv"
    swiftkv: bool = False
    num_key_value_layers: int | None = None
    key_value_group_size: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        _finish(self)


SWIFTKV_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaSwiftKVConfig,
    "llama_swiftkv": LlamaSwiftKVConfig,
    "qwen2": Qwen2SwiftKVConfig,
    "qwen2_swiftkv": Qwen2SwiftKVConfig,
}


def to_swiftkv_config(
    config: PretrainedConfig, num_key_value_layers: int | None = None, key_value_group_size: int | None = None
) -> PretrainedConfig:
    """The SwiftKV config of a Llama/Qwen2 (or SwiftKV) config; given L_kv and G replace the stored ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SWIFTKV_CONFIGS:
        supported = ", ".join(sorted(SWIFTKV_CONFIGS))
        raise ValueError(f"SwiftKV supports model types {supported}; this model is {model_type!r}")
    values = config.to_dict()
    values.pop("model_type", None)
    values.pop("architectures", None)
    if num_key_value_layers is not None:
        values["num_key_value_layers"] = num_key_value_layers
    if key_value_group_size is not None:
        values["key_value_group_size"] = key_value_group_size
    return SWIFTKV_CONFIGS[model_type].from_dict(values)
