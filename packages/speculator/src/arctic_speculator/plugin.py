"""Entry point of arctic-speculator: the `speculator` method (light imports only)."""

from arctic_core.plugins import Method

speculator = Method(
    name="speculator",
    description="Speculators: train MLP draft heads on a frozen base model's hidden states (speculative decoding).",
    config="arctic_speculator.config:SpeculatorConfig",
    trainer="arctic_speculator.trainer:SpeculatorTrainer",
    core_version=">=0.1,<0.2",
)
