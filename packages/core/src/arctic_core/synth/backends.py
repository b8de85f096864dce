"""Choosing the backend that answers: a local model (HF or vLLM) or an HTTP endpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from arctic_core.config import EndpointConfig, TrainerConfig
from arctic_core.synth.endpoint import Answer, Sampling, Usage
from arctic_core.synth.prompts import Prompt


class Backend(Protocol):
    """Answers prompts: `sampling.n` answers each, in order; counts what it did in `usage`."""

    usage: Usage

    def answer(self, prompts: Sequence[Prompt], seed: int) -> list[list[Answer]]:
        """The answers; `seed` seeds a local backend's batch."""
        ...

    def close(self) -> None:
        """Release threads and files."""
        ...


def make_backend(
    kind: str,
    config: TrainerConfig,
    sampling: Sampling,
    endpoint: EndpointConfig,
    cache: Path,
    key: str,
    tokenizer: Any = None,
    log: Callable[[str], None] = print,
) -> Backend:
    """The backend `kind` (hf, vllm, openai, auto) answering with `config`'s model; `key` names
    the recipe table in errors, `cache` is the request cache file of an endpoint."""
    if kind == "openai":
        from arctic_core.synth.cache import RequestCache
        from arctic_core.synth.endpoint import EndpointBackend

        model = endpoint.model or config.model.name_or_path
        return EndpointBackend(
            endpoint, model, sampling, RequestCache(cache), config.seed, f"{key}.endpoint", log
        )
    from arctic_core.synth.local import LocalBackend, use_vllm

    if tokenizer is None:
        from arctic_core.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(config)
    return LocalBackend(config, tokenizer, sampling, use_vllm(kind, f"{key}.backend"))
