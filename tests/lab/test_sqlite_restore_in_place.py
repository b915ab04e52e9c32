"""A SQLite restore happens in place: a running reader keeps its connection and sees the
restored data without a restart (issue 19), on the lab's web-1.

A reader process on the host holds one connection open and counts rows in a
bounded loop (at most 60 s, until a stop file appears) while the restore runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from deploykit.connection import Connection
from deploykit.result import Status
from deploykit.shell import join
from deploykit.task import UndoStack
from deploykit.tasks import sqlite
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

HOST = "web-1"
MAKE_DB = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
con.executemany("INSERT INTO items (name) VALUES (?)", [("item %d" % i,) for i in range(500)])
con.commit()
"""
READER = """
import os, sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=10)
out = open(sys.argv[2], "w", buffering=1)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not os.path.exists(sys.argv[3]):
    try:
        out.write("ok %d\\n" % con.execute("SELECT count(*) FROM items").fetchone()[0])
    except sqlite3.Error as exc:
        out.write("error %s\\n" % exc)
    time.sleep(0.02)
out.write("done\\n")
"""


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


def sh(conn: Connection, command: str) -> str:
    return conn.run(command).stdout


def test_restore_in_place_under_a_running_reader(clean_lab: Lab, conn: Connection,
                                                 lab_host: Callable[[str], Any]) -> None:
    directory = f"/srv/dk-sqlite-{uuid.uuid4().hex[:8]}"
    db, log, stop = f"{directory}/app.db", f"{directory}/reader.log", f"{directory}/stop"
    sh(conn, join(["mkdir", "-p", directory]) + " && " + join(["python3", "-c", MAKE_DB, db]))
    assert sqlite.backup(db, "d1").run(conn).changed
    sh(conn, join(["sqlite3", db, "DELETE FROM items WHERE id > 100"]))

    pid = sh(conn, join(["python3", "-c", READER, db, log, stop])
             + " > /dev/null 2>&1 < /dev/null & echo $!").strip()
    try:
        for _ in range(100):  # the reader has seen the damaged table
            if "ok 100" in sh(conn, f"cat {log} 2>/dev/null || true"):
                break
            time.sleep(0.1)
        undo = UndoStack()
        result = sqlite.restore(db, "d1").run(conn, undo=undo)
        assert result.changed, result.message
        for _ in range(100):  # ...and then the restored one, on the same connection
            if sh(conn, f"tail -n 1 {log}").strip() == "ok 500":
                break
            time.sleep(0.1)
        assert sh(conn, f"tail -n 1 {log}").strip() == "ok 500"
        assert int(sh(conn, join(["sqlite3", db, "SELECT count(*) FROM items"]))) == 500
        # the content replaced is kept beside it, readable
        old = str(result.data["previous"])
        assert int(sh(conn, join(["sqlite3", old, "SELECT count(*) FROM items"]))) == 100

        # undo puts the previous content back, in place too: the reader follows again
        assert undo.unwind(conn)[1] == []
        for _ in range(100):
            if sh(conn, f"tail -n 1 {log}").strip() == "ok 100":
                break
            time.sleep(0.1)
        assert sh(conn, f"tail -n 1 {log}").strip() == "ok 100"
    finally:
        sh(conn, f"touch {stop}")
        for _ in range(50):
            if conn.run(f"kill -0 {pid}", check=False).failed:
                break
            time.sleep(0.1)
        conn.run(f"kill {pid}", check=False)
    lines = sh(conn, f"cat {log}").split("\n")
    assert not [line for line in lines if line.startswith("error")], lines[-20:]
    assert lines[-2] == "done"  # the reader never had to reconnect or restart


def test_restore_when_asked_even_of_the_same_backup(clean_lab: Lab, conn: Connection) -> None:
    directory = f"/srv/dk-sqlite-{uuid.uuid4().hex[:8]}"
    db = f"{directory}/app.db"
    sh(conn, join(["mkdir", "-p", directory]) + " && " + join(["python3", "-c", MAKE_DB, db]))
    sqlite.backup(db, "d1").run(conn)
    assert sqlite.restore(db, "d1").run(conn).changed
    sh(conn, join(["sqlite3", db, "INSERT INTO items (name) VALUES ('after')"]))
    assert sqlite.restore(db, "d1", if_changed=True).run(conn).changed  # it did change
    assert sqlite.restore(db, "d1", if_changed=True).run(conn).status is Status.OK
    sh(conn, join(["sqlite3", db, "INSERT INTO items (name) VALUES ('after')"]))
    again = sqlite.restore(db, "d1").run(conn)
    assert again.changed
    assert int(sh(conn, join(["sqlite3", db, "SELECT count(*) FROM items"]))) == 500
    assert int(sh(conn, join(["sqlite3", str(again.data["previous"]),
                              "SELECT count(*) FROM items"]))) == 501
