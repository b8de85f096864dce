"""Entry points of arctic-speculator: the `speculator` method and ArcticTraining's names for it (light imports only)."""

from arctic_core.kernels import Kernel
from arctic_core.plugins import Method

HEAD_STEP = Kernel(
    name="speculator.head_step",
    doc="A head's step GELU(norm(p + alpha*e) * w + b), forward and hand-written backward, fused.",
    reference="arctic_speculator.kernels.reference:HEAD_STEP",
    triton="arctic_speculator.kernels.triton_step:HEAD_STEP",
)

speculator = Method(
    name="speculator",
    description="Speculators: train MLP/LSTM draft heads on a frozen base model (speculative decoding).",
    config="arctic_speculator.config:SpeculatorConfig",
    trainer="arctic_speculator.trainer:SpeculatorTrainer",
    plan="arctic_speculator.plan:plan",
    commands="arctic_speculator.cli:commands",
    kernels=(HEAD_STEP,),
    core_version=">=0.1,<0.2",
)

arctic_lstm_speculator = Method(
    name="arctic-lstm-speculator",
    description="ArcticTraining's recipe type for `speculator` (method sum_rnn by default).",
    config="arctic_speculator.config:ArcticLSTMSpeculatorConfig",
    trainer="arctic_speculator.trainer:ArcticLSTMSpeculatorTrainer",
    plan="arctic_speculator.plan:plan",
    kernels=(HEAD_STEP,),
    core_version=">=0.1,<0.2",
)

spec_decode = Method(
    name="spec-decode",
    description="ArcticTraining's older recipe type for `speculator` (the MLP speculator).",
    config="arctic_speculator.config:SpeculatorConfig",
    trainer="arctic_speculator.trainer:SpecDecodeTrainer",
    plan="arctic_speculator.plan:plan",
    kernels=(HEAD_STEP,),
    core_version=">=0.1,<0.2",
)
