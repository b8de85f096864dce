"""Greedy speculative decoding against plain greedy decoding: same base model, prompts and machine, one run.

    OMP_NUM_THREADS=1 uv run python bench/speculator/bench_speculator.py [--speculator FOLDER] [--prompts 32]

Without --speculator, the bundled tiny pipeline runs first in a temporary folder (generate with the
tiny trained base, then train 3 MLP heads: a few minutes on a CPU). Then each held-out prompt is
decoded plainly and speculatively with the first k heads, k = 1 .. n_predict, interleaved, after a
warm-up; all outputs are checked to be identical. Columns: mean accepted drafted tokens per round,
tokens per base forward, wall-clock seconds, tokens/s and the speed-up over plain greedy.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from arctic_core.recipe import bundled_recipes, load_recipe

PIPELINE = bundled_recipes("arctic_speculator") / "tiny-pipeline.toml"


def train_speculator(root: Path, overrides: list[str]) -> Path:
    from arctic_speculator.generate import run_generation

    loaded = load_recipe(PIPELINE, overrides)
    run_generation(loaded.config, log=lambda _: None)
    trainer = loaded.trainer_class()(loaded.config)
    trainer.train()
    return root / "run" / "checkpoints" / "speculator"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--speculator", type=Path, default=None, help="a trained speculator folder for the tiny base"
    )
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the prompts (median)")
    args = parser.parse_args()

    from arctic_core.data.tokenizer import load_tokenizer
    from arctic_speculator.decode import greedy_decode, speculative_decode
    from arctic_speculator.evaluate import eval_prompts
    from arctic_speculator.export import load_speculator
    from arctic_speculator.generate import load_base_model, stop_tokens

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        overrides = [
            f"generate.output_dir={root / 'data'}",
            f'data.sources=[{{name_or_path="{root / "data"}", process=false}}]',
            f"logger.output_dir={root / 'run'}",
            "logger.progress_bar=false",
            f"evaluate.max_prompts={args.prompts}",
        ]
        started = time.perf_counter()
        folder = args.speculator or train_speculator(root, overrides)
        prepared = time.perf_counter() - started
        config = load_recipe(PIPELINE, overrides).config
        model, tokenizer = load_base_model(config), load_tokenizer(config)
        speculator = load_speculator(folder, base=model)
        prompts = eval_prompts(config, tokenizer, root / "scratch")
        stops, limit = stop_tokens(model, tokenizer), args.max_new_tokens
        ks = list(range(1, speculator.n_predict + 1))
        times: dict[str, list[float]] = {name: [] for name in ["plain", *map(str, ks)]}
        with torch.inference_mode():
            (
                greedy_decode(model, prompts[0], 4, stops),
                speculative_decode(model, speculator, prompts[0], 4, stops),
            )
            for _ in range(args.repeats):
                totals = dict.fromkeys(times, 0.0)
                for prompt in prompts:
                    plain = greedy_decode(model, prompt, limit, stops)
                    totals["plain"] += plain.seconds
                    for k in ks:
                        spec = speculative_decode(model, speculator, prompt, limit, stops, k=k)
                        assert spec.tokens == plain.tokens, "speculative output differs from greedy"
                        totals[str(k)] += spec.seconds
                for name, value in totals.items():
                    times[name].append(value)
            runs = {
                k: [speculative_decode(model, speculator, p, limit, stops, k=k) for p in prompts] for k in ks
            }
        tokens = sum(len(d.tokens) for d in runs[ks[0]])
        median = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
        print(
            f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
            f"{len(prompts)} held-out prompts, {tokens} tokens, median of {args.repeats}; "
            f"speculator ready in {prepared:.0f} s; outputs identical to plain greedy: yes"
        )
        print("| decoder | accepted/round | tokens/base forward | seconds | tokens/s | speed-up |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        print(f"| plain greedy | - | 1.00 | {median['plain']:.3f} | {tokens / median['plain']:.0f} | 1.00x |")
        for k in ks:
            rounds = [m for d in runs[k] for m in d.accepted]
            forwards = sum(d.forwards for d in runs[k])
            s = median[str(k)]
            print(
                f"| speculative, {k} head(s) | {sum(rounds) / max(len(rounds), 1):.2f} | {tokens / forwards:.2f} | "
                f"{s:.3f} | {tokens / s:.0f} | {median['plain'] / s:.2f}x |"
            )


if __name__ == "__main__":
    main()
