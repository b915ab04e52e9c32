"""A bounded load loop against HTTP endpoints, to prove a deploy drops no request.

    with LoadLoop([f"http://{address}/version"]) as load:
        deploy(...)
    assert load.stats.errors == 0

Requests only go where the caller points them (the lab's own addresses); the
loop is bounded in count and time and paces itself, so it never starves the
deploy it watches on a small machine.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deploykit.tasks import http


@dataclass
class LoadStats:
    """What a :class:`LoadLoop` saw."""

    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "502", "error"
    versions: Counter[str] = field(default_factory=Counter)  # of the 200 answers
    first_error: str | None = None
    duration: float = 0.0
    cut_short: bool = False  # a bound (requests, seconds) ended the loop, not its owner

    @property
    def errors(self) -> int:
        """5xx answers and requests without an answer (refused, reset, timed out)."""
        return sum(n for key, n in self.statuses.items() if key == "error" or key[0] == "5")

    def summary(self) -> dict[str, Any]:
        """The figures as plain data."""
        return {"requests": self.requests, "errors": self.errors,
                "statuses": dict(self.statuses), "versions": dict(self.versions),
                "first_error": self.first_error, "cut_short": self.cut_short,
                "seconds": round(self.duration, 2),
                "rate": round(self.requests / self.duration, 1) if self.duration else 0.0}


class LoadLoop:
    """``threads`` threads GET ``urls`` in turn (a new connection per request, each with
    ``timeout``, ``pause`` seconds between one thread's requests) until the ``with``
    block ends: at most ``max_requests`` requests and ``max_seconds``.

    The pause leaves the 2-core machine to the deploy it watches (unpaced, four
    threads take a core and slow the deploy down several times).
    """

    def __init__(self, urls: Sequence[str], *, threads: int = 4, timeout: float = 5.0,
                 pause: float = 0.02, max_requests: int = 30_000,
                 max_seconds: float = 300.0) -> None:
        self.urls = list(urls)
        self.threads = threads
        self.timeout = timeout
        self.pause = pause
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._started = 0.0

    def _work(self, offset: int) -> None:
        deadline = self._started + self.max_seconds
        turn = offset
        while not self._stop.wait(self.pause if turn > offset else 0):
            with self._lock:
                if self.stats.requests >= self.max_requests or time.monotonic() >= deadline:
                    self.stats.cut_short = True
                    return
                self.stats.requests += 1
            response = http.request(self.urls[turn % len(self.urls)], timeout=self.timeout)
            turn += 1
            version = None
            if response.status == 200:
                try:
                    version = str(response.json()["version"])
                except (ValueError, KeyError, TypeError):
                    version = f"unreadable: {response.excerpt(40)}"
            key = "error" if response.status is None else str(response.status)
            with self._lock:
                self.stats.statuses[key] += 1
                if version is not None:
                    self.stats.versions[version] += 1
                if (response.status is None or response.status >= 500) \
                        and self.stats.first_error is None:
                    self.stats.first_error = f"{response.url}: {response.describe()}"

    def __enter__(self) -> LoadLoop:
        self._started = time.monotonic()
        self._workers = [threading.Thread(target=self._work, args=(i,), daemon=True)
                         for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        self.stats.duration = time.monotonic() - self._started
