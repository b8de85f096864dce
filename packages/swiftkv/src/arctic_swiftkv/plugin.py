"""Entry point of arctic-swiftkv: the `swiftkv` method (light imports only)."""

from arctic_core.plugins import Method

swiftkv = Method(
    name="swiftkv",
    description="SwiftKV: distil a Llama/Qwen2 into its SwiftKV variant, whose prefill skips the last layers.",
    config="arctic_swiftkv.config:SwiftKVConfig",
    trainer="arctic_swiftkv.trainer:SwiftKVTrainer",
    commands="arctic_swiftkv.cli:commands",
    plan="arctic_swiftkv.plan:plan",
    core_version=">=0.1,<0.2",
)
