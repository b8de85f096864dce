"""The planner against measured DeepSpeed ZeRO-1/2/3 steps (one rank, CPU, fp32): within 20%.

The ZeRO optimizers' fp32 partition copies, flat gradient partitions, reduce bucket and ZeRO-3's
gathered layers are what this adds over `test_plan_calibration.py`'s plain steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import LlamaConfig

from arctic_core.plan.estimate import PlanSetup, estimate
from arctic_core.plan.shape import ModelShape

HERE = Path(__file__).parent
SMALL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=8192, attn_implementation="sdpa", tie_word_embeddings=False)  # fmt: skip
CASES = [
    (1, 256, 1, False),
    (2, 1024, 2, False),
    (3, 1024, 2, True),
]  # stage, sequence, micro batch, checkpointing


def ds_config(stage: int, micro_batch: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": stage,
            "reduce_bucket_size": 2_000_000,
            "stage3_prefetch_bucket_size": 500_000,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
    }


def test_zero_stages_within_20_percent_of_measured() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = {"model": SMALL, "cases": [[seq, mbs, ck, ds_config(stage, mbs)] for stage, seq, mbs, ck in CASES]}
    result = subprocess.run(
        [sys.executable, str(HERE / "plan_zero_worker.py"), json.dumps(job)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    peaks = [json.loads(line)["peak"] for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(peaks) == len(CASES)
    shape = ModelShape.from_hf_config(LlamaConfig(**SMALL))
    for (stage, sequence, micro_batch, checkpointing), measured in zip(CASES, peaks, strict=True):
        setup = PlanSetup(
            shape=shape, dtype="fp32", micro_batch=micro_batch, sequence=sequence, checkpointing=checkpointing,
            zero_stage=stage, parameters=shape.parameters(), trainable=shape.parameters(),
            deepspeed=ds_config(stage, micro_batch), device_overheads=False,
        )  # fmt: skip
        estimated = estimate(setup).peak
        error = (estimated - measured) / measured
        print(f"ZeRO-{stage} seq {sequence} mbs {micro_batch} ckpt {checkpointing}: "
              f"measured {measured / 2**20:.2f} MiB, estimated {estimated / 2**20:.2f} MiB, {error:+.1%}")  # fmt: skip
        assert abs(error) <= 0.20, (stage, sequence, micro_batch, checkpointing, error)
