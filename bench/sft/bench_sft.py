"""Arctic SFT against transformers' Trainer: same model, data, batch and machine, one run.

Each configuration runs in its own subprocess (so peak memory is its own) for a fixed number
of optimizer steps on the same tokenized data (Arctic's pipeline tokenizes and masks it once;
the Trainer gets exactly those rows). Reported: seconds per optimizer step (median, the first
steps excluded as warm-up), tokens per second (real tokens, padding excluded), peak resident
memory, and the first step's loss on the same first batch (loss parity).

    uv run --group bench python bench/sft/bench_sft.py [--steps 30] [--batch 8]

Rows: Arctic unpacked, Arctic packed, Trainer with padding (DataCollatorForSeq2Seq), and
Trainer padding-free (DataCollatorWithFlattening, transformers' own packing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_MODEL = {  # about 20M parameters with the shipped 1024-token vocabulary
    "num_hidden_layers": 6,
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
}
WARMUP_STEPS = 5


def prepare(folder: Path, samples: int) -> None:
    """The model folder (one set of initial weights for every run) and the chat data."""
    from arctic_core.testing import save_tiny_model
    from arctic_core.testing.datasets import arithmetic_conversations, write_rows

    save_tiny_model(folder / "model", "llama", seed=0, **BENCH_MODEL)
    write_rows(folder / "train.jsonl", arithmetic_conversations(samples, seed=0, max_turns=6))


def recipe(folder: Path, *, packed: bool, steps: int, batch: int) -> Path:
    path = folder / f"arctic-{'packed' if packed else 'padded'}.toml"
    path.write_text(
        f"""
type = "sft"
micro_batch_size = {batch}
train_iters = {steps}
seed = 0
[model]
name_or_path = "{folder / "model"}"
dtype = "fp32"
disable_activation_checkpoint = true
[data]
sources = ["{folder / "train.jsonl"}"]
max_length = 1024
div_length = 8
pack_samples = {str(packed).lower()}
dl_num_workers = 0
cache_dir = "{folder / "cache"}"
[optimizer]
lr = 1e-4
weight_decay = 0.0
[scheduler]
name = "constant"
warmup_ratio = 0.0
[logger]
output_dir = "{folder / ("run-packed" if packed else "run-padded")}"
progress_bar = false
"""
    )
    return path


def run_arctic(folder: Path, *, packed: bool, steps: int, batch: int) -> dict:
    path = recipe(folder, packed=packed, steps=steps, batch=batch)
    subprocess.run([sys.executable, "-m", "arctic_core", "train", str(path)], check=True)
    lines = [
        json.loads(x) for x in (folder / ("run-packed" if packed else "run-padded") / "metrics.jsonl").open()
    ]
    timed = lines[WARMUP_STEPS:]
    return {
        "first_loss": lines[0]["loss"],
        "s_per_step": statistics.median(x["seconds"] for x in timed),
        "tokens_per_s": sum(x["tokens"] for x in timed) / sum(x["seconds"] for x in timed),
        "peak_rss_gb": max(x.get("peak_memory_gb") or 0 for x in lines),
    }


def trainer_worker(folder: Path, flatten: bool, steps: int, batch: int) -> None:
    """Runs inside a subprocess: transformers' Trainer on Arctic's tokenized rows, in Arctic's order."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from arctic_core.data import DataFactory, load_tokenizer
    from arctic_core.recipe import load_recipe

    config = load_recipe(recipe(folder, packed=False, steps=steps, batch=batch)).config
    tokenizer = load_tokenizer(config)
    rows = DataFactory(config, tokenizer).train_dataset()
    generator = torch.Generator().manual_seed(config.data.seed)  # Arctic's epoch-0 order
    order = torch.randperm(len(rows), generator=generator).tolist()
    rows = rows.select(order).select_columns(["input_ids", "labels"])
    tokenizer.pad_token = tokenizer.eos_token
    collator = (
        DataCollatorWithFlattening()
        if flatten
        else DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=-100)
    )
    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    class CountingTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *args, **kwargs):
            tokens.append(
                int((inputs["labels"] != -100).sum() if flatten else inputs["attention_mask"].sum())
            )
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = AutoModelForCausalLM.from_pretrained(
        folder / "model", dtype=torch.float32, attn_implementation="sdpa"
    )
    args = TrainingArguments(
        output_dir=str(folder / "hf"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Timer()]
    )
    trainer.train()
    losses = [float(x["loss"]) for x in trainer.state.log_history if "loss" in x]
    timed = times[WARMUP_STEPS:]
    result = {
        "first_loss": losses[0],
        "s_per_step": statistics.median(timed),
        "tokens_per_s": sum(tokens[WARMUP_STEPS : WARMUP_STEPS + len(timed)]) / sum(timed),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print("RESULT " + json.dumps(result))


def run_trainer(folder: Path, *, flatten: bool, steps: int, batch: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(folder),
        "--steps",
        str(steps),
        "--batch",
        str(batch),
    ]
    if flatten:
        command.append("--flatten")
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--worker")
    parser.add_argument("--flatten", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        trainer_worker(Path(args.worker), args.flatten, args.steps, args.batch)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, args.samples)
        results = {
            "arctic, padded": run_arctic(folder, packed=False, steps=args.steps, batch=args.batch),
            "transformers Trainer, padded": run_trainer(
                folder, flatten=False, steps=args.steps, batch=args.batch
            ),
            "arctic, packed": run_arctic(folder, packed=True, steps=args.steps, batch=args.batch),
            "transformers Trainer, padding-free": run_trainer(
                folder, flatten=True, steps=args.steps, batch=args.batch
            ),
        }
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.steps} steps, micro batch {args.batch}, model ~20M params, fp32, sdpa"
    )
    print(f"{'run':<36} {'s/step':>8} {'tokens/s':>10} {'peak RSS GB':>12} {'first loss':>11}")
    for name, r in results.items():
        print(
            f"{name:<36} {r['s_per_step']:>8.3f} {r['tokens_per_s']:>10.0f} {r['peak_rss_gb']:>12.2f} "
            f"{r['first_loss']:>11.5f}"
        )


if __name__ == "__main__":
    main()
