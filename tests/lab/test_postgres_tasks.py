"""PostgreSQL tasks over real SSH on the lab's db-1 (PostgreSQL 15).

Every task runs in check mode first (nothing written: no shell write, no SQL
write, state unchanged), then twice: ``changed``, then ``ok`` with no write
command or statement in the connection's log. State is read back with psycopg
over a separate connection and with testinfra. Faults are real: a small tmpfs
mounted over /var/backups, a truncated or corrupted dump, a wrong password.
Every database and role a test creates carries its unique prefix and is
dropped afterwards (the lab's PostgreSQL lives for the whole session).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from deploykit import pg
from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Runner
from deploykit.secrets import Secret
from deploykit.task import Task, UndoStack
from deploykit.tasks import postgres
from deploykit.testing.idempotence import assert_check_mode as check
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.idempotence import writes
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

HOST = "db-1"
Admin = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    """A fresh connection per test, so that its log holds only this test's commands."""
    return lab_connection(HOST)


@pytest.fixture
def host(lab_host: Callable[[str], Any]) -> Any:
    return lab_host(HOST)


@pytest.fixture(scope="module")
def admin(lab_connection: Callable[[str], Connection]) -> Admin:
    """``admin(query, params=None, db="postgres")``: rows, over a connection of its own."""
    own = lab_connection(HOST)

    def run(query: str, params: Any = None, db: str = "postgres") -> list[tuple[Any, ...]]:
        with pg.connect(own, db) as c:
            cur = c.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    return run


@pytest.fixture
def prefix(admin: Admin, conn: Connection) -> Iterator[str]:
    """A unique name prefix; its databases, roles and backup directory go afterwards."""
    name = f"dkt{uuid.uuid4().hex[:6]}"
    yield name
    for (db,) in admin("SELECT datname FROM pg_database WHERE datname LIKE %s", [name + "%"]):
        admin(f'DROP DATABASE "{db}" WITH (FORCE)')
    for (role,) in admin("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [name + "%"]):
        admin(f'DROP OWNED BY "{role}"')
        admin(f'DROP ROLE "{role}"')
    conn.run(["rm", "-rf", "--", f"/var/backups/{name}"])








def failed(result: Result, *fragments: str) -> str:
    """Assert ``result`` failed with a message holding every fragment; return it."""
    assert result.status is Status.FAILED, result
    for fragment in fragments:
        assert fragment in result.message, result.message
    return result.message


def make_table(admin: Admin, db: str, table: str, rows: int, width: int = 1) -> None:
    """A table of ``rows`` rows made server-side (``width`` md5 strings per row)."""
    payload = " || ".join(f"md5((g * {i + 1})::text)" for i in range(width))
    admin(f"CREATE TABLE {table} AS SELECT g AS id, {payload} AS v "
          f"FROM generate_series(1, {rows}) g", db=db)


# -- role --------------------------------------------------------------------------------


def test_role_created_with_secret_password(conn: Connection, admin: Admin, prefix: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name, password = f"{prefix}_app", Secret(f"pw-{uuid.uuid4().hex}-ä")
    task = postgres.role(name, password=password, createdb=True, connection_limit=5)
    assert check(conn, task).diff == (
        "state: absent -> present\nlogin: (none) -> true\ncreatedb: (none) -> true\n"
        "connection_limit: (none) -> 5\npassword: (none) -> (secret)")
    assert admin("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]) == []
    first = apply_twice(conn, task)

    (row,) = admin("SELECT rolcanlogin, rolcreatedb, rolsuper, rolconnlimit, rolpassword "
                   "FROM pg_authid WHERE rolname = %s", [name])
    assert row[:4] == (True, True, False, 5)
    verifier = row[4]
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert postgres.scram_matches(verifier, password)
    settings = dataclasses.replace(pg.PgSettings.from_host(conn.host), user=name,
                                   password=password)
    with pg.connect(conn, "postgres", settings=settings) as session:
        assert session.execute("SELECT current_user").fetchone() == (name,)

    # the password and its verifier appear nowhere: log, result, report, logging
    report = RunReport(run_id="r", secrets=[password])
    report.add(first)
    texts = [e.command for e in conn.log] + [json.dumps(first.to_dict()), report.to_json(),
                                             caplog.text]
    for text in texts:
        assert password.reveal() not in text and verifier.split("$")[2] not in text
    assert any("PASSWORD ********" in e.command and e.write for e in conn.log)


def test_role_password_and_attributes_change_and_undo(conn: Connection, admin: Admin,
                                                      prefix: str) -> None:
    name = f"{prefix}_app"
    admin(f"CREATE ROLE {name} LOGIN PASSWORD 'pencil'")  # hashed by the server itself
    same = postgres.role(name, password=Secret("pencil"))
    mark = len(conn.log)
    assert same.run(conn).status is Status.OK  # the server's own SCRAM verifier matches
    assert writes(conn, mark) == []

    before = admin("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [name])[0][0]
    task = postgres.role(name, password=Secret("new pencil"), createdb=True, login=False)
    assert check(conn, task).diff == ("login: true -> false\ncreatedb: false -> true\n"
                                      "password: (secret) -> (new secret)")
    undo = UndoStack()
    apply_twice(conn, task, undo)
    row = admin("SELECT rolcanlogin, rolcreatedb, rolpassword FROM pg_authid "
                "WHERE rolname = %s", [name])[0]
    assert row[:2] == (False, True) and postgres.scram_matches(row[2], Secret("new pencil"))

    assert undo.unwind(conn) == ([f"restore role {name} (login, createdb, password)"], [])
    assert admin("SELECT rolcanlogin, rolcreatedb, rolpassword FROM pg_authid "
                 "WHERE rolname = %s", [name])[0] == (True, False, before)


def test_role_absent_and_recreated_by_undo(conn: Connection, admin: Admin,
                                           prefix: str) -> None:
    name = f"{prefix}_gone"
    admin(f"CREATE ROLE {name} LOGIN CREATEDB PASSWORD 'pencil'")
    verifier = admin("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [name])[0][0]
    task = postgres.role(name, state="absent")
    assert check(conn, task).diff == "state: present -> absent"
    undo = UndoStack()
    apply_twice(conn, task, undo)
    assert admin("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]) == []
    assert undo.unwind(conn) == ([f"recreate role {name} (memberships not restored)"], [])
    assert admin("SELECT rolcanlogin, rolcreatedb, rolpassword FROM pg_authid "
                 "WHERE rolname = %s", [name]) == [(True, True, verifier)]


# -- database ----------------------------------------------------------------------------


def test_database_created_owned_and_undone(conn: Connection, admin: Admin, prefix: str) -> None:
    owner, other, db = f"{prefix}_own", f"{prefix}_other", f"{prefix}_db"
    admin(f"CREATE ROLE {owner}")
    admin(f"CREATE ROLE {other}")
    task = postgres.database(db, owner=owner, encoding="utf8")
    assert check(conn, task).diff == ("state: absent -> present\nowner: (none) -> "
                                      f"{owner}\nencoding: (none) -> UTF8")
    assert admin("SELECT 1 FROM pg_database WHERE datname = %s", [db]) == []
    created = UndoStack()
    apply_twice(conn, task, created)
    assert admin("SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) "
                 "FROM pg_database WHERE datname = %s", [db]) == [(owner, "UTF8")]

    moved = postgres.database(db, owner=other)
    assert check(conn, moved).diff == f"owner: {owner} -> {other}"
    undo = UndoStack()
    apply_twice(conn, moved, undo)
    assert admin("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                 [db]) == [(other,)]
    assert undo.unwind(conn) == ([f"give database {db} back to {owner}"], [])
    assert admin("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                 [db]) == [(owner,)]

    wrong = postgres.database(db, encoding="LATIN1").run(conn)
    failed(wrong, "has encoding UTF8, not LATIN1", "cannot be changed")
    assert created.unwind(conn) == ([f"drop database {db} (created by postgres.database {db})"],
                                    [])
    assert admin("SELECT 1 FROM pg_database WHERE datname = %s", [db]) == []


def test_database_absent(conn: Connection, admin: Admin, prefix: str) -> None:
    db = f"{prefix}_drop"
    admin(f"CREATE DATABASE {db}")
    task = postgres.database(db, state="absent")
    assert check(conn, task).diff == "state: present -> absent"
    undo = UndoStack()
    apply_twice(conn, task, undo)
    assert admin("SELECT 1 FROM pg_database WHERE datname = %s", [db]) == []
    done, not_done = undo.unwind(conn)
    assert done == [] and "was dropped; restore it from a backup" in not_done[0]


# -- extension ---------------------------------------------------------------------------


def test_extension_installed_updated_and_dropped(conn: Connection, admin: Admin,
                                                 prefix: str) -> None:
    db = f"{prefix}_ext"
    admin(f"CREATE DATABASE {db}")
    task = postgres.extension("hstore", db=db, version="1.7")
    assert check(conn, task).diff == "state: absent -> present\nversion: (none) -> 1.7"
    created = UndoStack()
    apply_twice(conn, task, created)
    query = "SELECT extversion FROM pg_extension WHERE extname = 'hstore'"
    assert admin(query, db=db) == [("1.7",)]

    newer = postgres.extension("hstore", db=db, version="1.8")
    assert check(conn, newer).diff == "version: 1.7 -> 1.8"
    undo = UndoStack()
    apply_twice(conn, newer, undo)
    assert admin(query, db=db) == [("1.8",)]
    done, not_done = undo.unwind(conn)  # hstore ships no downgrade script
    assert done == [] and "no update path from version" in not_done[0]
    assert postgres.extension("hstore", db=db).run(conn).status is Status.OK  # any version

    failed(postgres.extension("no_such_ext", db=db).run(conn),
           "extension 'no_such_ext' is not available on the server (no control file; "
           f"database {db}): install the package")
    failed(postgres.extension("hstore", db=db, version="9.9").run(conn),
           "has no version '9.9'; available: 1.", f"(database {db})")

    gone = postgres.extension("hstore", db=db, state="absent")
    assert check(conn, gone).diff == "state: present -> absent"
    apply_twice(conn, gone)
    assert admin(query, db=db) == []


# -- privilege ---------------------------------------------------------------------------


def acl(admin: Admin, db: str, role: str, relation: str) -> set[str]:
    """The privileges ``role`` holds explicitly on a relation."""
    rows = admin("SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
                 "WHERE c.oid = %s::regclass AND a.grantee = %s::regrole",
                 [relation, role], db=db)
    return {r[0] for r in rows}


def test_privileges_granted_revoked_and_undone(conn: Connection, admin: Admin,
                                               prefix: str) -> None:
    db, role = f"{prefix}_priv", f"{prefix}_reader"
    admin(f"CREATE ROLE {role}")
    admin(f"CREATE DATABASE {db}")
    admin("CREATE TABLE orders (id int); CREATE TABLE items (id int); CREATE SEQUENCE s",
          db=db)

    grant = postgres.privilege(role, "select, insert", on="table", objects="orders", db=db)
    assert check(conn, grant).diff == \
        f"table public.orders privileges of {role}: (none) -> INSERT,SELECT"
    undo = UndoStack()
    apply_twice(conn, grant, undo)
    assert acl(admin, db, role, "orders") == {"SELECT", "INSERT"}

    every = postgres.privilege(role, "SELECT", on="table", objects="ALL", db=db)
    assert check(conn, every).diff == f"table public.items privileges of {role}: (none) -> SELECT"
    apply_twice(conn, every)
    assert acl(admin, db, role, "items") == {"SELECT"}

    revoke = postgres.privilege(role, "INSERT", on="table", objects=["orders"], db=db,
                                state="absent")
    assert check(conn, revoke).diff == \
        f"table public.orders privileges of {role}: INSERT,SELECT -> SELECT"
    apply_twice(conn, revoke)
    assert acl(admin, db, role, "orders") == {"SELECT"}

    apply_twice(conn, postgres.privilege(role, "USAGE", on="sequence", objects="s", db=db))
    apply_twice(conn, postgres.privilege(role, "usage", on="schema", objects="public", db=db))
    assert admin("SELECT has_schema_privilege(%s, 'public', 'USAGE'), "
                 "has_sequence_privilege(%s, 's', 'USAGE')", [role, role], db=db) == [(True, True)]

    no_public = postgres.privilege("public", "CONNECT,TEMP", on="database", objects=db,
                                   state="absent")
    assert check(conn, no_public).diff == \
        f"database {db} privileges of PUBLIC: CONNECT,TEMPORARY -> (none)"
    apply_twice(conn, no_public)
    assert admin("SELECT has_database_privilege(%s, %s, 'CONNECT')", [role, db]) == [(False,)]

    assert undo.unwind(conn)[1] == []  # the first grant's undo revokes exactly what it granted
    assert acl(admin, db, role, "orders") == set()

    failed(postgres.privilege(role, "SELECT", on="table", objects="nope", db=db).run(conn),
           f"table public.nope does not exist in database '{db}'")
    failed(postgres.privilege(f"{prefix}_ghost", "SELECT", on="table", objects="orders",
                              db=db).run(conn), f"role '{prefix}_ghost' does not exist")


# -- backup ------------------------------------------------------------------------------


def test_backup_written_verified_and_idempotent(conn: Connection, host: Any, admin: Admin,
                                                prefix: str) -> None:
    db = f"{prefix}_shop"
    admin(f"CREATE DATABASE {db}")
    make_table(admin, db, "orders", 500)
    path = f"/var/backups/{prefix}/{db}-d1.dump"
    task = postgres.backup(db, app=prefix, deploy_id="d1")
    assert check(conn, task).diff == f"backup: (none) -> {path} (pg_dump -Fc of {db})"
    assert not host.file(f"/var/backups/{prefix}").exists
    first = apply_twice(conn, task)

    dump, sidecar = host.file(path), host.file(f"{path}.sha256")
    assert dump.mode == 0o600 and sidecar.mode == 0o600 and dump.user == "root"
    assert host.file(f"/var/backups/{prefix}").mode == 0o700
    digest = host.check_output(f"sha256sum < {path}").split()[0]
    assert sidecar.content_string == f"{digest}  {db}-d1.dump\n"
    assert host.run(f"cd /var/backups/{prefix} && sha256sum -c {db}-d1.dump.sha256").rc == 0
    assert "TABLE public orders" in host.check_output(f"pg_restore --list {path}")
    assert host.check_output(f"ls -A /var/backups/{prefix}").split() == [
        f"{db}-d1.dump", f"{db}-d1.dump.sha256"]  # no temporary file left
    assert first.data == {"database": db, "deploy_id": "d1", "path": path,
                          "size": dump.size, "sha256": digest, "age": first.data["age"]}

    conn.run(["chmod", "644", path])
    loose = postgres.backup(db, app=prefix, deploy_id="d1")
    assert check(conn, loose).diff == "mode: 0644 -> 0600"
    apply_twice(conn, loose)
    assert host.file(path).mode == 0o600 and host.file(path).content == dump.content

    # a corrupted backup for the same deploy id is made again, not trusted
    conn.run(f"printf 'XX' | dd of={path} bs=1 seek=2000 conv=notrunc status=none")
    again = postgres.backup(db, app=prefix, deploy_id="d1")
    assert check(conn, again).diff.startswith(f"backup: {path} checksum mismatch: ")
    apply_twice(conn, again)
    assert host.run(f"cd /var/backups/{prefix} && sha256sum -c {db}-d1.dump.sha256").rc == 0


def test_verify_and_latest_backup(conn: Connection, host: Any, admin: Admin,
                                  prefix: str) -> None:
    db = f"{prefix}_shop"
    admin(f"CREATE DATABASE {db}")
    make_table(admin, db, "orders", 500)
    directory = f"/var/backups/{prefix}"
    failed(postgres.latest_backup(db, app=prefix).run(conn),
           f"no backup of database '{db}' in {directory} on host {HOST}")
    assert postgres.backup(db, app=prefix, deploy_id="d1").run(conn).changed
    assert postgres.backup(db, app=prefix, deploy_id="d2").run(conn).changed
    conn.run(["touch", "-d", "1 hour ago", f"{directory}/{db}-d2.dump"])

    latest = postgres.latest_backup(db, app=prefix, max_age=600).run(conn)
    assert latest.status is Status.OK, latest.message
    assert latest.data["deploy_id"] == "d1" and latest.data["path"] == f"{directory}/{db}-d1.dump"
    assert latest.data["age"] < 600
    failed(postgres.verify_backup(f"{directory}/{db}-d2.dump", max_age=1800).run(conn),
           "is 60 min old, older than 30 min")
    assert postgres.verify_backup(f"{directory}/{db}-d2.dump").run(conn).status is Status.OK

    # a corrupted copy fails verification; the original still passes
    copy = f"{directory}/{db}-copy.dump"
    original = f"{directory}/{db}-d1.dump"
    conn.run(f"cp -p {original} {copy} && "
             f"sed 's/{db}-d1.dump/{db}-copy.dump/' {original}.sha256 > {copy}.sha256 && "
             f"printf 'XXXX' | dd of={copy} bs=1 seek=3000 conv=notrunc status=none")
    mark = len(conn.log)
    message = failed(postgres.verify_backup(copy).run(conn),
                     f"backup {copy} on host {HOST} checksum mismatch: {copy}.sha256 records")
    assert "pg_dump" not in message  # the archive's header is intact: only the checksum tells
    assert writes(conn, mark) == []
    assert postgres.verify_backup(f"{directory}/{db}-d1.dump").run(conn).status is Status.OK
    conn.run(["rm", "-f", f"{copy}.sha256"])
    failed(postgres.verify_backup(copy).run(conn), f"has no checksum file {copy}.sha256")
    assert postgres.verify_backup(copy, require_checksum=False).run(conn).ok

    conn.run(f"echo 'not a dump' > {directory}/{db}-text.dump")
    failed(postgres.latest_backup(db, app=prefix).run(conn),  # the newest file is checked
           f"backup {directory}/{db}-text.dump on host {HOST} is not a pg_dump "
           "custom-format archive (pg_restore: error: input file does not appear to be a "
           "valid archive")


def test_backup_refuses_when_space_is_short_and_leaves_no_partial_file(
        conn: Connection, host: Any, admin: Admin, lab: Lab, prefix: str) -> None:
    db = f"{prefix}_big"
    admin(f"CREATE DATABASE {db}")
    make_table(admin, db, "payload", 40_000, width=3)  # a dump of about 2.5 MB
    lab.nsenter(HOST, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/var/backups"])
    try:
        size = admin("SELECT pg_database_size(%s)", [db])[0][0]
        mark = len(conn.log)
        message = failed(postgres.backup(db, app=prefix, deploy_id="d1").run(conn),
                         f"not enough free space for a backup of database '{db}' in "
                         f"/var/backups/{prefix} on host {HOST}: 1.0 MiB free, about "
                         f"{size / 1048576:.1f} MiB needed", "nothing was written")
        assert "\n" not in message
        assert writes(conn, mark) == []
        assert host.check_output("ls -A /var/backups") == ""

        # the estimate disabled, pg_dump itself runs out of space: the partial file goes
        message = failed(postgres.backup(db, app=prefix, deploy_id="d1",
                                         space_factor=0).run(conn),
                         f"backup of database '{db}' to /var/backups/{prefix}/{db}-d1.dump "
                         f"on host {HOST} failed (no partial file kept): ")
        assert "No space left on device" in message
        assert host.check_output(f"ls -A /var/backups/{prefix}") == ""
    finally:
        lab.nsenter(HOST, ["umount", "/var/backups"])
    assert postgres.backup(db, app=prefix, deploy_id="d1").run(conn).changed


def test_backup_retention(conn: Connection, host: Any, admin: Admin, prefix: str) -> None:
    db = f"{prefix}_shop"
    admin(f"CREATE DATABASE {db}")
    directory = f"/var/backups/{prefix}"
    for deploy_id, age in (("d1", "10 days ago"), ("d2", "5 days ago"), ("d3", "2 days ago")):
        assert postgres.backup(db, app=prefix, deploy_id=deploy_id).run(conn).changed
        conn.run(["touch", "-d", age, f"{directory}/{db}-{deploy_id}.dump"])
    conn.run(f"touch {directory}/notes.txt {directory}/{prefix}_other-d1.dump")

    kept = postgres.backup(db, app=prefix, deploy_id="d4", keep_last=2, keep_days=7)
    assert check(conn, kept).diff == (f"backup: (none) -> {directory}/{db}-d4.dump (pg_dump -Fc "
                                      f"of {db})\nremove: {db}-d1.dump -> (none)")
    apply_twice(conn, kept)
    listing = host.check_output(f"ls {directory}").split()
    assert listing == sorted(["notes.txt", f"{prefix}_other-d1.dump"] + [
        f"{db}-{d}.dump{x}" for d in ("d2", "d3", "d4") for x in ("", ".sha256")])

    tight = postgres.backup(db, app=prefix, deploy_id="d4", keep_last=1)
    assert check(conn, tight).diff == f"remove: {db}-d2.dump, {db}-d3.dump -> (none)"
    apply_twice(conn, tight)
    assert host.check_output(f"ls {directory}").split() == sorted([
        "notes.txt", f"{prefix}_other-d1.dump", f"{db}-d4.dump", f"{db}-d4.dump.sha256"])


def test_backup_over_tcp_with_password(conn: Connection, host: Any, admin: Admin,
                                       prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    db = f"{prefix}_tcp"
    admin(f"CREATE DATABASE {db}")
    make_table(admin, db, "orders", 100)
    task = postgres.backup(db, app=prefix, deploy_id="tcp", os_user=None)
    result = apply_twice(conn, task)
    assert "TABLE public orders" in host.check_output(f"pg_restore --list {result.data['path']}")
    password = pg.PgSettings.from_host(conn.host).password
    assert password is not None
    for text in [e.command for e in conn.log] + [json.dumps(result.to_dict()), caplog.text]:
        assert password.reveal() not in text

    no_password = dataclasses.replace(pg.PgSettings.from_host(conn.host), password=None)
    failed(postgres.backup(db, app=prefix, deploy_id="x", os_user=None,
                           settings=no_password).run(conn),
           "postgres access over TCP needs a password: set postgres_password")


# -- bad input: one clear message, nothing lost ----------------------------------------


def test_wrong_password_fails_cleanly(conn: Connection, admin: Admin, prefix: str) -> None:
    db = f"{prefix}_pw"
    admin(f"CREATE DATABASE {db}")
    wrong = Secret(f"wrong-{uuid.uuid4().hex}")
    settings = dataclasses.replace(pg.PgSettings.from_host(conn.host), password=wrong)
    for task in (postgres.role(f"{prefix}_r", settings=settings),
                 postgres.database(f"{prefix}_new", settings=settings),
                 postgres.backup(db, app=prefix, deploy_id="d1", settings=settings),
                 postgres.snapshot_counts(db, ["pg_catalog.pg_class"], settings=settings)):
        message = failed(task.run(conn), "cannot connect to PostgreSQL database",
                         "password authentication failed for user \"postgres\"")
        assert wrong.reveal() not in message and "\n" not in message
    assert admin("SELECT count(*) FROM pg_roles WHERE rolname = %s", [f"{prefix}_r"]) == [(0,)]
    assert admin("SELECT count(*) FROM pg_database WHERE datname = %s",
                 [f"{prefix}_new"]) == [(0,)]
    assert not conn.run(["test", "-e", f"/var/backups/{prefix}"], check=False).ok


def test_missing_database_fails_cleanly(conn: Connection, prefix: str) -> None:
    db = f"{prefix}_missing"
    where = f"(PostgreSQL 127.0.0.1:5432 on host {HOST})"
    failed(postgres.backup(db, app=prefix, deploy_id="d1").run(conn),
           f"database '{db}' does not exist {where}")
    assert not conn.run(["test", "-e", f"/var/backups/{prefix}"], check=False).ok
    failed(postgres.extension("hstore", db=db).run(conn),
           f"cannot connect to PostgreSQL database '{db}'", f'database "{db}" does not exist')
    failed(postgres.undo_restore(db).run(conn), f"database '{db}' does not exist {where}")



# -- restore with swap -------------------------------------------------------------------


def databases(admin: Admin, prefix: str) -> dict[str, tuple[bool, str | None]]:
    """Our databases: name -> (allows connections, comment)."""
    rows = admin("SELECT datname, datallowconn, shobj_description(oid, 'pg_database') "
                 "FROM pg_database WHERE datname LIKE %s", [prefix + "%"])
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture
def shop(conn: Connection, admin: Admin, prefix: str) -> tuple[str, str, str]:
    """A database with two tables, settings and privileges, and a verified backup of it."""
    db, reader = f"{prefix}_shop", f"{prefix}_reader"
    admin(f"CREATE ROLE {reader}")
    admin(f"CREATE DATABASE {db}")
    make_table(admin, db, "orders", 1000)
    make_table(admin, db, "items", 300)
    admin(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
    admin(f"GRANT CONNECT ON DATABASE {db} TO {reader}")
    admin(f"ALTER DATABASE {db} SET search_path = \"$user\", public, \"odd, name\"")
    admin(f"ALTER ROLE {reader} IN DATABASE {db} SET statement_timeout = '5s'")
    result = postgres.backup(db, app=prefix, deploy_id="d1").run(conn)
    assert result.changed, result.message
    return db, result.data["path"], result.data["sha256"]


def test_restore_with_swap_then_undo(conn: Connection, admin: Admin, prefix: str,
                                     lab_connection: Callable[[str], Connection],
                                     shop: tuple[str, str, str]) -> None:
    db, dump, digest = shop
    baseline = postgres.snapshot_counts(db, ["orders", "public.items"]).run(conn).data["counts"]
    assert baseline == {"orders": 1000, "public.items": 300}
    admin("DROP TABLE orders; DELETE FROM items WHERE id > 100", db=db)  # the bad deploy

    task = postgres.restore(db, dump, tables=["orders"], expect_counts=baseline,
                            assertions=["SELECT count(*) = 1000 FROM orders"], if_changed=True)
    assert check(conn, task).diff == (
        f"database: {db} as it is -> {db} restored from {dump} (sha256:{digest[:12]})\n"
        f"previous database: (none) -> kept as {db}_old_<UTC timestamp>")
    assert set(databases(admin, prefix)) == {db}
    with pg.connect(lab_connection(HOST), db) as app_session:  # an application's session
        undo = UndoStack()
        first = apply_twice(conn, task, undo)
        with pytest.raises(psycopg.OperationalError):
            app_session.execute("SELECT 1")  # terminated by the swap
    previous = first.data["previous"]
    assert 0 < first.data["swap_seconds"] < 5
    assert previous.startswith(f"{db}_old_") and first.data["counts"] == {
        "orders": 1000, "public.items": 300}
    state = databases(admin, prefix)
    assert set(state) == {db, previous}
    assert state[previous] == (True, None)  # kept, connectable (to copy rows out)
    marker = postgres.parse_marker(state[db][1])
    assert state[db][0] is True and marker is not None
    assert marker["previous"] == previous and marker["source"] == dump
    assert admin("SELECT count(*) FROM orders", db=db) == [(1000,)]
    assert admin("SELECT count(*) FROM items", db=db) == [(300,)]
    # what pg_restore without --create leaves out was carried over from the live database
    assert admin("SELECT has_database_privilege(%s, %s, 'CONNECT'), "
                 "has_database_privilege('public', %s, 'CONNECT')",
                 [f"{prefix}_reader", db, db]) == [(True, False)]
    settings = admin("SELECT r.rolname, c.setconfig FROM pg_db_role_setting c "
                     "JOIN pg_database d ON d.oid = c.setdatabase LEFT JOIN pg_roles r "
                     "ON r.oid = c.setrole WHERE d.datname = %s ORDER BY 1 NULLS FIRST", [db])
    assert settings == [(None, ['search_path="$user", public, "odd, name"']),
                        (f"{prefix}_reader", ["statement_timeout=5s"])]
    assert admin("SELECT to_regclass('orders') IS NULL, (SELECT count(*) FROM items)",
                 db=previous) == [(True, 100)]

    # the registered undo action swaps the old database back in
    (description,), not_done = undo.unwind(conn)
    assert description == f"swap database {db} back to {previous}" and not_done == []
    state = databases(admin, prefix)
    (undone,) = set(state) - {db}
    assert undone.startswith(f"{db}_undone_") and state[db] == (True, None)
    assert admin("SELECT to_regclass('orders') IS NULL", db=db) == [(True,)]
    assert postgres.undo_restore(db).run(conn).status is Status.OK  # nothing left to undo

    # restore again, then undo_restore as a task
    again = postgres.restore(db, dump).run(conn)
    assert again.changed, again.message
    swap_back = postgres.undo_restore(db)
    assert check(conn, swap_back).diff == (f"database: {db} restored from {dump} -> "
                                           f"{again.data['previous']} (as before the restore)")
    back = UndoStack()
    apply_twice(conn, swap_back, back)
    assert admin("SELECT to_regclass('orders') IS NULL", db=db) == [(True,)]
    assert len(databases(admin, prefix)) == 3  # db, the first undone copy, the second one
    # and undoing the undo puts the restored database back, its record pointing right
    assert back.unwind(conn)[1] == []
    assert admin("SELECT count(*) FROM orders", db=db) == [(1000,)]
    marker = postgres.parse_marker(databases(admin, prefix)[db][1])
    assert marker is not None and marker["previous"] in databases(admin, prefix)
    assert postgres.restore(db, dump, if_changed=True).run(conn).status is Status.OK


def test_truncated_dump_fails_and_leaves_the_database_untouched(
        conn: Connection, admin: Admin, prefix: str, lab_connection: Callable[[str], Connection],
        shop: tuple[str, str, str]) -> None:
    db, dump, _ = shop
    admin("INSERT INTO orders SELECT 5000, 'after the backup'", db=db)
    truncated = f"/var/backups/{prefix}/truncated.dump"
    conn.run(f"head -c $(( $(stat -c %s {dump}) * 2 / 3 )) {dump} > {truncated} && "
             f"cd /var/backups/{prefix} && sha256sum truncated.dump > truncated.dump.sha256")
    before = databases(admin, prefix)
    with pg.connect(lab_connection(HOST), db) as app_session:
        message = failed(postgres.restore(db, truncated).run(conn),
                         f"restore of {truncated} into database {db}_restore on host {HOST} "
                         f"failed ({db} is untouched): pg_restore: error: ")
        assert app_session.execute("SELECT count(*) FROM orders").fetchone() == (1001,)
    assert "\n" not in message
    assert databases(admin, prefix) == before  # no _restore, no _old_, comment unchanged
    assert admin("SELECT count(*) FROM orders", db=db) == [(1001,)]

    # with a checksum file that no longer matches, the dump is refused before anything
    conn.run(f"sed 's/{db}-d1.dump/truncated.dump/' {dump}.sha256 > {truncated}.sha256")
    mark = len(conn.log)
    failed(postgres.restore(db, truncated).run(conn),
           f"cannot restore database '{db}' from {truncated} on host {HOST}: the dump "
           f"checksum mismatch")
    assert writes(conn, mark) == []

    # a file that is not a dump at all
    text = f"/var/backups/{prefix}/notes.dump"
    conn.run(f"echo 'CREATE TABLE x ();' > {text}")
    failed(postgres.restore(db, text).run(conn),
           f"cannot restore database '{db}' from {text} on host {HOST}: the dump is not a "
           f"pg_dump custom-format archive (pg_restore: error: input file does not appear "
           f"to be a valid archive")
    failed(postgres.restore(db, f"/var/backups/{prefix}/nope.dump").run(conn),
           f"from /var/backups/{prefix}/nope.dump on host {HOST}: the dump does not exist")
    failed(postgres.restore(f"{prefix}_nodb", dump).run(conn),
           f"database '{prefix}_nodb' does not exist (PostgreSQL 127.0.0.1:5432 on host {HOST})")
    assert databases(admin, prefix) == before


def test_restore_verification_failure_leaves_the_database_untouched(
        conn: Connection, admin: Admin, prefix: str, shop: tuple[str, str, str]) -> None:
    db, dump, _ = shop
    before = databases(admin, prefix)
    message = failed(postgres.restore(db, dump, tables=["missing_table"],
                                      expect_counts={"orders": 999},
                                      assertions=["SELECT count(*) = 0 FROM items"]).run(conn),
                     f"the restored copy {db}_restore failed verification, so {db} is "
                     f"untouched: missing table(s): missing_table; row counts differ from the "
                     f"expected ones:", "orders       999  1000")
    assert "assertion 'SELECT count(*) = 0 FROM items' returned False" in message
    assert databases(admin, prefix) == before


# -- data checks and the runner ----------------------------------------------------------


def test_data_checks(conn: Connection, admin: Admin, prefix: str) -> None:
    db = f"{prefix}_chk"
    admin(f"CREATE DATABASE {db}")
    make_table(admin, db, "orders", 200)
    admin("CREATE SCHEMA sales; CREATE TABLE sales.leads AS SELECT 1 AS id", db=db)
    snap = postgres.snapshot_counts(db, ["orders", "sales.leads"]).run(conn)
    assert snap.status is Status.OK and snap.data == {
        "database": db, "counts": {"orders": 200, "sales.leads": 1}}
    assert writes(conn, 0) == []
    failed(postgres.snapshot_counts(db, ["orders", "nope"]).run(conn),
           f"table(s) nope do not exist in database '{db}'")

    admin("DELETE FROM orders WHERE id > 190", db=db)
    assert postgres.compare_counts(db, snap.data["counts"], tolerance=0.05).run(conn).ok
    assert postgres.compare_counts(db, snap.data["counts"], absolute=10).run(conn).ok
    result = postgres.compare_counts(db, {**snap.data["counts"], "gone": 7}).run(conn)
    message = failed(result, f"row counts in database '{db}' differ from the baseline beyond "
                             "tolerance (0 of the baseline, or 0 rows):\n")
    assert message.splitlines()[1:] == [
        "table   baseline      now   difference  allowed",
        "orders       200      190  -10 (-5.0%)       ±0",
        "gone           7  missing            -       ±0"]
    assert result.data["differences"] == [
        {"table": "orders", "baseline": 200, "now": 190, "allowed": 0},
        {"table": "gone", "baseline": 7, "now": None, "allowed": 0}]

    assert postgres.query_check(db, "SELECT 1", expect=1).run(conn).data["value"] == 1
    assert postgres.query_check(db, "SELECT 1").run(conn).ok
    assert postgres.query_check(db, "SELECT id FROM orders WHERE id < %s", params=[4],
                                expect=lambda rows: len(rows) == 3).run(conn).ok
    failed(postgres.query_check(db, "SELECT count(*) FROM orders WHERE v IS NULL",
                                expect=1).run(conn),
           f"query_check on database '{db}' (SELECT count(*) FROM orders WHERE v IS NULL) "
           "returned 0, expected 1")
    failed(postgres.query_check(db, "DELETE FROM orders").run(conn),
           "cannot execute DELETE in a read-only transaction")
    failed(postgres.query_check(db, "SELECT pg_sleep(2)", timeout=0.2).run(conn),
           "canceling statement due to statement timeout")
    assert admin("SELECT count(*) FROM orders", db=db) == [(190,)]


def test_runner_runs_postgres_steps_and_a_second_run_writes_nothing(
        lab_inventory: Inventory, admin: Admin, prefix: str) -> None:
    role, db = f"{prefix}_app", f"{prefix}_run"
    steps: list[Task] = [
        postgres.role(role, password=Secret("runner-secret")),
        postgres.database(db, owner=role),
        postgres.extension("citext", db=db),
        postgres.privilege(role, "CONNECT", on="database", objects=db),
        postgres.backup(db, app=prefix, deploy_id="r1", keep_last=3),
        postgres.snapshot_counts(db, ["pg_catalog.pg_extension"]),
        postgres.query_check(db, "SELECT 1", expect=1),
        postgres.latest_backup(db, app=prefix, max_age=3600),
    ]
    hosts = [lab_inventory.host(HOST)]
    first = Runner(steps).run(hosts)
    assert first.ok, first.to_json()
    statuses = [r.status.value for r in first.hosts[HOST].results]
    assert statuses == ["changed", "changed", "changed", "ok", "changed", "ok", "ok", "ok"]
    runner = Runner(steps)
    second = runner.run(hosts)
    assert [r.status.value for r in second.hosts[HOST].results] == ["ok"] * len(steps)
    assert [e.command for e in runner.logs[HOST] if e.write] == []
    report = json.loads(second.to_json())
    results = report["hosts"][HOST]["results"]
    assert results[5]["data"] == {"database": db, "counts": {"pg_catalog.pg_extension": 2}}
    assert results[4]["data"]["path"] == f"/var/backups/{prefix}/{db}-r1.dump"
    assert "runner-secret" not in second.to_json() + first.to_json()
