"""Entry point of arctic-rl: the `grpo` method (light imports only)."""

from arctic_core.kernels import Kernel
from arctic_core.plugins import Method

GRPO_TOKEN_LOSS = Kernel(
    name="rl.grpo_token_loss",
    doc="GRPO's per-token clipped importance-ratio loss with its k3 KL term, KL and clip indicator.",
    reference="arctic_rl.loss:token_losses",
    triton="arctic_rl.kernels.triton_loss:token_losses",
)

grpo = Method(
    name="grpo",
    description="GRPO: online RL with verifiable rewards (Dr. GRPO and DAPO variants), rollouts from the policy.",
    config="arctic_rl.config:GRPOConfig",
    trainer="arctic_rl.trainer:GRPOTrainer",
    commands="arctic_rl.cli:commands",
    kernels=(GRPO_TOKEN_LOSS,),
    core_version=">=0.1,<0.2",
)

rl = Method(
    name="rl",
    description="arctic-rl's command group: `arctic rl train|eval|verify` take grpo recipes (type rl = grpo).",
    config="arctic_rl.config:GRPOConfig",
    trainer="arctic_rl.trainer:RLTrainer",
    commands="arctic_rl.cli:commands",
    kernels=(GRPO_TOKEN_LOSS,),
    core_version=">=0.1,<0.2",
    same_as="grpo",
)
