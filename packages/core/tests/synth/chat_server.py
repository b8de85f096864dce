"""A real OpenAI-compatible chat completions server on 127.0.0.1, answering from a tiny local model.

Test-only. Each request is answered by the shipped tiny model (greedy at temperature 0, else
sampled with the request's `seed`), so the same request always gets the same answer. The server
counts what it answered per request, tracks the most requests in flight at once, and can be told
to misbehave: `faults` lists what the first requests to arrive get (`(429, retry_after)`,
`(500, None)`, `("stall", timeout)`: no answer until the client gave up after its timeout), `delay` slows every
answer, `script` replaces the model's reply text (a judge's score, for judge tests), and `hold_after = N` leaves every request after the N-th answered hanging (a client
killed then has answered requests on record and unanswered ones in flight).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from arctic_core.testing import tiny_generation_config, tiny_model, tiny_tokenizer


class ChatServer:
    """The server and its counters (module docstring)."""

    def __init__(self) -> None:
        self.model = tiny_model(seed=0).eval()
        self.tokenizer = tiny_tokenizer()
        self.stops = list(tiny_generation_config().eos_token_id)
        self.faults: list[tuple[Any, Any]] = []
        self.delay = 0.0
        self.script: Any = None  # body -> a fixed reply text (a judge's), or None: the model answers
        self.hold_after: int | None = None
        self.release = threading.Event()
        self._lock, self._model_lock = threading.Lock(), threading.Lock()
        self.reset()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reset(self) -> None:
        """Zero the counters."""
        self.received = 0
        self.answered: Counter[str] = Counter()
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.in_flight = self.max_in_flight = self.holding = 0
        self.faulted: dict[str, Any] = {}

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The model's answer to one request."""
        ids = self.tokenizer.apply_chat_template(body["messages"], tokenize=True, add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        temperature = body.get("temperature", 1.0)
        options: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=temperature, top_p=body.get("top_p", 1.0), top_k=None)
        with self._model_lock, torch.no_grad():
            torch.manual_seed(body.get("seed", 0))
            out = self.model.generate(
                input_ids=torch.tensor([ids]),
                max_new_tokens=body.get("max_tokens", 16),
                eos_token_id=self.stops,
                pad_token_id=self.stops[0],
                **options,
            )
        answer = out[0, len(ids) :].tolist()
        text = self.tokenizer.decode(answer, skip_special_tokens=True)
        if self.script is not None and self.script(body) is not None:
            text = self.script(body)
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(answer),
                "total_tokens": len(ids) + len(answer),
            },
        }

    def _arrive(self, key: str) -> tuple[Any, Any]:
        with self._lock:
            self.received += 1
            self.arrivals[key].append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fault = self.faults.pop(0) if self.faults else (None, None)
            if fault[0] is not None:
                self.faulted[key] = fault[0]
            held = self.hold_after is not None and sum(self.answered.values()) >= self.hold_after
            return ("hold", None) if held and fault[0] is None else fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = json.dumps([body["messages"], body.get("seed")], sort_keys=True)
                kind, value = server._arrive(key)
                try:
                    self._serve(body, key, kind, value)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _serve(self, body: dict[str, Any], key: str, kind: Any, value: Any) -> None:
                if kind == "hold":
                    with server._lock:
                        server.holding += 1
                    server.release.wait(60)
                    self.close_connection = True
                    return
                if kind == "stall":  # the client gives up after `value` s; out of the count just before
                    time.sleep(value * 0.9)
                    with server._lock:
                        server.in_flight -= 1
                    time.sleep(value * 1.2)
                    with server._lock:
                        server.in_flight += 1
                    self.close_connection = True
                    return
                if kind in (429, 500):
                    headers = {"Retry-After": str(value)} if value is not None else {}
                    self._reply(kind, {"error": {"message": f"test fault {kind}", "type": "test"}}, headers)
                    return
                time.sleep(server.delay)
                payload = server.complete(body)
                self._reply(200, payload)
                with server._lock:
                    server.answered[key] += 1

        return Handler
