"""Arctic GRPO against TRL's `GRPOTrainer`: same policy, prompts, group size, batch, steps and machine.

The bundled quickstart (packages/rl/recipes/quickstart.toml): its tiny policy, 32 prompts x 8
completions per optimizer step (Arctic: 2 micro-batches of 16 prompts; TRL: 2 accumulation steps of
128 completions, one generation per step), max 8 new tokens, temperature 1, lr 1e-3, beta 0, loss
"grpo", rewards by exact match. Each side runs in this one process, one after the other, one thread.
Per step: wall seconds of the rollout (generation + rewards) and of the update, and CPU seconds
(`time.process_time`) of the whole step; and the mean reward of each step's rollouts.

    OMP_NUM_THREADS=1 uv run --group bench python bench/rl/bench_grpo.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "packages/rl/recipes/quickstart.toml"
QUICKSTART = REPO / "packages/rl/recipes/quickstart"


def run_arctic(steps: int, out: Path) -> list[dict[str, float]]:
    from arctic_core.recipe import load_recipe

    sets = [
        f"train_iters={steps}",
        f"logger.output_dir={out}",
        "checkpoint=[]",
        "data.eval_sources=[]",
        "generation_eval.before_training=false",
        "generation_eval.after_training=false",
        "logger.progress_bar=false",
    ]
    loaded = load_recipe(RECIPE, sets)
    trainer = loaded.trainer_class()(loaded.config)
    cpu: list[float] = []
    trainer.events.subscribe("step_end", lambda record: cpu.append(time.process_time()))
    start = time.process_time()
    trainer.train()
    marks = [start, *cpu]
    rows = [json.loads(line) for line in Path(trainer.config.metrics_path).read_text().splitlines()]
    return [
        {
            "rollout_s": r["rollout_seconds"],
            "update_s": r["update_seconds"],
            "cpu_s": marks[i + 1] - marks[i],
            "reward": r["reward"],
        }
        for i, r in enumerate(rows)
    ]


def run_trl(steps: int, out: Path) -> list[dict[str, float]]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in (QUICKSTART / "train.jsonl").read_text().splitlines()]
    data = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "answer": r["messages"][-1]["content"]} for r in rows]
    )

    def exact_match(prompts: Any, completions: Any, answer: Any, **_: Any) -> list[float]:
        return [float(c[0]["content"].strip() == a.strip()) for c, a in zip(completions, answer)]

    config = GRPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=128,
        gradient_accumulation_steps=2,
        num_generations=8,
        max_completion_length=8,
        temperature=1.0,
        learning_rate=1e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        beta=0.0,
        loss_type="grpo",
        scale_rewards="group",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        bf16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(QUICKSTART / "policy", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART / "policy")
    trainer = GRPOTrainer(
        model=model, reward_funcs=exact_match, args=config, train_dataset=data, processing_class=tokenizer
    )
    spent = {"rollout": 0.0}
    generate = trainer._generate_and_score_completions

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            spent["rollout"] += time.perf_counter() - began

    trainer._generate_and_score_completions = timed  # bench-only: time TRL's rollout
    records: list[dict[str, float]] = []

    class Steps(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            spent.update(rollout=0.0, wall=time.perf_counter(), cpu=time.process_time())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            wall = time.perf_counter() - spent["wall"]
            records.append(
                {
                    "rollout_s": spent["rollout"],
                    "update_s": wall - spent["rollout"],
                    "cpu_s": time.process_time() - spent["cpu"],
                }
            )

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: Any = None, **__: Any) -> None:
            if logs and "reward" in logs and records:
                records[-1]["reward"] = logs["reward"]

    trainer.add_callback(Steps())
    trainer.train()
    return records


def table(name: str, records: list[dict[str, float]]) -> str:
    skip = records[1:] or records  # the first step pays warm-up
    med = {k: statistics.median(r[k] for r in skip) for k in ("rollout_s", "update_s", "cpu_s")}
    rewards = " ".join(f"{r.get('reward', float('nan')):.3f}" for r in records)
    return (
        f"| {name} | {med['rollout_s']:.2f} | {med['update_s']:.2f} | {med['rollout_s'] + med['update_s']:.2f} "
        f"| {med['cpu_s']:.2f} | {rewards} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        arctic = run_arctic(args.steps, Path(scratch) / "arctic")
        trl = run_trl(args.steps, Path(scratch) / "trl")
    print("| side | rollout s | update s | step s (wall) | CPU s per step | reward per step |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(table("Arctic grpo", arctic))
    print(table("TRL GRPOTrainer", trl))


if __name__ == "__main__":
    main()
