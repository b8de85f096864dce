"""An OpenAI-compatible chat completions endpoint answers (vLLM serve, TGI, llama.cpp, OpenAI, Azure).

Through the `openai` client (`arctic-core[synth]`), its own retries off: each of a prompt's `n`
answers is one request (seeded `seed + k`, so servers without `n` work and each answer is
cached alone). At most `concurrency` requests are in flight. A 429, a 5xx, a timeout or a lost
connection is retried up to `max_retries` times after the server's Retry-After (seconds or an
HTTP date; `retry-after-ms` too) or else `backoff * 2**attempt` seconds; any other error stops
the run and names the status. Every answer goes to the request cache as it arrives; a request
found there is never sent. The API key is read from the environment variable `api_key_env`
names, and is written nowhere.
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from arctic_core.config import EndpointConfig
from arctic_core.errors import ArcticError, RecipeError
from arctic_core.synth.cache import RequestCache, request_key


@attrs.frozen
class Sampling:
    """How answers are drawn."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    ignore_eos: bool = False
    n: int = 1


@attrs.frozen
class Answer:
    """One answer: its text, its token ids (local backends) and its token counts."""

    text: str
    ids: list[int] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@attrs.define
class Usage:
    """Token, request and cost accounting of one run."""

    sent: int = 0
    cached: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The figures, for the report."""
        return attrs.asdict(self)


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait (Retry-After, retry-after-ms), if it says."""
    if headers is None:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def api_key(endpoint: EndpointConfig, key: str) -> str:
    """The API key, from the environment variable `api_key_env` names (a recipe error if unset)."""
    value = os.environ.get(endpoint.api_key_env)
    if not value:
        raise RecipeError(
            f"the environment variable {endpoint.api_key_env!r} holding the API key is not set",
            path=f"{key}.api_key_env",
        )
    return value


def make_client(endpoint: EndpointConfig, key: str) -> Any:
    """The `openai` client for `endpoint`, the key from its environment variable."""
    try:
        import openai
    except ImportError:
        raise RecipeError(
            "needs the openai client: pip install 'arctic-core[synth]'", path=f"{key}.base_url"
        ) from None
    secret = api_key(endpoint, key)
    if endpoint.api_version:
        return openai.AzureOpenAI(
            azure_endpoint=endpoint.base_url, api_version=endpoint.api_version, api_key=secret, max_retries=0
        )
    return openai.OpenAI(base_url=endpoint.base_url, api_key=secret, max_retries=0, timeout=endpoint.timeout)


class EndpointBackend:
    """Answers chat prompts through an endpoint, with the request cache (module docstring)."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        model: str,
        sampling: Sampling,
        cache: RequestCache,
        seed: int,
        key: str = "generate.endpoint",
        log: Callable[[str], None] = print,
    ) -> None:
        self.endpoint, self.model, self.sampling, self.cache = endpoint, model, sampling, cache
        self.seed, self.log = seed, log
        self.client = make_client(endpoint, key)
        self.usage = Usage()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=endpoint.concurrency)

    def payload(self, messages: list[dict[str, Any]], k: int) -> dict[str, Any]:
        """The request for the k-th answer to `messages` (what the cache key is made of)."""
        s = self.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": self.seed + k,
        }
        if s.top_k:
            body["extra_body"] = {"top_k": s.top_k}
        return body

    def answer(self, prompts: Sequence[Any], seed: int = 0) -> list[list[Answer]]:
        """`sampling.n` answers to each prompt's messages, in order (`seed` is per request here)."""
        bodies = [self.payload(p.messages, k) for p in prompts for k in range(self.sampling.n)]
        keys = [request_key(body) for body in bodies]
        unique = dict(zip(keys, bodies, strict=True))  # a prompt asked twice is sent once
        found = dict(zip(unique, self._pool.map(self._cached_or_sent, unique.items()), strict=True))
        with self._lock:
            self.usage.cached += len(keys) - len(unique)
        answers = [found[key] for key in keys]
        n = self.sampling.n
        return [answers[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _cached_or_sent(self, item: tuple[str, dict[str, Any]]) -> Answer:
        key, body = item
        record = self.cache.get(key)
        if record is None:
            record = self._send(body)
            self.cache.put(key, record)
            self._count(record, sent=True)
        else:
            self._count(record, sent=False)
        return Answer(record["text"], None, record["prompt_tokens"], record["completion_tokens"])

    def _count(self, record: dict[str, Any], sent: bool) -> None:
        with self._lock:
            if not sent:
                self.usage.cached += 1
                return
            self.usage.sent += 1
            self.usage.prompt_tokens += record["prompt_tokens"]
            self.usage.completion_tokens += record["completion_tokens"]
            e = self.endpoint
            self.usage.cost += (
                record["prompt_tokens"] * e.input_price + record["completion_tokens"] * e.output_price
            ) / 1e6

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        import openai

        for attempt in range(self.endpoint.max_retries + 1):
            try:
                reply = self.client.chat.completions.create(**body, timeout=self.endpoint.timeout)
                usage = reply.usage
                return {
                    "text": reply.choices[0].message.content or "",
                    "prompt_tokens": usage.prompt_tokens if usage else 0,
                    "completion_tokens": usage.completion_tokens if usage else 0,
                }
            except openai.APIStatusError as exc:
                if exc.status_code != 429 and exc.status_code < 500:
                    raise ArcticError(
                        f"{self.endpoint.base_url}: HTTP {exc.status_code}: {exc.message}"
                    ) from None
                wait, why = retry_after(exc.response.headers), f"HTTP {exc.status_code}"
            except openai.APIConnectionError as exc:  # timeouts too
                wait, why = None, type(exc).__name__
            if attempt == self.endpoint.max_retries:
                break
            wait = self.endpoint.backoff * 2**attempt if wait is None else wait
            with self._lock:
                self.usage.retries += 1
            self.log(f"request failed ({why}); retry {attempt + 1} in {wait:.2f} s")
            time.sleep(wait)
        raise ArcticError(
            f"{self.endpoint.base_url}: a request failed {self.endpoint.max_retries + 1} times ({why}); "
            "rerun to continue (answers so far are cached)"
        )

    def close(self) -> None:
        """Stop the request threads and close the cache."""
        self._pool.shutdown()
        self.cache.close()
