"""Helpers shared by the data tests (databases, backups, retention) on the lab."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deploykit import journal, pg
from deploykit.connection import Connection
from deploykit.shell import join


def admin(conn: Connection, query: str, params: Any = None,
          db: str = "postgres") -> list[tuple[Any, ...]]:
    """Run ``query`` on ``db`` as the admin (autocommit); its rows."""
    with pg.connect(conn, db) as c:
        c.autocommit = True
        cur = c.execute(query, params)
        return list(cur.fetchall()) if cur.description else []


def deployed(conn: Connection, app: str, deploy_id: str, result: str) -> None:
    """A deploy's start and end entries in the host's real history."""
    journal.append_history(conn, app, [
        journal.HistoryEntry(event="start", id=deploy_id, app=app, host=conn.name,
                             time="2026-01-01T00:00:00Z"),
        journal.HistoryEntry(event="end", id=deploy_id, app=app, host=conn.name,
                             time="2026-01-01T00:01:00Z", result=result)])


def drop_prefixed(conn: Connection, prefix: str) -> None:
    """Drop every database whose name starts with ``prefix``."""
    for (name,) in admin(conn, "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                         [prefix]):
        admin(conn, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(name="conn")
def db1_conn(lab_connection: Callable[[str], Connection]) -> Connection:
    """A fresh connection to db-1 (import this function to get the ``conn`` fixture)."""
    return lab_connection("db-1")


@pytest.fixture(name="prefix")
def data_prefix(conn: Connection) -> Iterator[str]:
    """A unique app and database name prefix; its databases, backups and history go
    afterwards (import this function to get the ``prefix`` fixture)."""
    name = f"dkd{uuid.uuid4().hex[:6]}"
    yield name
    drop_prefixed(conn, name)
    conn.run(["rm", "-rf", "--", f"/var/backups/{name}", journal.state_dir(name)])


MAKE_SQLITE = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
con.executemany("INSERT INTO items (id) VALUES (?)",
                [(i,) for i in range(1, int(sys.argv[2]) + 1)])
con.commit()
"""


def make_sqlite(conn: Connection, path: str, rows: int) -> None:
    """A SQLite database at ``path`` (directory made) with ``rows`` rows in ``items``."""
    conn.run(join(["mkdir", "-p", path.rsplit("/", 1)[0]]) + " && "
             + join(["python3", "-c", MAKE_SQLITE, path, str(rows)]))
