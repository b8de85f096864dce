"""Entry points of arctic-sft: the `sft`, `causal` and `dpo` methods (light imports only)."""

from arctic_core.plugins import Method

CORE = ">=0.1,<0.2"

sft = Method(
    name="sft",
    description="Supervised fine-tuning on chat data, trained on assistant tokens only.",
    config="arctic_sft.config:SFTConfig",
    trainer="arctic_sft.trainer:SFTTrainer",
    core_version=CORE,
)

causal = Method(
    name="causal",
    description="Causal-LM (continued pre-)training on plain text.",
    config="arctic_sft.config:CausalConfig",
    trainer="arctic_sft.trainer:CausalTrainer",
    core_version=CORE,
)

dpo = Method(
    name="dpo",
    description="Preference tuning on chosen/rejected pairs: DPO, conservative DPO and IPO.",
    config="arctic_sft.dpo_config:DPOConfig",
    trainer="arctic_sft.dpo:DPOTrainer",
    plan="arctic_sft.plan:plan",
    core_version=CORE,
)
