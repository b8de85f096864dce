"""`arctic speculator generate RECIPE`: the base model answers chat prompts; its answers are the training data.

Self-distillation, as ArcticTraining does it: a speculator should predict what the base model
itself writes, so the training data is the base model's own output.

1. Prompts (`[generate] prompts`): `chunks` (ArcticTraining) chat-templates each conversation of
   `[generate] sources` and cuts it into `gen_prompt_length`-token pieces (the remainder is dropped);
   `turns` makes one prompt per assistant turn (the conversation before it, with the generation
   prompt). `max_prompts` keeps the first N.
2. The prompts are cut into shards of `shard_size`, dealt to ranks (shard s to rank s mod W, from the
   launcher's `RANK`/`WORLD_SIZE`), and each shard is answered in batches of `batch_size` (left
   padded) by HF `generate` with its KV cache: `max_tokens` new tokens, `gen_temp` (0: greedy),
   `top_k`, `top_p`, `ignore_eos` (otherwise a row ends at the model's first stop token). vLLM answers
   instead when `backend = "vllm"`, or `"auto"` with vLLM installed and CUDA present.
3. A shard is written to `.shard-NNNNN.jsonl.partial` and renamed to `shard-NNNNN.jsonl` when done;
   each shard's sampling is seeded by (seed, shard, batch). A rerun after a kill keeps finished
   shards and redoes the partial one, so it writes exactly what an uninterrupted run writes.
   `.generation.json` records the settings; a rerun with other settings is refused.

Rows: `input_ids` = prompt + answer, `labels` = -100 on the prompt, the answer's tokens after it.
Training reads the folder as a source with `process = false` (no tokenisation); the prompt gives
the base model the context it had while writing, and only the answer is trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from arctic_core.errors import RecipeError
from arctic_speculator.config import GenerateConfig, SpeculatorConfig

IGNORE = -100
MANIFEST = ".generation.json"


def load_base_model(config: SpeculatorConfig) -> Any:
    """The base model of `[model]` for inference: one process, no ZeRO, eval mode, KV cache on."""
    from arctic_core.engine.model import build_model

    model: Any = build_model(config.model, {"zero_optimization": {"stage": 0}}, seed=config.seed)
    if not config.model.disable_activation_checkpoint:  # training's setting; decoding needs none
        model.gradient_checkpointing_disable()
    model.config.use_cache = True
    return model.eval().requires_grad_(False)


def read_conversations(sources: Sequence[Any], scratch: Path) -> list[list[dict[str, Any]]]:
    """The chat messages of every row of `sources` (chat, ShareGPT or Alpaca layouts)."""
    from arctic_core.data.errors import DataError
    from arctic_core.data.formats import RoleMapping, detect_format, normalize
    from arctic_core.data.sources import load_source

    conversations = []
    for index, source in enumerate(sources):
        table = load_source(source, "train", scratch)
        mapping = RoleMapping.parse(source.role_mapping, f"generate.sources[{index}].role_mapping")
        fmt = source.format or detect_format(table.column_names, mapping, source.name_or_path)
        for row_index, row in enumerate(table):
            where = f"source {source.name_or_path!r} row {row_index}"
            canonical = normalize(row, fmt, mapping, where)
            if canonical.get("kind") != "chat":
                raise DataError(
                    f"{where}: generation needs chat rows (messages), not {canonical.get('kind')}"
                )
            conversations.append(canonical["messages"])
    return conversations


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return [int(t) for t in ids]


def conversation_prompts(
    messages: list[dict[str, Any]], tokenizer: Any, gen: GenerateConfig
) -> list[list[int]]:
    """The prompts one conversation gives (module docstring, step 1)."""
    if gen.prompts == "chunks":
        ids = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        size = gen.gen_prompt_length
        return [ids[start : start + size] for start in range(0, len(ids) // size * size, size)]
    return [
        _ids(tokenizer.apply_chat_template(messages[:j], tokenize=True, add_generation_prompt=True))
        for j, message in enumerate(messages)
        if message["role"] == "assistant" and j > 0
    ]


def collect_prompts(config: SpeculatorConfig, tokenizer: Any, scratch: Path) -> list[list[int]]:
    gen = config.generate
    if not gen.sources:
        raise RecipeError("lists no data to prompt the base model with", path="generate.sources")
    prompts = [
        p for m in read_conversations(gen.sources, scratch) for p in conversation_prompts(m, tokenizer, gen)
    ]
    return prompts[: gen.max_prompts] if gen.max_prompts else prompts


def stop_tokens(model: Any, tokenizer: Any) -> list[int]:
    """The base model's stop tokens: EOS ids and the chat template's end-of-turn token."""
    from arctic_core.engine.checkpoint import stop_token_ids

    return stop_token_ids(model.config, getattr(model, "generation_config", None), tokenizer)


def _trim(answer: list[int], stops: set[int]) -> list[int]:
    """An answer up to its first stop token (kept); HF pads finished rows after it."""
    for i, token in enumerate(answer):
        if token in stops:
            return answer[: i + 1]
    return answer


def answer_hf(
    model: Any, prompts: Sequence[list[int]], gen: GenerateConfig, stops: list[int], seed: int
) -> list[list[int]]:
    """One batch through HF `generate` (left padded, KV cache), seeded by `seed`."""
    pad = stops[0] if stops else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sample = gen.gen_temp > 0
    options: dict[str, Any] = {"do_sample": sample}
    if sample:
        options.update(temperature=gen.gen_temp, top_k=gen.top_k or None, top_p=gen.top_p)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=gen.max_tokens,
            min_new_tokens=gen.max_tokens if gen.ignore_eos else 0,
            eos_token_id=None if gen.ignore_eos else stops,
            pad_token_id=pad,
            use_cache=True,
            **options,
        )
    answers = [row[width:].tolist() for row in out]
    return answers if gen.ignore_eos else [_trim(a, set(stops)) for a in answers]


def vllm_engine(model_name: str, seed: int) -> Any:
    """A vLLM engine for the base model (CUDA only). vLLM is not a declared extra: locking it would pin
    the workspace's torch to vLLM's, so it is found at run time (`use_vllm`) and imported by name here."""
    import importlib

    vllm: Any = importlib.import_module("vllm")
    return vllm.LLM(model=model_name, seed=seed)


def answer_vllm(engine: Any, prompts: Sequence[list[int]], gen: GenerateConfig, seed: int) -> list[list[int]]:
    """One batch through the vLLM engine, seeded by `seed`."""
    import importlib

    params = importlib.import_module("vllm").SamplingParams(
        temperature=gen.gen_temp,
        top_k=gen.top_k or -1,
        top_p=gen.top_p,
        max_tokens=gen.max_tokens,
        ignore_eos=gen.ignore_eos,
        seed=seed,
        detokenize=False,
    )
    outputs = engine.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outputs]


def use_vllm(gen: GenerateConfig) -> bool:
    import importlib.util

    installed = importlib.util.find_spec("vllm") is not None
    if gen.backend == "vllm" and not (installed and torch.cuda.is_available()):
        raise RecipeError(
            "vllm needs the vllm package and a CUDA GPU; use hf (or auto)", path="generate.backend"
        )
    return gen.backend == "vllm" or (gen.backend == "auto" and installed and torch.cuda.is_available())


def _settings(config: SpeculatorConfig, prompts: int) -> dict[str, Any]:
    from arctic_core.recipe.convert import unstructure

    gen = unstructure(config.generate)
    gen.pop("output_dir", None), gen.pop("backend", None), gen.pop("batch_size", None)
    return {"model": config.model.name_or_path, "seed": config.seed, "prompts": prompts, "generate": gen}


def _check_manifest(folder: Path, settings: dict[str, Any]) -> None:
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


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.jsonl"


def run_generation(config: SpeculatorConfig, rank: int = 0, world_size: int = 1, log: Any = print) -> Path:
    """Generate this rank's shards into `[generate] output_dir`; returns the folder."""
    from arctic_core.data.tokenizer import load_tokenizer

    gen = config.generate
    vllm = use_vllm(gen)
    folder = Path(gen.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config)
    prompts = collect_prompts(config, tokenizer, folder / ".scratch")
    if not prompts:
        raise RecipeError(
            "gives no prompts (conversations shorter than gen_prompt_length?)", path="generate.sources"
        )
    _check_manifest(folder, _settings(config, len(prompts)))
    shards = [prompts[s : s + gen.shard_size] for s in range(0, len(prompts), gen.shard_size)]
    model = None if vllm else load_base_model(config)
    engine = vllm_engine(config.model.name_or_path, config.seed) if vllm else None
    stops = [] if model is None else stop_tokens(model, tokenizer)
    for index in range(rank, len(shards), world_size):
        final = folder / shard_name(index)
        if final.exists():
            log(f"shard {index}: done already")
            continue
        partial = folder / f".{shard_name(index)}.partial"
        with partial.open("w") as out:
            batches = range(0, len(shards[index]), gen.batch_size)
            for b, start in enumerate(batches):
                batch = shards[index][start : start + gen.batch_size]
                seed = (config.seed * 1_000_003 + index) * 1_009 + b
                if vllm:
                    answers = answer_vllm(engine, batch, gen, seed)
                else:
                    answers = answer_hf(model, batch, gen, stops, seed)
                for prompt, answer in zip(batch, answers, strict=True):
                    row = {"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer}
                    out.write(json.dumps(row) + "\n")
                out.flush()
        partial.replace(final)
        log(f"shard {index}: {len(shards[index])} prompts -> {final}")
    return folder
