"""Arctic SFT against transformers' Trainer: same model, data, batch and machine, one run, interleaved.

The issue-13 setup: a 4-layer, 256-wide Llama (tied embeddings, intermediate 1024, 4 heads), fp32,
sdpa, multi-turn chat samples of about 100 tokens (Arctic's pipeline tokenizes and masks them once; the
Trainer gets exactly those rows in Arctic's order), micro batch 4, constant LR. Arctic runs with its
defaults otherwise (activation checkpointing auto, fused loss, padding to the longest sample rounded up to 8, 2 loader workers),
through its own command line. Vocabularies 1K, 49K and 128K: the model's output layer has that many
rows (the shipped 1,024-token tokenizer feeds it; the head's cost is the vocabulary's, whatever ids
occur).

Modes: `padded` (Arctic unpacked; Trainer with DataCollatorForSeq2Seq) and `packed` (Arctic packs rows
of `--pack-length` tokens, micro batch 4; the Trainer is padding-free, DataCollatorWithFlattening, with
as many samples per step as Arctic's packed rows hold on average, so both see about the same tokens per
step). Tokens are counted the same way on both sides: every real (non-padding) token.

Each run is its own process; Arctic and the Trainer alternate (A B, then B A on the next repeat), and
the table gives each pair's speed ratio per token, the primary figure on a shared machine, from the
median CPU time of a step (`time.process_time`, all threads of the process: steady while other jobs
take turns on the cores; run with `OMP_NUM_THREADS=1` so that no thread spins waiting for another)
and from its median wall time. tokens/s is the timed steps' real tokens over their wall time. Both
sides time the optimizer step only (data loading excluded); Arctic's CPU time comes from a bench-only
trainer (`bench_trainer.py`, the recipe's `code`) that is SFT plus the timer. `--profile` prints the top 10 operators per step (torch.profiler,
self CPU time) for each run.

    uv run --group bench python bench/sft/bench_sft.py [--vocabs 1024 49152 128256] [--modes padded packed]
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

HERE = Path(__file__).resolve().parent
BENCH_MODEL = {
    "num_hidden_layers": 4,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}
REAL_SHAPES = {
    "135m": (  # SmolLM2-135M's shape
        "llama",
        {
            "num_hidden_layers": 30,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "tie_word_embeddings": True,
            "vocab_size": 49152,
        },
    ),
    "qwen2-0.5b": (  # Qwen2-0.5B's shape
        "qwen2",
        {
            "num_hidden_layers": 24,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
            "vocab_size": 151936,
        },
    ),
}
"""Real models' shapes, random weights from a config (offline): `--shapes 135m qwen2-0.5b`."""
LR = 1e-4


def model_shapes(args: argparse.Namespace) -> dict[str, tuple[str, dict]]:
    """The runs' models by name: the 4-layer bench model once per `--vocabs` (shape `small`), then
    each real shape asked for."""
    shapes: dict[str, tuple[str, dict]] = {}
    for shape in args.shapes:
        if shape == "small":
            for vocab in args.vocabs:
                shapes[f"4L-256w-{vocab}"] = ("llama", {**BENCH_MODEL, "vocab_size": vocab})
        else:
            shapes[shape] = REAL_SHAPES[shape]
    return shapes


def prepare(folder: Path, shapes: dict[str, tuple[str, dict]], samples: int) -> None:
    """One model folder per shape (the same initial weights for both systems) and the chat data."""
    from arctic_core.testing import save_tiny_model
    from arctic_core.testing.datasets import arithmetic_conversations, write_rows

    for name, (arch, config) in shapes.items():
        save_tiny_model(folder / f"model-{name}", arch, seed=0, **config)
    write_rows(folder / "train.jsonl", arithmetic_conversations(samples, seed=0, max_turns=6))


def head_share(arch: str, config: dict) -> float:
    """The output layer's share of a full-logits step's matrix FLOPs per token (vocab x hidden against
    every other linear layer's weights; attention scores, a few % at 100-token rows, left out)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **config))
    body = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.dim() == 2 and "embed_tokens" not in n and "lm_head" not in n
    )
    head = config["vocab_size"] * config["hidden_size"]
    return head / (head + body)


def recipe(
    folder: Path,
    *,
    model: str,
    packed: bool,
    steps: int,
    batch: int,
    pack_length: int,
    profile: bool,
    dtype: str = "fp32",
) -> Path:
    name = f"arctic-{model}-{'packed' if packed else 'padded'}"
    code = f'code = "{HERE / "bench_trainer.py"}"\n'
    path = folder / f"{name}.toml"
    path.write_text(
        f"""
type = "sft_bench"
{code}micro_batch_size = {batch}
train_iters = {steps}
seed = 0
[model]
name_or_path = "{folder / f"model-{model}"}"
dtype = "{dtype}"
attn_implementation = "sdpa"
[data]
sources = ["{folder / "train.jsonl"}"]
max_length = {pack_length}
pack_samples = {str(packed).lower()}
cache_dir = "{folder / "cache"}"
[optimizer]
lr = {LR}
weight_decay = 0.0
[scheduler]
name = "constant"
warmup_ratio = 0.0
[logger]
output_dir = "{folder / name}"
progress_bar = false
"""
    )
    return path


def run_arctic(folder: Path, args: argparse.Namespace, *, model: str, packed: bool) -> dict:
    steps = args.warmup + args.steps
    path = recipe(
        folder,
        model=model,
        packed=packed,
        steps=steps,
        batch=args.batch,
        pack_length=args.pack_length,
        profile=args.profile,
        dtype=args.dtype,
    )
    cpu_file = folder / f"{path.stem}.cpu.json"
    env = {
        **os.environ,
        "BENCH_PROFILE_SKIP": str(args.warmup),
        "BENCH_PROFILE_STEPS": str(min(args.steps, 10) if args.profile else 0),
        "BENCH_CPU_TIMES": str(cpu_file),
    }
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "arctic_core", "train", str(path), *(f"--set={x}" for x in args.arctic_set)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"arctic failed:\n{done.stdout[-4000:]}")
    print_profile(done.stdout)
    for line in done.stdout.splitlines():
        if line.startswith("FAULTS ") or "host memory" in line:
            print(line)
    lines = [json.loads(x) for x in (folder / path.stem / "metrics.jsonl").open()]
    timed = lines[args.warmup :]
    cpu = json.loads(cpu_file.read_text())[args.warmup :]
    return {
        "first_loss": lines[0]["loss"],
        "cpu_s_per_step": statistics.median(cpu),
        "s_per_step": statistics.median(x["seconds"] for x in timed),
        "tokens_per_s": sum(x["tokens"] for x in timed) / sum(x["seconds"] for x in timed),
        "tokens_per_step": statistics.mean(x["tokens"] for x in timed),
        "trained_share": sum(x["trainable_tokens"] for x in timed) / sum(x["tokens"] for x in timed),
        "peak_rss_gb": max(x.get("peak_memory_gb") or 0 for x in lines),
        "checkpointing": next((x for x in done.stdout.splitlines() if "checkpointing" in x), "?"),
    }


def print_profile(output: str) -> None:
    for line in output.splitlines():
        if line.startswith("PROFILE "):
            print(line[8:])


def trainer_worker(folder: Path, args: argparse.Namespace) -> None:
    """Runs inside a subprocess: transformers' Trainer on Arctic's tokenized rows, in Arctic's order."""
    import torch
    from profile_window import ProfileWindow
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

    flatten, model_name, batch = args.flatten, args.model, args.batch
    if args.trainer_keep_memory:  # what Arctic does on CPU (arctic_core.engine.host_memory)
        from arctic_core.engine.host_memory import keep_freed_memory

        why_not = keep_freed_memory()
        if why_not is not None:
            raise SystemExit(f"--trainer-keep-memory: {why_not}")
    path = recipe(
        folder,
        model=model_name,
        packed=False,
        steps=1,
        batch=batch,
        pack_length=args.pack_length,
        profile=False,
    )
    config = load_recipe(path).config
    tokenizer = load_tokenizer(config)
    rows = DataFactory(config, tokenizer).train_dataset()
    generator = torch.Generator().manual_seed(config.data.seed)  # Arctic's epoch-0 order
    order = torch.randperm(len(rows), generator=generator).tolist()
    rows = rows.select(order).select_columns(["input_ids", "labels"])
    tokenizer.pad_token = tokenizer.eos_token
    collator = (
        DataCollatorWithFlattening()
        if flatten
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    )
    times: list[float] = []
    cpu: list[float] = []
    tokens: list[int] = []
    window = ProfileWindow(skip=args.warmup, steps=min(args.steps, 10)) if args.profile else None

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if window is not None:
                self.profiled = window.step()
                self.profiled.__enter__()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)
            cpu.append(time.process_time() - self.cpu_start)
            if window is not None:
                self.profiled.__exit__(None, None, None)

    class CountingTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *args, **kwargs):
            real = inputs["input_ids"].numel() if flatten else inputs["attention_mask"].sum()
            tokens.append(int(real))
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = AutoModelForCausalLM.from_pretrained(
        folder / f"model-{model_name}", dtype=torch.float32, attn_implementation="sdpa"
    )
    training = TrainingArguments(
        output_dir=str(folder / "hf"),
        per_device_train_batch_size=batch,
        max_steps=args.warmup + args.steps,
        learning_rate=LR,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.dtype == "bf16",  # autocast over fp32 weights
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=model, args=training, train_dataset=rows, data_collator=collator, callbacks=[Timer()]
    )
    trainer.train()
    if window is not None:
        window.report("trainer")
    losses = [float(x["loss"]) for x in trainer.state.log_history if "loss" in x]
    timed = times[args.warmup :]
    counted = tokens[args.warmup : args.warmup + len(timed)]
    result = {
        "first_loss": losses[0],
        "cpu_s_per_step": statistics.median(cpu[args.warmup :]),
        "s_per_step": statistics.median(timed),
        "tokens_per_s": sum(counted) / sum(timed),
        "tokens_per_step": statistics.mean(counted),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print("RESULT " + json.dumps(result))


def run_trainer(folder: Path, args: argparse.Namespace, *, model: str, batch: int, flatten: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(folder),
        "--model",
        model,
        "--batch",
        str(batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--pack-length",
        str(args.pack_length),
        "--dtype",
        args.dtype,
    ]
    command += ["--flatten"] if flatten else []
    command += ["--trainer-keep-memory"] if args.trainer_keep_memory else []
    command += ["--profile"] if args.profile else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        raise SystemExit(f"trainer failed:\n{done.stdout[-4000:]}")
    print_profile(done.stdout)
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def samples_per_packed_row(folder: Path, args: argparse.Namespace, model: str) -> float:
    from arctic_core.data import DataFactory, load_tokenizer
    from arctic_core.recipe import load_recipe

    counts = []
    for packed in (False, True):
        path = recipe(
            folder,
            model=model,
            packed=packed,
            steps=1,
            batch=args.batch,
            pack_length=args.pack_length,
            profile=False,
        )
        config = load_recipe(path).config
        counts.append(len(DataFactory(config, load_tokenizer(config)).train_dataset()))
    return counts[0] / counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[1024, 49152, 128256], help="of shape small")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=["small", *REAL_SHAPES],
        default=["small"],
        help="models (small: 4 layers)",
    )
    parser.add_argument("--modes", nargs="+", choices=["padded", "packed"], default=["padded", "packed"])
    parser.add_argument("--pack-length", type=int, default=256, help="packed row length (and max_length)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs per configuration, order alternating")
    parser.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="Arctic's model.dtype; the Trainer's bf16 autocast",
    )
    parser.add_argument(
        "--arctic-set",
        action="append",
        default=[],
        help="an override for Arctic's runs (`arctic train --set`)",
    )
    parser.add_argument("--profile", action="store_true", help="print the top 10 ops per step of each run")
    parser.add_argument(
        "--trainer-keep-memory",
        action="store_true",
        help="give the Trainer's process Arctic's CPU malloc thresholds (arctic_core.engine.host_memory)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--flatten", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        trainer_worker(Path(args.worker), args)
        return
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    shapes = model_shapes(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, shapes, args.samples)
        pairs = 0
        for model, (arch, config) in shapes.items():
            share = head_share(arch, config)
            for mode in args.modes:
                packed = mode == "packed"
                hf_batch = (
                    round(args.batch * samples_per_packed_row(folder, args, model)) if packed else args.batch
                )
                for _ in range(args.repeats):
                    first_arctic = pairs % 2 == 0
                    pair = run_pair(
                        folder, args, model=model, packed=packed, hf_batch=hf_batch, arctic_first=first_arctic
                    )
                    pairs += 1
                    rows.append((model, share, mode, hf_batch, pair["arctic"], pair["trainer"]))
                    print_row(*rows[-1], flush=True)
    print(
        f"\n{started}; machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load_before:.1f} at the "
        f"start and {os.getloadavg()[0]:.1f} at the end; {args.warmup} warm-up + {args.steps} timed steps, "
        f"micro batch {args.batch}, {args.dtype}, sdpa"
        + ("; the Trainer with Arctic's malloc thresholds" if args.trainer_keep_memory else "")
    )
    print_table(rows)


def run_pair(
    folder: Path, args: argparse.Namespace, *, model: str, packed: bool, hf_batch: int, arctic_first: bool
) -> dict:
    """One Arctic run and one Trainer run on the same configuration, in the given order."""
    pair = {}
    for name in ["arctic", "trainer"] if arctic_first else ["trainer", "arctic"]:
        if name == "arctic":
            pair[name] = run_arctic(folder, args, model=model, packed=packed)
        else:
            pair[name] = run_trainer(folder, args, model=model, batch=hf_batch, flatten=packed)
    return pair


def print_row(model, share, mode, hf_batch, arctic, trainer, flush=False) -> None:
    print(
        f"[{model} {mode}] arctic {arctic['cpu_s_per_step']:.3f} CPU s/step, {arctic['s_per_step']:.3f} s/step "
        f"({arctic['checkpointing'].strip()[-90:]}) | trainer (batch {hf_batch}) "
        f"{trainer['cpu_s_per_step']:.3f} CPU s/step, {trainer['s_per_step']:.3f} s/step",
        flush=flush,
    )


def print_table(rows) -> None:
    """Speed-ups per token (packed steps hold about, not exactly, as many tokens on both sides).

    `head share`: the output layer's share of a full-logits step's matrix FLOPs (`head_share`);
    `loss ceiling`: the speed-up that projecting only the trained positions can give at that share,
    1 / (1 - share x (1 - trained share)), with everything else equal.
    """
    print(
        "| model | head share | mode | system | CPU s/step | s/step | tokens/step | tokens/s | peak RSS GB "
        "| first loss | loss ceiling | Arctic speed-up: CPU time | wall time |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, share, mode, hf_batch, arctic, trainer in rows:

        def per_token(r, key):
            return r[key] / r["tokens_per_step"]

        by_cpu = per_token(trainer, "cpu_s_per_step") / per_token(arctic, "cpu_s_per_step")
        by_wall = per_token(trainer, "s_per_step") / per_token(arctic, "s_per_step")
        ceiling = 1 / (1 - share * (1 - arctic["trained_share"]))
        for name, r in (("arctic", arctic), (f"Trainer (batch {hf_batch})", trainer)):
            ratios = f"{ceiling:.2f}x | {by_cpu:.2f}x | {by_wall:.2f}x" if name == "arctic" else " | | "
            print(
                f"| {model} | {share:.0%} | {mode} | {name} | {r['cpu_s_per_step']:.3f} | {r['s_per_step']:.3f} | "
                f"{r['tokens_per_step']:.0f} | {r['tokens_per_s']:.0f} | {r['peak_rss_gb']:.2f} | "
                f"{r['first_loss']:.5f} | {ratios} |"
            )


if __name__ == "__main__":
    main()
