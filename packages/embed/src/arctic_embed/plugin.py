"""Entry points of arctic-embed: the `embed` method and ArcticTraining's `biencoder` alias (light imports only)."""

from arctic_core.kernels import Kernel
from arctic_core.plugins import Method

CORE = ">=0.1,<0.2"

INFONCE = Kernel(
    name="embed.infonce",
    doc="One block of the chunked InfoNCE: masked scores' logsumexp, and dq, dd recomputed in backward.",
    reference="arctic_embed.kernels.infonce:TORCH_BLOCK",
    triton="arctic_embed.kernels.infonce:TRITON_BLOCK",
)

embed = Method(
    name="embed",
    description="Contrastive bi-encoder (embedding model) training; hard-negative mining and retrieval eval.",
    config="arctic_embed.config:EmbedConfig",
    trainer="arctic_embed.trainer:EmbedTrainer",
    commands="arctic_embed.cli:commands",
    kernels=(INFONCE,),
    core_version=CORE,
)

biencoder = Method(
    name="biencoder",
    description="ArcticTraining's name for the `embed` method (same config and trainer).",
    config="arctic_embed.config:BiencoderConfig",
    trainer="arctic_embed.trainer:BiencoderTrainer",
    commands="arctic_embed.cli:commands",
    kernels=(INFONCE,),
    core_version=CORE,
    same_as="embed",
)
