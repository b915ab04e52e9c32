"""The WSGI application: ``sampleapp.web:application``.

=======================  ====================================================
``GET /health``          checks db, redis, disk: 200 ``{"status": "ok"}`` or
                         503 ``{"status": "fail", "failing": [...]}``
``GET /version``         ``{"version", "release", "features"}``
``GET /api/items``       the newest 100 items
``POST /api/items``      ``{"name": "...", "note": "..."}`` -> 201 and the item
                         (``note`` from v2 on)
``GET /api/items/<id>``  one item (new in v2), 404 when there is none
``GET /api/stats``       item count (PostgreSQL), items created (Redis)
=======================  ====================================================

Errors are JSON too: 400 for a bad body, 404, 405, 500 for a database error
(a schema older than the code), 503 when PostgreSQL or Redis is unavailable.
v4-slow adds ``delay_ms`` to /api/* and /version (not to /health); v5-crash
raises while this module is imported, so the server exits.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg

from sampleapp import checks
from sampleapp.config import load_release, load_settings
from sampleapp.store import Store, Unavailable, first_line

StartResponse = Callable[..., Any]
Response = tuple[int, Any]

RELEASE = load_release(Path(__file__).resolve().parent.parent)
if RELEASE.fault == "crash":
    raise RuntimeError(f"sampleapp {RELEASE.version}: startup self-check failed, exiting "
                       "(this version is built to crash at start)")
SETTINGS = load_settings()
STORE = Store(SETTINGS)

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}
MAX_BODY = 64 * 1024
ITEM_ID = re.compile(r"/api/items/(\d{1,18})")


class HttpError(Exception):
    """An error answer: status code and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def item_columns() -> str:
    """The item columns this version reads and returns."""
    return "id, name, created_at" + (", note" if RELEASE.has("notes") else "")


def as_json(item: dict[str, Any]) -> dict[str, Any]:
    """An item row as JSON data."""
    return {**item, "created_at": item["created_at"].isoformat()}


def read_json(environ: dict[str, Any]) -> dict[str, Any]:
    """The request body as a JSON object (400/413 otherwise)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length > MAX_BODY:
        raise HttpError(413, f"body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(environ["wsgi.input"].read(length) or b"null")
    except ValueError:
        raise HttpError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, *, required: bool) -> str:
    """A string field of the body, 1 (if required) to 200 characters."""
    value = body.get(name, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > 200:
        raise HttpError(400, f"{name!r} must be a string of 1 to 200 characters"
                        if required else f"{name!r} must be a string of at most 200 characters")
    return value


# -- endpoints -------------------------------------------------------------------


def one_row(sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
    """The first row of a query, or None."""
    return STORE.db(lambda cur: cur.execute(sql, params).fetchone())


def list_items(environ: dict[str, Any]) -> Response:
    rows = STORE.db(lambda cur: cur.execute(
        f"SELECT {item_columns()} FROM items ORDER BY id DESC LIMIT 100").fetchall())
    return 200, {"items": [as_json(r) for r in rows]}


def create_item(environ: dict[str, Any]) -> Response:
    body = read_json(environ)
    values = {"name": text_field(body, "name", required=True)}
    if RELEASE.has("notes"):
        values["note"] = text_field(body, "note", required=False)
    row = one_row(f"INSERT INTO items ({', '.join(values)}) "
                  f"VALUES ({', '.join(['%s'] * len(values))}) RETURNING {item_columns()}",
                  tuple(values.values()))
    assert row is not None  # INSERT ... RETURNING gives one row
    STORE.count_created()
    return 201, as_json(row)


def get_item(item_id: int) -> Response:
    row = one_row(f"SELECT {item_columns()} FROM items WHERE id = %s", (item_id,))
    if row is None:
        raise HttpError(404, f"no item {item_id}")
    return 200, as_json(row)


def stats(environ: dict[str, Any]) -> Response:
    count = one_row("SELECT count(*) AS n FROM items")
    assert count is not None
    return 200, {"items": count["n"], "created_total": STORE.created_total()}


def version(environ: dict[str, Any]) -> Response:
    return 200, {"version": RELEASE.version, "release": RELEASE.release_id,
                 "features": sorted(RELEASE.features)}


def health(environ: dict[str, Any]) -> Response:
    healthy, body = checks.health(STORE, SETTINGS, RELEASE)
    return (200 if healthy else 503), body


ROUTES: dict[tuple[str, str], Callable[[dict[str, Any]], Response]] = {
    ("GET", "/health"): health,
    ("GET", "/version"): version,
    ("GET", "/api/items"): list_items,
    ("POST", "/api/items"): create_item,
    ("GET", "/api/stats"): stats,
}
SLOW_PREFIXES = ("/api/", "/version")


def dispatch(environ: dict[str, Any]) -> Response:
    """Route a request to its handler; ``(status, body)``."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
    if RELEASE.fault == "slow" and path.startswith(SLOW_PREFIXES):
        time.sleep(RELEASE.delay_ms / 1000)
    handler = ROUTES.get((method, path))
    if handler is not None:
        return handler(environ)
    match = ITEM_ID.fullmatch(path)
    if match and RELEASE.has("notes"):
        if method != "GET":
            raise HttpError(405, f"{method} not allowed on {path}")
        return get_item(int(match.group(1)))
    if any(p == path for _, p in ROUTES):
        raise HttpError(405, f"{method} not allowed on {path}")
    raise HttpError(404, f"no route for {path}")


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    try:
        status, body = dispatch(environ)
    except HttpError as exc:
        status, body = exc.status, {"error": str(exc)}
    except Unavailable as exc:
        status, body = 503, {"error": str(exc)}
    except psycopg.Error as exc:  # e.g. a schema older than this version expects
        status, body = 500, {"error": f"database error: {first_line(exc)}"}
    data = json.dumps(body).encode()
    start_response(f"{status} {REASONS.get(status, '')}".rstrip(),
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
