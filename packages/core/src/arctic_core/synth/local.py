"""Local backends: the recipe's model answers with HF `generate` (KV cache) or, on CUDA, vLLM.

A batch of prompts (token ids) is left padded and answered together, each prompt `n` times
(consecutive rows), seeded by one seed per batch. Without `ignore_eos` an answer ends at the
model's first stop token (kept); HF pads finished rows after it, which is cut off.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import attrs

from arctic_core.config import TrainerConfig
from arctic_core.errors import RecipeError
from arctic_core.synth.endpoint import Answer, Sampling, Usage
from arctic_core.synth.prompts import Prompt


def load_model(config: TrainerConfig) -> Any:
    """The recipe's `[model]` for inference: one process, no ZeRO, eval mode, KV cache on."""
    from arctic_core.engine.model import build_model

    model: Any = build_model(config.model, {"zero_optimization": {"stage": 0}}, seed=config.seed)
    if not config.model.disable_activation_checkpoint:  # training's setting; decoding needs none
        model.gradient_checkpointing_disable()
    model.config.use_cache = True
    return model.eval().requires_grad_(False)


def stop_tokens(model: Any, tokenizer: Any) -> list[int]:
    """The model's stop tokens: EOS ids and the chat template's end-of-turn token."""
    from arctic_core.engine.checkpoint import stop_token_ids

    return stop_token_ids(model.config, getattr(model, "generation_config", None), tokenizer)


def _trim(answer: list[int], stops: set[int]) -> list[int]:
    for i, token in enumerate(answer):
        if token in stops:
            return answer[: i + 1]
    return answer


def answer_hf(
    model: Any, prompts: Sequence[list[int]], sampling: Sampling, stops: list[int], seed: int
) -> list[list[int]]:
    """One batch through HF `generate` (left padded, KV cache), seeded by `seed`."""
    import torch

    pad = stops[0] if stops else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sample = sampling.temperature > 0
    options: dict[str, Any] = {"do_sample": sample}
    if sample:
        options.update(temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=sampling.max_tokens if sampling.ignore_eos else 0,
            eos_token_id=None if sampling.ignore_eos else stops,
            pad_token_id=pad,
            use_cache=True,
            **options,
        )
    answers = [row[width:].tolist() for row in out]
    return answers if sampling.ignore_eos else [_trim(a, set(stops)) for a in answers]


def use_vllm(backend: Any, key: str = "generate.backend") -> bool:
    """Whether vLLM answers: `backend` (a name or a `[generate]` table) is `vllm`, or `auto` with
    vLLM installed and CUDA present."""
    import torch

    backend = backend if isinstance(backend, str) else backend.backend
    installed = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not (installed and torch.cuda.is_available()):
        raise RecipeError("vllm needs the vllm package and a CUDA GPU; use hf (or auto)", path=key)
    return backend == "vllm" or (backend == "auto" and installed and torch.cuda.is_available())


class LocalBackend:
    """The recipe's model answers token-id prompts; `vllm` picks vLLM over HF `generate`."""

    def __init__(self, config: TrainerConfig, tokenizer: Any, sampling: Sampling, vllm: bool) -> None:
        self.tokenizer, self.sampling = tokenizer, sampling
        self.usage = Usage()  # `sent`: answers generated
        if vllm:  # not a declared extra: locking it would pin the workspace's torch to vLLM's
            self.engine = importlib.import_module("vllm").LLM(
                model=config.model.name_or_path, seed=config.seed
            )
            self.model, self.stops = None, []
        else:
            self.engine, self.model = None, load_model(config)
            self.stops = stop_tokens(self.model, tokenizer)

    def answer(self, prompts: Sequence[Prompt], seed: int) -> list[list[Answer]]:
        """`sampling.n` answers to each prompt; one seed for the batch."""
        n = self.sampling.n
        ids = [list(p.ids or []) for p in prompts for _ in range(n)]
        if self.engine is not None:
            out = self._vllm(ids, seed)
        else:
            out = answer_hf(self.model, ids, self.sampling, self.stops, seed)
        answers = [
            Answer(
                text=self.tokenizer.decode(a, skip_special_tokens=True).strip(),
                ids=a,
                prompt_tokens=len(p),
                completion_tokens=len(a),
            )
            for p, a in zip(ids, out, strict=True)
        ]
        self.usage.sent += len(answers)
        self.usage.prompt_tokens += sum(a.prompt_tokens for a in answers)
        self.usage.completion_tokens += sum(a.completion_tokens for a in answers)
        return [answers[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _vllm(self, prompts: list[list[int]], seed: int) -> list[list[int]]:
        s = self.sampling
        params = importlib.import_module("vllm").SamplingParams(
            temperature=s.temperature,
            top_k=s.top_k or -1,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            ignore_eos=s.ignore_eos,
            seed=seed,
            detokenize=False,
        )
        outputs = self.engine.generate([{"prompt_token_ids": p} for p in prompts], params)
        return [list(o.outputs[0].token_ids) for o in outputs]

    def close(self) -> None:
        """Nothing to release."""


def judge_config(config: TrainerConfig, model: str) -> TrainerConfig:
    """`config` with `model` (a judge's) in place of the recipe's model, when set."""
    if not model:
        return config
    return attrs.evolve(
        config,
        model=attrs.evolve(config.model, name_or_path=model),
        tokenizer=attrs.evolve(config.tokenizer, name_or_path=None),
    )
