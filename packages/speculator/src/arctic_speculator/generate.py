"""`arctic speculator generate RECIPE`: the base model answers chat prompts; its answers are the training data.

Self-distillation, as ArcticTraining does it: a speculator should predict what the base model
itself writes, so the training data is the base model's own output. This is core's synthetic
data pipeline (`arctic_core.synth.generate`, the same as `arctic data generate`) with the
speculator's `[generate]` defaults: prompts `chunks` (the templated conversation cut into
`gen_prompt_length`-token pieces) or `turns`, answered by the base model (HF `generate`, or vLLM),
`ignore_eos`, and `tokens` rows: `input_ids` = prompt + answer, `labels` = -100 on the prompt.
Shards are written aside and renamed when complete; a rerun after a kill writes exactly what an
uninterrupted run writes.

Training reads the folder as a source with `process = false` (no tokenisation); the prompt gives
the base model the context it had while writing, and only the answer is trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arctic_core.synth.local import load_model as load_base_model
from arctic_core.synth.local import stop_tokens, use_vllm
from arctic_core.synth.prompts import conversation_prompts, read_conversations
from arctic_speculator.config import SpeculatorConfig

__all__ = [
    "conversation_prompts",
    "load_base_model",
    "read_conversations",
    "run_generation",
    "stop_tokens",
    "use_vllm",
]


def run_generation(config: SpeculatorConfig, rank: int = 0, world_size: int = 1, log: Any = print) -> Path:
    """Generate this rank's shards into `[generate] output_dir`; returns the folder."""
    from arctic_core.synth.generate import run_generate

    return run_generate(config, rank, world_size, log)
