"""The longest sequence that trains one step within a peak-memory budget, feature by feature.

    uv run python bench/alst/bench_alst.py [--budget-gib 2.0] [--vocab 32000]

A Llama-architecture model with random weights (2 layers, hidden 128, 4 heads, intermediate 512,
Llama-2's 32,000-token vocabulary, fp32, sdpa, activation checkpointing on), one row of L random
tokens, one optimizer step through a DeepSpeed engine (ZeRO-2, torch AdamW). Each trial runs in
its own process; a watchdog thread ends it (exit 3) as soon as its resident memory passes the
budget, and its peak resident memory (ru_maxrss) is reported. The search doubles L from 256 until
a trial fails (or passes --max-length), then bisects until the bracket is within 25%. The
offload configuration is left out by default: on a CPU it changes nothing (`--configs` adds it). Configurations, each adding one feature:

1. plain: transformers' own loss (`model(..., labels=...)`: full fp32 logits);
2. + tiled loss: `arctic_core.losses.causal_lm_loss` (the head and loss over chunks of 4096 rows);
3. + tiled MLP (`tiled_mlp_compute`);
4. + activation offload (`activation_checkpoint_cpu_offload`; on CPU the input already lives in
   CPU memory, so this changes nothing here);
5. + Ulysses sp=2: two CPU ranks (gloo), each holding half of every sequence; the budget applies to
   each rank's process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

CONFIGS = ["plain", "tiled_loss", "tiled_mlp", "offload", "sp2"]
CHUNK = 512  # rows per chunk of the tiled loss: 512 x vocab fp32 logits at a time
LABELS = {
    "plain": "plain HF + ZeRO-2",
    "tiled_loss": "+ tiled logits/loss",
    "tiled_mlp": "+ tiled MLP",
    "offload": "+ activation offload",
    "sp2": "+ Ulysses sp=2 (per rank)",
}


def watchdog(budget: int) -> None:
    page = os.sysconf("SC_PAGE_SIZE")

    def watch() -> None:
        while True:
            with open("/proc/self/statm") as f:
                if int(f.read().split()[1]) * page > budget:
                    os._exit(3)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def trial(config: str, length: int, budget: int, vocab: int) -> None:
    """One training step at `length` tokens; prints this process's peak RSS in bytes."""
    watchdog(budget)
    from arctic_core.engine import distributed

    distributed.init_distributed(None)  # one rank in memory, or the ranks torchrun started
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from arctic_core import losses

    sp = 2 if config == "sp2" else 1
    rank = dist.get_rank()
    model_config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=vocab, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1 << 20, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    step = CONFIGS.index(config)
    if step >= 2:
        from arctic_alst.tiling import tile_mlps

        tile_mlps(model)
    if step >= 3:
        from arctic_alst.offload import offload_checkpoints

        offload_checkpoints(model)
    if sp > 1:
        from arctic_alst import ulysses

        ulysses.enable(model, dist.group.WORLD, sp)
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, dist_init_required=False
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, length), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(length)[None]}
    batch["labels"][0, 0] = -100
    if sp > 1:
        from arctic_alst.sharding import shard_batch

        batch = shard_batch(batch, sp, rank)
    if step == 0:
        loss = engine(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
    else:
        loss = losses.causal_lm_loss(engine.module, batch, call=engine, chunk_size=CHUNK)
    engine.backward(loss)
    engine.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rank": rank, "peak": peak, "loss": float(loss)}), flush=True)


def run_trial(config: str, length: int, budget: int, vocab: int) -> tuple[bool, float]:
    """(fits, peak GiB of the largest rank) for one trial in fresh processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    args = [
        __file__,
        "--trial",
        config,
        "--length",
        str(length),
        "--budget",
        str(budget),
        "--vocab",
        str(vocab),
    ]
    if config == "sp2":
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29611",
            *args,
        ]
    else:
        command = [sys.executable, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    peaks = [json.loads(line)["peak"] for line in done.stdout.splitlines() if line.startswith("{")]
    fits = done.returncode == 0 and len(peaks) == (2 if config == "sp2" else 1)
    return fits, max(peaks) / 2**30 if peaks else float("nan")


def longest(config: str, budget: int, vocab: int, start: int, step: int, cap: int) -> tuple[int, float]:
    """The longest length that fits (to within 25%), by doubling then bisection; `cap` at most."""
    good, good_peak, bad = 0, float("nan"), None
    length = start
    while bad is None and length <= cap:
        fits, peak = run_trial(config, length, budget, vocab)
        print(f"  {config:10s} L={length:7d} {'fits' if fits else 'over'} (peak {peak:.2f} GiB)", flush=True)
        if fits:
            good, good_peak, length = length, peak, length * 2
        else:
            bad = length
    if bad is None:
        return good, good_peak
    while bad - good > step and bad > 1.25 * good:
        length = (good + bad) // 2 // step * step
        fits, peak = run_trial(config, length, budget, vocab)
        print(f"  {config:10s} L={length:7d} {'fits' if fits else 'over'} (peak {peak:.2f} GiB)", flush=True)
        if fits:
            good, good_peak = length, peak
        else:
            bad = length
    return good, good_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-gib", type=float, default=2.0)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--configs", default="plain,tiled_loss,tiled_mlp,sp2")
    parser.add_argument("--max-length", type=int, default=65536)
    parser.add_argument("--trial")
    parser.add_argument("--length", type=int)
    parser.add_argument("--budget", type=int)
    args = parser.parse_args()
    if args.trial:
        trial(args.trial, args.length, args.budget, args.vocab)
        return
    budget = int(args.budget_gib * 2**30)
    results, start = {}, 256
    for config in args.configs.split(","):
        results[config] = longest(config, budget, args.vocab, start, 256, args.max_length)
        start = 1024
    base = results.get("plain", (0, 0))[0] or 1
    print(f"\nbudget {args.budget_gib} GiB peak RSS per process, vocab {args.vocab}\n")
    print("| configuration | longest sequence (tokens) | peak RSS at it (GiB) | x plain |")
    print("| --- | ---: | ---: | ---: |")
    for config, (length, peak) in results.items():
        print(f"| {LABELS[config]} | {length:,} | {peak:.2f} | {length / base:.1f} |")


if __name__ == "__main__":
    main()
