"""DEV-ONLY: what the local test servers (hf_endpoint, object_store, https_files) share: a log of
every request (and JSON lines in ``log_path``), errors injected into the next requests, and a
count of requests in flight so a test can clear the log without racing a response that reached
the client before its entry was written."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RequestLog:
    def __init__(self, log_path: Path | None = None):
        self.log_path = Path(log_path) if log_path else None
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._inflight = 0

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (a transient failure)."""
        with self._lock:
            self._failures.extend([status] * count)

    def take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def log(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as handle:
                    handle.write(json.dumps(entry) + "\n")

    def clear_log(self, timeout: float = 10) -> None:
        """Forget the requests so far, once those in flight are logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._inflight == 0:
                    break
            time.sleep(0.01)
        with self._lock:
            self.requests.clear()

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count one request being served (its handler wraps itself in this)."""
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
