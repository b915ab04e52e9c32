"""``checks.counts`` for both engines on the lab: row counts before and after a change,
compared with a tolerance; one rule and one message (:mod:`deploykit.tasks.counts`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from lab_data import make_sqlite

from deploykit import pg
from deploykit.connection import Connection
from deploykit.shell import join
from deploykit.tasks import postgres, sqlite
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab



def test_sqlite_counts_before_and_after(clean_lab: Lab,
                                        lab_connection: Callable[[str], Connection]) -> None:
    conn = lab_connection("web-1")
    db = f"/srv/dk-counts-{uuid.uuid4().hex[:8]}/app.db"
    make_sqlite(conn, db, 500)
    before = sqlite.snapshot_counts(db, ["items"]).run(conn)
    assert before.ok and before.data["counts"] == {"items": 500}
    conn.run(join(["sqlite3", db, "DELETE FROM items WHERE id <= 10"]))
    within = sqlite.compare_counts(db, before.data["counts"], tolerance=0.05).run(conn)
    assert within.ok and within.data["counts"] == {"items": 490}
    conn.run(join(["sqlite3", db, "DELETE FROM items WHERE id <= 100"]))
    beyond = sqlite.compare_counts(db, before.data["counts"], tolerance=0.05).run(conn)
    assert beyond.failed
    assert beyond.message.startswith(f"row counts in SQLite database {db} differ from the "
                                     f"baseline beyond tolerance (0.05 of the baseline, or 0 "
                                     f"rows):\ntable")
    assert "items       500  400  -100 (-20.0%)" in beyond.message
    gone = sqlite.compare_counts(db, {"items": 500, "orders": 3}).run(conn)
    assert gone.failed and "orders" in gone.message and "missing" in gone.message
    missing = sqlite.snapshot_counts(db, ["orders"]).run(conn)
    assert missing.failed and missing.message == (f"table(s) orders do not exist in SQLite "
                                                  f"database {db}")


@pytest.fixture
def pgdb(lab_connection: Callable[[str], Connection]) -> Iterator[tuple[Connection, str]]:
    conn = lab_connection("db-1")
    name = f"dkc{uuid.uuid4().hex[:6]}"
    with pg.connect(conn) as c:
        c.execute(f"CREATE DATABASE {name}")
    with pg.connect(conn, name) as c:
        c.execute("CREATE TABLE items AS SELECT generate_series(1, 500) AS id")
    yield conn, name
    with pg.connect(conn) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_postgres_counts_use_the_same_rule(pgdb: tuple[Connection, str]) -> None:
    conn, db = pgdb
    before = postgres.snapshot_counts(db, ["items"]).run(conn)
    with pg.connect(conn, db) as c:
        c.execute("DELETE FROM items WHERE id <= 100")
    beyond = postgres.compare_counts(db, before.data["counts"], tolerance=0.05).run(conn)
    assert beyond.failed
    assert beyond.message.startswith(f"row counts in database {db!r} differ from the baseline "
                                     f"beyond tolerance (0.05 of the baseline, or 0 rows):")
    assert "items       500  400  -100 (-20.0%)" in beyond.message
