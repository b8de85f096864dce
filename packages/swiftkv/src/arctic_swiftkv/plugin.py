"""Entry point of arctic-swiftkv: the `swiftkv` method (light imports only)."""

from arctic_core.kernels import Kernel
from arctic_core.plugins import Method

FUSED_KL = Kernel(
    name="swiftkv.fused_kl",
    doc="Distillation chunk's T^2 KL(teacher || student) and its gradient wrt the student's logits.",
    reference="arctic_swiftkv.kernels.reference:kl_value_and_grad",
    triton="arctic_swiftkv.kernels.triton_kl:kl_value_and_grad",
)

swiftkv = Method(
    name="swiftkv",
    description="SwiftKV: distil a Llama/Qwen2 into its SwiftKV variant, whose prefill skips the last layers.",
    config="arctic_swiftkv.config:SwiftKVConfig",
    trainer="arctic_swiftkv.trainer:SwiftKVTrainer",
    commands="arctic_swiftkv.cli:commands",
    plan="arctic_swiftkv.plan:plan",
    kernels=(FUSED_KL,),
    core_version=">=0.1,<0.2",
)
