"""Data access: items in PostgreSQL, counters in Redis.

One PostgreSQL connection per worker thread (autocommit), opened on first use
and reopened once when it broke (the server restarted): a request never waits
on another thread's query. Redis goes through redis-py's own thread-safe pool.
Every call has a short timeout, so a dead server fails a request, not a worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import redis
from psycopg.rows import dict_row

from sampleapp.config import Settings

T = TypeVar("T")

CONNECT_TIMEOUT = 2  # seconds
STATEMENT_TIMEOUT_MS = 2000
CREATED_KEY = "sampleapp:items_created"


class Unavailable(Exception):
    """A backing service is missing or failed; the message says which and why."""


class Store:
    """Items and counters for one app process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._redis: redis.Redis | None = None
        self._redis_lock = threading.Lock()

    # -- PostgreSQL --------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        if not self.settings.database_url:
            raise Unavailable("DATABASE_URL is not set")
        return psycopg.connect(self.settings.database_url, autocommit=True,
                               connect_timeout=CONNECT_TIMEOUT, row_factory=dict_row,
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")

    def db(self, work: Callable[[psycopg.Cursor[dict[str, Any]]], T]) -> T:
        """Run ``work(cursor)`` on this thread's connection; reconnect once if it broke."""
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            try:
                if conn is None or conn.closed:
                    conn = self._local.conn = self._connect()
                with conn.cursor() as cur:
                    return work(cur)
            except psycopg.OperationalError as exc:
                self._local.conn = None
                if conn is not None:
                    conn.close()
                if attempt == 2 or conn is None:
                    raise Unavailable(f"PostgreSQL: {first_line(exc)}") from None
        raise AssertionError("unreachable")

    # -- Redis -------------------------------------------------------------------

    def redis(self) -> redis.Redis:
        """The shared Redis client (created on first use)."""
        if not self.settings.redis_url:
            raise Unavailable("REDIS_URL is not set")
        with self._redis_lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    self.settings.redis_url, socket_timeout=CONNECT_TIMEOUT,
                    socket_connect_timeout=CONNECT_TIMEOUT, decode_responses=True)
            return self._redis

    def count_created(self) -> int:
        """Add one to the items-created counter; returns the new total."""
        try:
            return int(self.redis().incr(CREATED_KEY))
        except redis.RedisError as exc:
            raise Unavailable(f"Redis: {exc}") from None

    def created_total(self) -> int:
        """The items-created counter."""
        try:
            return int(self.redis().get(CREATED_KEY) or 0)
        except redis.RedisError as exc:
            raise Unavailable(f"Redis: {exc}") from None


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (libpq adds hints and context lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
