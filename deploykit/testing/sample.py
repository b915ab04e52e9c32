"""The sample app (examples/app) on the lab: its shared ``.env``, a project's
``deploykit.yml`` written for a test, and its databases dropped between tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from deploykit import pg
from deploykit.connection import Connection
from deploykit.inventory import Host
from deploykit.pg import url
from deploykit.secrets import Secret


def app_env(db: Host, database: str, *, header: str = "") -> Secret:
    """The sample app's ``.env``: PostgreSQL (``database``) and Redis on host ``db``.

    A Secret: it holds the database password (percent-encoded in the URL).
    """
    redis_port = db.vars.get("redis_port", 6379)
    return Secret(f"{header}DATABASE_URL={url(db, database).reveal()}\n"
                  f"REDIS_URL=redis://{db.address}:{redis_port}/0\n")


def write_config(path: Path, base: Mapping[str, Any], **changes: Any) -> Path:
    """Write a ``deploykit.yml`` at ``path``: ``base`` with ``changes`` merged one level
    deep (a mapping updates a mapping, anything else replaces). Returns ``path``."""
    data = json.loads(json.dumps(base))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def drop_databases(conn: Connection, app: str) -> None:
    """Drop the app's database and every ``<app>_*`` one (old, undone, restored) on the
    database host ``conn``, sessions and all."""
    with pg.connect(conn) as session:
        names = [str(r[0]) for r in session.execute(
            "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
            [app, f"{app}\\_%"]).fetchall()]
        for name in names:
            session.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
