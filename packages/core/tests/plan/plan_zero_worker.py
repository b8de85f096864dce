"""Measures DeepSpeed ZeRO steps in its own process (a process group must not leak into the suite).

Argument: JSON `{"model": LlamaConfig kwargs, "cases": [[sequence, micro batch, checkpointing, ds_config], ...]}`.
Prints one JSON line per case with the measured peak bytes.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from arctic_core.engine.distributed import init_distributed
from arctic_core.engine.model import enable_activation_checkpointing
from arctic_core.plan.measure import measure_deepspeed_step


def main(job: dict) -> None:
    init_distributed()
    for sequence, micro_batch, checkpointing, ds_config in job["cases"]:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**job["model"])).float()
        if checkpointing:
            enable_activation_checkpointing(model)
        peak = measure_deepspeed_step(model, ds_config, micro_batch=micro_batch, sequence=sequence)
        print(json.dumps({"peak": peak}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
