"""SQLite tasks on real database files on web-1: backup, integrity check, restore, undo.

Every task runs in check mode (nothing written), then twice: ``changed``, then
``ok`` with no write command. Databases are made and read on the host with
python3's sqlite3 and the sqlite3 CLI (through testinfra, over a separate
connection). Each test works in its own directory under /srv; ``clean_lab``
empties /srv and /var/backups afterwards.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Inventory
from deploykit.result import Status
from deploykit.runner import Runner
from deploykit.shell import join
from deploykit.task import UndoStack
from deploykit.tasks import sqlite
from deploykit.testing.idempotence import assert_check_mode as check
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.idempotence import writes
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

HOST = "web-1"
ROWS = 500
MAKE_DB = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
con.executemany("INSERT INTO items (name) VALUES (?)",
                [("item %d " % i + "x" * 100,) for i in range(int(sys.argv[2]))])
con.commit()
con.close()
"""


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


@pytest.fixture
def host(lab_host: Callable[[str], Any]) -> Any:
    return lab_host(HOST)


@pytest.fixture
def db(clean_lab: Lab, host: Any) -> str:
    """A WAL-mode database of ROWS rows in a new directory under /srv (owner www-data, 0640)."""
    path = f"/srv/dk-sqlite-{uuid.uuid4().hex[:8]}/app.db"
    host.run_expect([0], join(["mkdir", "-p", path.rsplit("/", 1)[0]]))
    host.run_expect([0], join(["python3", "-c", MAKE_DB, path, str(ROWS)]))
    host.run_expect([0], join(["chown", "www-data:www-data", path]) + " && "
                    + join(["chmod", "640", path]))
    return path








def count(host: Any, path: str) -> int:
    return int(host.check_output(join(["sqlite3", path, "SELECT count(*) FROM items"])))


def corrupt(host: Any, path: str) -> None:
    """Overwrite pages 2-3 (the table's b-tree) with garbage, as a disk fault would."""
    host.run_expect([0], f"head -c 8192 /dev/urandom | dd of={path} bs=4096 seek=1 "
                         f"conv=notrunc status=none")


# -- backup ---------------------------------------------------------------------------


def test_backup_once_per_deploy_id(conn: Connection, host: Any, db: str) -> None:
    task = sqlite.backup(db, "20250101T000000-abc")
    path = "/var/backups/deploykit/sqlite/app.db.20250101T000000-abc.bak"
    assert sqlite.backup_path(db, "20250101T000000-abc") == path
    assert check(conn, task).diff == f"backup: (none) -> {path}"
    assert not host.file(path).exists
    assert apply_twice(conn, task).diff == f"backup: (none) -> {path}"

    made, sidecar = host.file(path), host.file(path + ".sha256")
    assert made.mode == 0o600 and sidecar.mode == 0o600
    assert host.file("/var/backups/deploykit/sqlite").mode == 0o700
    assert sidecar.content_string == f"{made.sha256sum}  app.db.20250101T000000-abc.bak\n"
    host.run_expect([0], "cd /var/backups/deploykit/sqlite && sha256sum -c --quiet "
                         "app.db.20250101T000000-abc.bak.sha256")
    assert count(host, path) == ROWS
    assert host.check_output(join(["sqlite3", path, "PRAGMA integrity_check"])) == "ok"
    leftovers = host.check_output("ls -A /var/backups/deploykit/sqlite").split()
    assert leftovers == [made.path.rsplit("/", 1)[1], sidecar.path.rsplit("/", 1)[1]]

    # This deploy's backup stays as it is when the database changes afterwards...
    host.run_expect([0], join(["sqlite3", db, "DELETE FROM items WHERE id > 100"]))
    assert task.run(conn).status is Status.OK and count(host, path) == ROWS
    # ...and a new deploy gets its own.
    apply_twice(conn, sqlite.backup(db, "20250102T000000-def"))
    assert count(host, path.replace("0101T000000-abc", "0102T000000-def")) == 100


def test_backup_repairs_mode_and_redoes_a_backup_that_fails_its_checksum(
        conn: Connection, host: Any, db: str) -> None:
    task = sqlite.backup(db, "d1")
    path = sqlite.backup_path(db, "d1")
    task.run(conn)
    host.run_expect([0], join(["chmod", "644", path]))
    assert apply_twice(conn, task).diff == "mode: 0644 -> 0600"
    assert host.file(path).mode == 0o600

    host.run_expect([0], f"printf 'garbage' >> {path}")
    assert apply_twice(conn, task).diff == (f"backup: {path} (does not match its .sha256) "
                                            f"-> {path}")
    assert host.file(path + ".sha256").content_string.startswith(host.file(path).sha256sum)
    assert count(host, path) == ROWS


def test_backup_of_a_missing_or_corrupt_database_fails_and_leaves_nothing(
        conn: Connection, host: Any, db: str) -> None:
    missing = sqlite.backup(db + ".nope", "d1").run(conn)
    assert missing.status is Status.FAILED
    assert missing.message == f"database {db}.nope does not exist"

    corrupt(host, db)
    failed = sqlite.backup(db, "d1").run(conn)
    assert failed.status is Status.FAILED
    assert "database disk image is malformed" in failed.message
    assert host.check_output("ls -A /var/backups/deploykit/sqlite") == ""


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid deploy id 'a b'"):
        sqlite.backup("/srv/app.db", "a b")
    with pytest.raises(ConfigError, match="database must be an absolute file path"):
        sqlite.backup("app.db", "d1")
    with pytest.raises(ConfigError, match="give either deploy_id or source"):
        sqlite.restore("/srv/app.db")
    with pytest.raises(ConfigError, match="give either deploy_id or source"):
        sqlite.restore("/srv/app.db", "d1", source="/var/backups/x.bak")


# -- integrity check ------------------------------------------------------------------


def test_integrity_check(conn: Connection, host: Any, db: str) -> None:
    good = sqlite.integrity_check(db).run(conn)
    assert good.status is Status.OK, good.message
    corrupt(host, db)
    bad = sqlite.integrity_check(db).run(conn)
    assert bad.status is Status.FAILED
    assert bad.message.startswith(f"database {db} fails PRAGMA integrity_check: ")
    absent = sqlite.integrity_check(db + ".nope").run(conn)
    assert absent.message == f"database {db}.nope does not exist"
    assert writes(conn, 0) == []


# -- restore --------------------------------------------------------------------------


def test_backup_corrupt_restore_undo(conn: Connection, host: Any, db: str) -> None:
    apply_twice(conn, sqlite.backup(db, "deploy-7"))
    backup = sqlite.backup_path(db, "deploy-7")
    corrupt(host, db)
    host.run_expect([0], f"printf 'stale wal' > {db}-wal")  # moved aside with the old copy
    broken = host.file(db).sha256sum
    assert sqlite.integrity_check(db).run(conn).status is Status.FAILED

    task = sqlite.restore(db, "deploy-7", if_changed=True)
    wanted = host.file(backup).sha256sum
    diff = f"content: sha256 {broken[:12]} -> content of {backup} (sha256 {wanted[:12]}), in place"
    assert check(conn, task).diff == diff
    assert host.file(db).sha256sum == broken

    undo = UndoStack()
    result = apply_twice(conn, task, undo)
    assert result.diff == diff
    directory = db.rsplit("/", 1)[0]
    names = host.check_output(join(["ls", "-A", directory])).split()
    old = min((n for n in names if n.startswith("app.db.old-")), key=len)
    assert re.fullmatch(r"app\.db\.old-\d{8}T\d{9}Z", old), names
    assert result.data["previous"] == f"{directory}/{old}"
    # the damaged database could not be copied cleanly: its raw files were kept
    assert host.file(f"{directory}/{old}").sha256sum == broken
    assert host.file(f"{directory}/{old}-wal").content_string == "stale wal"
    assert not [n for n in names if n.startswith(".dk-")], names

    restored = host.file(db)
    assert (restored.user, restored.group, restored.mode) == ("www-data", "www-data", 0o640)
    assert count(host, db) == ROWS
    assert sqlite.integrity_check(db).run(conn).status is Status.OK

    assert undo.unwind(conn) == ([f"put the previous {db} back (from {directory}/{old})"], [])
    assert sqlite.integrity_check(db).run(conn).status is Status.FAILED  # the damage is back
    assert not host.file(f"{directory}/{old}").exists


def test_restore_refuses_a_backup_that_fails_its_checksum(conn: Connection, host: Any,
                                                          db: str) -> None:
    sqlite.backup(db, "d1").run(conn)
    backup = sqlite.backup_path(db, "d1")
    before = host.file(db).sha256sum
    host.run_expect([0], join(["sqlite3", db, "DELETE FROM items"]))
    host.run_expect([0], f"printf x | dd of={backup} bs=1 seek=5000 conv=notrunc status=none")
    result = sqlite.restore(db, "d1").run(conn)
    assert result.status is Status.FAILED
    assert result.message == (f"backup {backup} does not match its checksum file "
                              f"{backup}.sha256: not restoring it")
    assert count(host, db) == 0 and host.file(db).sha256sum != before
    missing = sqlite.restore(db, "d2").run(conn)
    assert missing.message == f"backup {sqlite.backup_path(db, 'd2')} does not exist"
    assert len(writes(conn, 0)) == 1  # the backup itself; the refused restores wrote nothing


def test_restore_of_a_corrupt_backup_fails_and_leaves_the_database(
        conn: Connection, host: Any, db: str) -> None:
    sqlite.backup(db, "d1").run(conn)
    backup = sqlite.backup_path(db, "d1")
    corrupt(host, backup)
    host.run_expect([0], f"cd {backup.rsplit('/', 1)[0]} && sha256sum app.db.d1.bak "
                         f"> app.db.d1.bak.sha256")  # a checksum made after the damage
    host.run_expect([0], join(["sqlite3", db, "DELETE FROM items WHERE id > 10"]))
    before = host.file(db).sha256sum
    undo = UndoStack()
    result = sqlite.restore(db, "d1").run(conn, undo=undo)
    assert result.status is Status.FAILED
    assert result.message.startswith(f"restore of {db} from {backup} failed: backup {backup} "
                                     f"fails PRAGMA integrity_check: ")
    assert host.file(db).sha256sum == before and count(host, db) == 10
    assert undo.unwind(conn)[1] == []  # nothing was moved: putting back is a no-op
    assert host.file(db).sha256sum == before
    names = host.check_output(join(["ls", "-A", db.rsplit("/", 1)[0]])).split()
    assert not [n for n in names if n.startswith((".dk-", "app.db.old-"))], names


def test_runner_batches_sqlite_probes(clean_lab: Lab, lab_inventory: Inventory, db: str,
                                      host: Any) -> None:
    steps = [sqlite.backup(db, "r1"), sqlite.integrity_check(db),
             sqlite.restore(db, source=sqlite.backup_path(db, "r1"), if_changed=True)]
    first = Runner(steps).run(lab_inventory.select(HOST))
    # the database already holds the backup's content: with if_changed, nothing to restore
    assert [r.status.value for r in first.hosts[HOST].results] == ["changed", "ok", "ok"]
    assert count(host, db) == ROWS
    again = Runner(steps)
    second = again.run(lab_inventory.select(HOST))
    assert [r.status.value for r in second.hosts[HOST].results] == ["ok", "ok", "ok"]
    assert len(again.logs[HOST]) == 1  # all three probes in one round trip, no write


def test_restore_of_a_missing_database_and_its_undo(conn: Connection, host: Any,
                                                    db: str) -> None:
    sqlite.backup(db, "d1").run(conn)
    host.run_expect([0], join(["rm", db]))
    undo = UndoStack()
    result = apply_twice(conn, sqlite.restore(db, source=sqlite.backup_path(db, "d1"),
                                              if_changed=True), undo)
    assert result.diff.startswith("content: (none) -> content of ")
    assert count(host, db) == ROWS and host.file(db).mode == 0o600
    assert undo.unwind(conn) == ([f"remove the restored {db}"], [])
    assert not host.file(db).exists
