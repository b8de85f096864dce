"""`arctic data generate RECIPE`: the `[generate]` pipeline. Never pay twice, never lose work.

1. Prompts (`arctic_core.synth.prompts`), cut into shards of `shard_size`, dealt to ranks (shard s
   to rank s mod W, from the launcher's `RANK`/`WORLD_SIZE`).
2. Each shard is answered in batches of `batch_size` by the backend: a local model (seed of batch
   b of shard s: `(seed * 1_000_003 + s) * 1_009 + b`) or an endpoint (request k of a prompt seeded
   `seed + k`, every answer in the request cache `.requests.jsonl`).
3. A shard is written to `.shard-NNNNN.jsonl.partial` and renamed to `shard-NNNNN.jsonl` when done.
   A rerun keeps finished shards and redoes the partial one; its answers come from the cache, so
   nothing answered is sent again and the output equals an uninterrupted run's where sampling is
   seeded. `.generation.json` records the settings; a rerun with other settings is refused.

Rows (`output`): `messages` (the prompt's messages and the answer; one row per answer),
`preference` (`prompt`, `chosen`, `rejected`: the best and worst of the n answers by the judge or
a `code:` function `(prompt messages, answer text) -> float`; a prompt whose answers tie is
dropped) or `tokens` (`input_ids` = prompt + answer, `labels` = -100 on the prompt). Token and cost
figures go to `.generation-report.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from arctic_core.config import GenerateConfig, TrainerConfig
from arctic_core.errors import RecipeError
from arctic_core.synth.endpoint import Answer, Sampling
from arctic_core.synth.prompts import Prompt

IGNORE = -100
MANIFEST = ".generation.json"
REPORT = ".generation-report.json"
Log = Callable[[str], None]


def shard_name(index: int) -> str:
    """A finished shard's file name."""
    return f"shard-{index:05d}.jsonl"


def sampling_of(gen: GenerateConfig) -> Sampling:
    """The sampling settings of `[generate]`."""
    return Sampling(gen.max_tokens, gen.gen_temp, gen.top_k, gen.top_p, gen.ignore_eos, gen.n)


def _settings(config: TrainerConfig, prompts: int) -> dict[str, Any]:
    from arctic_core.recipe.convert import unstructure

    gen = unstructure(config.generate)
    for transport in ("output_dir", "backend", "batch_size", "endpoint"):
        gen.pop(transport, None)
    if config.generate.backend == "openai":
        gen["endpoint_model"] = config.generate.endpoint.model or config.model.name_or_path
    return {"model": config.model.name_or_path, "seed": config.seed, "prompts": prompts, "generate": gen}


def check_manifest(folder: Path, settings: dict[str, Any]) -> None:
    """Record the settings in `folder`, or refuse when it holds data made with others."""
    path = folder / MANIFEST
    if path.exists():
        if json.loads(path.read_text()) != settings:
            raise RecipeError(
                f"{folder} holds data generated with other settings; use another output_dir or remove it",
                path="generate.output_dir",
            )
        return
    tmp = folder / f"{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(settings, indent=1))
    tmp.replace(path)


class Ranker:
    """Scores a prompt's answers for preference pairs: the judge or a `code:` function."""

    def __init__(self, config: TrainerConfig, folder: Path, code_folder: Path | None, log: Log) -> None:
        self.judge: Any = None
        self.function: Any = None
        if config.generate.rank_by == "judge":
            from arctic_core.synth.judge import Judge

            self.judge = Judge(config, folder / ".judge-requests.jsonl", log)
        else:
            from arctic_core.synth.userfilters import user_function

            self.function = user_function(config, config.generate.rank_by, "generate.rank_by", code_folder)

    def scores(self, prompt: Prompt, answers: Sequence[Answer]) -> list[float]:
        """A score per answer (an unscored answer ranks last)."""
        messages = prompt.messages or []
        if self.function is not None:
            return [float(self.function(messages, a.text)) for a in answers]
        text = "\n".join(m["content"] for m in messages)
        found = self.judge.scores([(text, a.text) for a in answers])
        return [float("-inf") if s is None else s for s in found]


def rows_of(
    prompt: Prompt, answers: Sequence[Answer], output: str, ranker: Ranker | None
) -> list[dict[str, Any]]:
    """The output rows one prompt's answers give (module docstring)."""
    if output == "tokens":
        ids = prompt.ids or []
        return [
            {"input_ids": ids + a.ids, "labels": [IGNORE] * len(ids) + a.ids}
            for a in answers
            if a.ids is not None
        ]
    messages = prompt.messages or []
    if output == "messages":
        return [{"messages": [*messages, {"role": "assistant", "content": a.text}]} for a in answers]
    assert ranker is not None
    scores = ranker.scores(prompt, answers)
    best, worst = scores.index(max(scores)), scores.index(min(scores))
    if scores[best] == scores[worst]:
        return []
    chosen, rejected = ([{"role": "assistant", "content": answers[i].text}] for i in (best, worst))
    return [
        {"prompt": messages, "chosen": chosen, "rejected": rejected, "scores": [scores[best], scores[worst]]}
    ]


def _write_shard(
    folder: Path,
    index: int,
    shard: list[Prompt],
    backend: Any,
    config: TrainerConfig,
    ranker: Ranker | None,
    log: Log,
) -> None:
    gen = config.generate
    partial = folder / f".{shard_name(index)}.partial"
    with partial.open("w") as out:
        for b, start in enumerate(range(0, len(shard), gen.batch_size)):
            batch = shard[start : start + gen.batch_size]
            seed = (config.seed * 1_000_003 + index) * 1_009 + b
            for prompt, answers in zip(batch, backend.answer(batch, seed), strict=True):
                for row in rows_of(prompt, answers, gen.output, ranker):
                    out.write(json.dumps(row) + "\n")
            out.flush()
    partial.replace(folder / shard_name(index))
    log(f"shard {index}: {len(shard)} prompts -> {folder / shard_name(index)}")


def run_generate(
    config: TrainerConfig,
    rank: int = 0,
    world_size: int = 1,
    log: Log = print,
    code_folder: Path | None = None,
) -> Path:
    """Generate this rank's shards into `[generate] output_dir`; returns the folder."""
    from arctic_core.synth.backends import make_backend
    from arctic_core.synth.prompts import collect_prompts

    gen = config.generate
    if gen.backend == "openai":  # before any data is read
        from arctic_core.synth.endpoint import api_key

        api_key(gen.endpoint, "generate.endpoint")
    folder = Path(gen.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    if gen.backend != "openai":
        from arctic_core.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(config)
    prompts = collect_prompts(gen, tokenizer, folder / ".scratch")
    if not prompts:
        raise RecipeError(
            "gives no prompts (conversations shorter than gen_prompt_length?)", path="generate.sources"
        )
    check_manifest(folder, _settings(config, len(prompts)))
    shards = [prompts[s : s + gen.shard_size] for s in range(0, len(prompts), gen.shard_size)]
    todo = [i for i in range(rank, len(shards), world_size) if not (folder / shard_name(i)).exists()]
    for index in range(rank, len(shards), world_size):
        if index not in todo:
            log(f"shard {index}: done already")
    if not todo:
        return folder
    backend = make_backend(
        gen.backend,
        config,
        sampling_of(gen),
        gen.endpoint,
        folder / ".requests.jsonl",
        "generate",
        tokenizer,
        log,
    )
    ranker = Ranker(config, folder, code_folder, log) if gen.output == "preference" else None
    try:
        for index in todo:
            _write_shard(folder, index, shards[index], backend, config, ranker, log)
    finally:
        backend.close()
        if ranker is not None and ranker.judge is not None:
            ranker.judge.close()
    _report(folder, backend, rank, log)
    return folder


def _report(folder: Path, backend: Any, rank: int, log: Log) -> None:
    figures = backend.usage.as_dict()
    path = folder / (REPORT if rank == 0 else f"{REPORT}.rank{rank}")
    path.write_text(json.dumps(figures, indent=1))
    log(
        f"requests: {figures['sent']} sent, {figures['cached']} from the cache, {figures['retries']} retried; "
        f"tokens: {figures['prompt_tokens']} in, {figures['completion_tokens']} out; cost {figures['cost']:.4f}"
    )
