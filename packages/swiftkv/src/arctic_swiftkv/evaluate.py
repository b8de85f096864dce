"""`arctic swiftkv eval`: the SwiftKV student against its teacher (the same weights, SwiftKV off).

On the recipe's held-out data (`data.eval_sources`, or its held-out `train_eval_split`), over the
trainable (assistant) positions, both models' next-token distributions give:

- `kl`: mean KL(teacher || student) at temperature 1;
- `agreement`: fraction of positions where both argmaxes agree;
- `perplexity_teacher`, `perplexity_student`: exp of each model's mean next-token NLL.

On held-out prompts (`[generation_eval] path`, else the first eval source), both decode greedily and
`generation_agreement` is the fraction of prompts with identical outputs (`token_agreement`: of the
tokens, position by position). The student decodes with the prefill skip. One rank.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import torch

from arctic_swiftkv.loss import trainable_positions
from arctic_swiftkv.trainer import swiftkv_off


def _states(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    from arctic_core.engine.loop import model_inputs

    out = model(**model_inputs(batch), use_cache=False, logits_to_keep=1, output_hidden_states=True)
    return out.hidden_states[-1]


@torch.no_grad()
def token_sums(model: Any, batch: dict[str, Any], chunk_rows: int = 1024) -> dict[str, float]:
    """Sums over the batch's trainable positions: KL, argmax agreements, both NLLs, and the count."""
    mask = trainable_positions(batch["labels"])
    targets = batch["labels"][:, 1:][mask[:, :-1]]
    with swiftkv_off(model):
        teacher = _states(model, batch)[mask]
    student = _states(model, batch)[mask]
    sums = {"kl": 0.0, "agree": 0.0, "nll_teacher": 0.0, "nll_student": 0.0, "n": float(targets.numel())}
    for start in range(0, targets.numel(), chunk_rows):
        rows = slice(start, start + chunk_rows)
        log_t = torch.log_softmax(model.lm_head(teacher[rows]).float(), dim=-1)
        log_s = torch.log_softmax(model.lm_head(student[rows]).float(), dim=-1)
        y = targets[rows].unsqueeze(-1)
        sums["kl"] += float((log_t.exp() * (log_t - log_s)).sum())
        sums["agree"] += float((log_t.argmax(-1) == log_s.argmax(-1)).sum())
        sums["nll_teacher"] -= float(log_t.gather(-1, y).sum())
        sums["nll_student"] -= float(log_s.gather(-1, y).sum())
    return sums


@torch.no_grad()
def generation_agreement(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    *,
    stop_ids: list[int],
    max_new_tokens: int,
) -> tuple[float, float]:
    """(fraction of prompts decoded identically, fraction of decoded tokens equal) by teacher and student."""
    from arctic_core.evals import left_padded

    same = equal = total = 0
    device = next(model.parameters()).device
    for prompt in prompts:
        inputs = {k: v.to(device) for k, v in left_padded(tokenizer, [prompt], stop_ids[0]).items()}
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "eos_token_id": stop_ids}
        with swiftkv_off(model):
            teacher = model.generate(**inputs, pad_token_id=stop_ids[0], **kwargs)[0]
        student = model.generate(**inputs, pad_token_id=stop_ids[0], **kwargs)[0]
        width = max(teacher.numel(), student.numel())
        t = torch.nn.functional.pad(teacher, (0, width - teacher.numel()), value=-1)
        s = torch.nn.functional.pad(student, (0, width - student.numel()), value=-1)
        new = slice(inputs["input_ids"].shape[1], width)
        same += int(torch.equal(t, s))
        equal += int((t[new] == s[new]).sum())
        total += max(width - inputs["input_ids"].shape[1], 1)
    return same / max(len(prompts), 1), equal / max(total, 1)


def _prompts(config: Any, limit: int) -> list[list[dict[str, str]]]:
    from arctic_core.evals import read_references

    settings = config.generation_eval
    if settings.path is None and config.data.eval_sources:
        settings = attrs.evolve(settings, path=config.data.eval_sources[0].name_or_path)
    if settings.path is None:
        return []
    return [prompt for prompt, _ in read_references(settings)[:limit]]


def evaluate(trainer: Any, *, prompts: int, max_new_tokens: int) -> dict[str, float]:
    """Every metric of the module docstring for a set-up `SwiftKVTrainer` (one rank)."""
    from arctic_core.engine.checkpoint import stop_token_ids

    model: Any = trainer.engine.module
    model.eval()
    totals: dict[str, float] = {}
    for batch, counts in trainer.eval_rounds():
        if counts:
            for key, value in token_sums(model, batch).items():
                totals[key] = totals.get(key, 0.0) + value
    n = max(totals.get("n", 0.0), 1.0)
    results = {
        "kl": totals.get("kl", 0.0) / n,
        "agreement": totals.get("agree", 0.0) / n,
        "perplexity_teacher": math.exp(totals.get("nll_teacher", 0.0) / n),
        "perplexity_student": math.exp(totals.get("nll_student", 0.0) / n),
        "tokens": totals.get("n", 0.0),
    }
    chats = _prompts(trainer.config, prompts)
    if chats:
        stops = stop_token_ids(model.config, model.generation_config, trainer.tokenizer)
        same, tokens = generation_agreement(
            model, trainer.tokenizer, chats, stop_ids=stops, max_new_tokens=max_new_tokens
        )
        results.update(generation_agreement=same, token_agreement=tokens, prompts=float(len(chats)))
    return results


def table(results: dict[str, float]) -> str:
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {value:.6g} |" for key, value in results.items()]
    return "\n".join(lines)


def run(config: Any, output: Path, *, prompts: int = 32, max_new_tokens: int = 16) -> dict[str, float]:
    """Build the model as training would (no steps), evaluate, write `output` (JSON); returns the metrics."""
    from arctic_swiftkv.trainer import SwiftKVTrainer

    trainer = SwiftKVTrainer(config)
    trainer.setup()
    if trainer.eval_dataset is None:
        from arctic_core.errors import RecipeError

        raise RecipeError("needs held-out data: set data.eval_sources", path="data.eval_sources")
    results = evaluate(trainer, prompts=prompts, max_new_tokens=max_new_tokens)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    return results
