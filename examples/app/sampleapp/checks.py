"""The /health checks: PostgreSQL, Redis and free disk space.

Each check returns ``{"status": "ok"|"fail", ...}`` with its latency in
milliseconds, and an ``error`` naming the reason when it fails. The overall
status is ``ok`` only when every check is; /health then answers 200, else 503
with the failing checks listed under ``failing``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from sampleapp.config import Release, Settings
from sampleapp.store import Store, Unavailable, first_line

Check = dict[str, Any]

# v3-broken's bug: it checks a table whose migration it never shipped.
BROKEN_QUERY = "SELECT count(*) FROM item_tags"


def timed(probe: Callable[[], Check]) -> Check:
    """Run one check, turning any failure into ``status: fail`` with the reason."""
    started = time.perf_counter()
    try:
        result = {"status": "ok", **probe()}
    except (Unavailable, psycopg.Error, redis.RedisError, OSError, ValueError) as exc:
        result = {"status": "fail", "error": first_line(exc)}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def check_db(store: Store, release: Release) -> Check:
    """PostgreSQL answers a query (v3-broken: a query on a missing table)."""
    query = BROKEN_QUERY if release.fault == "health" else "SELECT 1 AS one"
    store.db(lambda cur: cur.execute(query).fetchone())
    return {}


def check_redis(store: Store) -> Check:
    """Redis answers PING."""
    if not store.redis().ping():
        raise Unavailable("Redis: PING was not answered")
    return {}


def check_disk(settings: Settings) -> Check:
    """At least ``DISK_MIN_FREE_MB`` free where the app runs."""
    free_mb = shutil.disk_usage(settings.disk_path).free // (1024 * 1024)
    if free_mb < settings.disk_min_free_mb:
        raise Unavailable(f"{free_mb} MB free on {settings.disk_path}, "
                          f"below {settings.disk_min_free_mb} MB")
    return {"free_mb": free_mb}


def health(store: Store, settings: Settings, release: Release) -> tuple[bool, dict[str, Any]]:
    """Run every check; returns ``(healthy, body)``."""
    checks = {
        "db": timed(lambda: check_db(store, release)),
        "redis": timed(lambda: check_redis(store)),
        "disk": timed(lambda: check_disk(settings)),
    }
    failing = [name for name, check in checks.items() if check["status"] != "ok"]
    body: dict[str, Any] = {"status": "fail" if failing else "ok",
                            "version": release.version, "checks": checks}
    if failing:
        body["failing"] = failing
    return not failing, body
