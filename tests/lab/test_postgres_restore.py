"""Restores the user asked for, on the lab's db-1 (issue 17 item 4, issue 21 "Also").

* a restore always restores (with swap), even from the dump the live database
  already came from; ``if_changed=True`` keeps the old skip;
* a dump without its ``.sha256`` is read in full by pg_restore before anything
  changes, and the result says that is how it was verified (``require_checksum``
  refuses instead);
* the database a restore set aside accepts connections (to copy rows out of it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from lab_data import admin, db1_conn, drop_prefixed  # noqa: F401 (fixtures)

from deploykit.connection import Connection
from deploykit.result import Status
from deploykit.tasks import postgres
from deploykit.testing.idempotence import writes

pytestmark = pytest.mark.lab

HOST = "db-1"






@pytest.fixture
def shop(conn: Connection) -> Iterator[tuple[str, str, str]]:
    """A database with 10 orders and a verified backup of it: (db, dump, prefix)."""
    prefix = f"dks{uuid.uuid4().hex[:6]}"
    db = f"{prefix}_shop"
    admin(conn, f"CREATE DATABASE {db}")
    admin(conn, "CREATE TABLE orders AS SELECT generate_series(1, 10) AS id", db=db)
    result = postgres.backup(db, app=prefix, deploy_id="d1").run(conn)
    assert result.changed, result.message
    yield db, str(result.data["path"]), prefix
    drop_prefixed(conn, prefix)
    conn.run(["rm", "-rf", "--", f"/var/backups/{prefix}"])


def orders(conn: Connection, db: str) -> object:
    return admin(conn, "SELECT count(*) FROM orders", db=db)[0][0]


def test_a_second_restore_of_the_same_backup_restores(conn: Connection,
                                                      shop: tuple[str, str, str]) -> None:
    db, dump, _ = shop
    first = postgres.restore(db, dump).run(conn)
    assert first.changed, first.message
    admin(conn, "INSERT INTO orders SELECT generate_series(11, 15)", db=db)  # written since
    assert orders(conn, db) == 15

    skipped = postgres.restore(db, dump, if_changed=True)
    mark = len(conn.log)
    assert skipped.run(conn).status is Status.OK  # asked to skip: skips, writes nothing
    assert writes(conn, mark) == [] and orders(conn, db) == 15

    second = postgres.restore(db, dump).run(conn)
    assert second.changed, second.message
    assert orders(conn, db) == 10  # the rows written since are gone from the live database
    previous = str(second.data["previous"])
    assert previous != first.data["previous"]
    assert orders(conn, previous) == 15  # ...and kept in the one set aside


def test_the_set_aside_database_accepts_connections(conn: Connection,
                                                    shop: tuple[str, str, str]) -> None:
    db, dump, _ = shop
    result = postgres.restore(db, dump).run(conn)
    previous = str(result.data["previous"])
    assert admin(conn, f"SELECT datallowconn FROM pg_database WHERE datname = '{previous}'"
                 ) == [(True,)]
    assert result.data["previous_accepts_connections"] is True
    assert orders(conn, previous) == 10


def test_a_dump_without_checksum_file_is_read_in_full_first(conn: Connection,
                                                            shop: tuple[str, str, str]) -> None:
    db, dump, prefix = shop
    bare = f"/var/backups/{prefix}/copied.dump"
    conn.run(f"cp {dump} {bare}")
    refused = postgres.restore(db, bare, require_checksum=True).run(conn)
    assert refused.failed and f"has no checksum file {bare}.sha256" in refused.message

    result = postgres.restore(db, bare).run(conn)
    assert result.changed, result.message
    assert result.data["verified_by"] == ("reading the whole dump with pg_restore (no "
                                          f"checksum file {bare}.sha256)")

    truncated = f"/var/backups/{prefix}/truncated.dump"
    conn.run(f"head -c $(( $(stat -c %s {dump}) - 40 )) {dump} > {truncated}")
    admin(conn, "INSERT INTO orders VALUES (99)", db=db)
    mark = len(conn.log)
    bad = postgres.restore(db, truncated).run(conn)
    assert bad.failed
    assert (f"cannot restore database '{db}' from {truncated} on host {HOST}: the dump has no "
            f"checksum file and pg_restore cannot read it in full") in bad.message
    assert writes(conn, mark) == []  # refused before anything was created or changed
    assert orders(conn, db) == 11


def test_backup_and_restore_over_tcp_access(conn: Connection,
                                            shop: tuple[str, str, str]) -> None:
    db, _, prefix = shop
    tcp = postgres.Access.tcp()
    made = postgres.backup(db, app=prefix, deploy_id="tcp1", access=tcp).run(conn)
    assert made.changed, made.message
    admin(conn, "DELETE FROM orders", db=db)
    mark = len(conn.log)
    restored = postgres.restore(db, str(made.data["path"]), access=tcp).run(conn)
    assert restored.changed, restored.message
    assert orders(conn, db) == 10
    commands = [e.command for e in conn.log[mark:]]
    assert any("pg_restore --host=127.0.0.1" in c for c in commands)
    assert not any("runuser" in c for c in commands)
