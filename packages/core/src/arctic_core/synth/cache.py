"""The request cache: every answer an endpoint gave, keyed by (model, prompt, settings).

An append-only JSON-lines file. Each answer is appended and flushed as soon as it arrives, so
a process killed at any moment loses at most the answers still in flight; a torn last line
(killed mid-write) is cut off when the file is opened again. A rerun finds every answered
request here and sends nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any


def request_key(payload: dict[str, Any]) -> str:
    """The cache key of one request: a hash of everything sent that decides the answer."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class RequestCache:
    """Answers by request key, read from and appended to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._answers: dict[str, dict[str, Any]] = {}
        if path.exists():
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) != len(data):  # a torn last line: the process died while writing it
                path.write_bytes(whole)
            for line in whole.decode().splitlines():
                record = json.loads(line)
                self._answers[record["key"]] = record
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a")

    def get(self, key: str) -> dict[str, Any] | None:
        """The recorded answer of request `key`, if any."""
        return self._answers.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Record an answer (flushed at once)."""
        record = {"key": key, **record}
        with self._lock:
            self._answers[key] = record
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def __len__(self) -> int:
        return len(self._answers)

    def close(self) -> None:
        """Close the file."""
        self._file.close()
