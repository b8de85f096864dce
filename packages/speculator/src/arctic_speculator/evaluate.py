"""`arctic speculator eval RECIPE`: acceptance and real speculative decoding on held-out prompts.

For each held-out prompt (one per assistant turn of `[evaluate] sources`, default
`data.eval_sources`; the first `max_prompts`), the base model decodes greedily twice, plainly and
with the speculator (`arctic_speculator.decode`), up to `max_new_tokens` or its stop token, the two
interleaved so that both see the same machine. Reported: the outputs' identity, the real loop's
mean accepted length (drafted tokens accepted per verifying forward), tokens per base forward,
wall-clock seconds of both and the speed-up; and, teacher-forced on the plain decoding's output,
each head's accuracy and acceptance p_i and tau = sum_k prod_{i<=k} p_i.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arctic_core.errors import RecipeError
from arctic_speculator.config import SpeculatorConfig


def eval_prompts(config: SpeculatorConfig, tokenizer: Any, scratch: Path) -> list[list[int]]:
    import attrs

    from arctic_speculator.generate import conversation_prompts, read_conversations

    sources = config.evaluate.sources or config.data.eval_sources
    if not sources:
        raise RecipeError("lists no held-out data (nor does data.eval_sources)", path="evaluate.sources")
    turns = attrs.evolve(config.generate, prompts="turns")
    prompts = [
        p for m in read_conversations(sources, scratch) for p in conversation_prompts(m, tokenizer, turns)
    ]
    return prompts[: config.evaluate.max_prompts]


def speculator_folder(config: SpeculatorConfig) -> Path:
    path = config.evaluate.speculator_path
    folder = Path(path) if path else Path(config.run_dir) / "checkpoints" / "speculator"
    if not (folder / "config.json").exists():
        raise RecipeError(
            f"{folder} holds no speculator (config.json); train one or set it",
            path="evaluate.speculator_path",
        )
    return folder


def run_evaluation(config: SpeculatorConfig, folder: Path | None = None) -> dict[str, Any]:
    """Evaluate the speculator in `folder` (default `speculator_folder`) on the recipe's base model."""
    import tempfile

    import torch

    from arctic_core.data.tokenizer import load_tokenizer
    from arctic_speculator.decode import (
        decode_report,
        greedy_decode,
        speculative_decode,
        teacher_forced_acceptance,
    )
    from arctic_speculator.export import load_speculator
    from arctic_speculator.generate import load_base_model, stop_tokens

    folder = folder or speculator_folder(config)
    model = load_base_model(config)
    tokenizer = load_tokenizer(config)
    speculator = load_speculator(folder, base=model).to(next(model.parameters()).dtype)
    with tempfile.TemporaryDirectory() as scratch:
        prompts = eval_prompts(config, tokenizer, Path(scratch))
    stops, limit = stop_tokens(model, tokenizer), config.evaluate.max_new_tokens
    (
        greedy_decode(model, prompts[0], 4, stops),
        speculative_decode(model, speculator, prompts[0], 4, stops),
    )  # warm-up
    plain, spec = [], []
    with torch.no_grad():
        for prompt in prompts:
            plain.append(greedy_decode(model, prompt, limit, stops))
            spec.append(speculative_decode(model, speculator, prompt, limit, stops))
    report = decode_report(plain, spec)
    report["teacher_forced"] = teacher_forced_acceptance(
        model, speculator, [(p, d.tokens) for p, d in zip(prompts, plain)]
    )
    report.update(speculator=str(folder), n_predict=speculator.n_predict, threads=torch.get_num_threads())
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a text table."""
    tf = report["teacher_forced"]
    lines = [
        f"{'head':<6}{'accuracy':>10}{'acceptance p_i':>16}",
        *(
            f"{i:<6}{a:>10.3f}{p:>16.3f}"
            for i, (a, p) in enumerate(zip(tf["accuracy"], tf["acceptance"], strict=True))
        ),
        f"tau (teacher-forced expected accepted length): {tf['tau']:.3f} over {tf['positions']} positions",
        f"speculative decoding, {report['prompts']} prompts, {report['tokens']} tokens:",
        f"  mean accepted length        {report['mean_accepted_length']:.3f} drafted tokens per round",
        f"  tokens per base forward     {report['tokens_per_base_forward']:.3f} (plain greedy: "
        f"{report['plain_tokens_per_base_forward']:.3f})",
        f"  wall clock                  {report['speculative_seconds']:.3f} s vs plain greedy "
        f"{report['plain_seconds']:.3f} s: speed-up {report['speedup']:.2f}x",
        f"  identical to plain greedy   {report['identical']}",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], config: SpeculatorConfig, output: Path | None = None) -> Path:
    target = output or Path(config.evaluate.output or Path(config.run_dir) / "speculator_eval.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    return target
