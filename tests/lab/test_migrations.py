"""Migration tasks against the real PostgreSQL 15 of db-1, over real SSH.

SQL migrations run from the fixture directories in tests/fixtures/migrations/
through an SSH port forward. Each test gets its own database (dropped
afterwards: PostgreSQL outlives a test) and a fresh Connection for the task,
so that its log holds only the task's SSH commands; state is read back over a
separate connection. The alembic adapter runs a real alembic project
(tests/fixtures/alembic/) in a venv built once on db-1 from the offline
wheelhouse; the command adapter runs a small shell "tool" from the fixtures.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from deploykit import pg
from deploykit.connection import Connection
from deploykit.inventory import Inventory
from deploykit.result import Result, Status
from deploykit.runner import Runner
from deploykit.secrets import Secret
from deploykit.task import UndoStack
from deploykit.tasks import migrations, system
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.idempotence import writes

pytestmark = pytest.mark.lab

HOST = "db-1"
ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BASIC = FIXTURES / "migrations" / "basic"
BROKEN = FIXTURES / "migrations" / "broken"
CONCURRENT = FIXTURES / "migrations" / "concurrent"
WHEELHOUSE = ROOT / ".cache" / "wheelhouse"
PG_LOG = "/var/log/postgresql/postgresql-15-main.log"

Query = Callable[..., list[tuple[Any, ...]]]


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    """A fresh connection for the task under test: its log holds only that task's commands."""
    return lab_connection(HOST)


@pytest.fixture(scope="module")
def admin(lab_connection: Callable[[str], Connection]) -> Connection:
    """A separate connection to db-1 for setting up and reading back state."""
    return lab_connection(HOST)


def _create_database(admin: Connection) -> str:
    name = f"dkmg_{uuid.uuid4().hex[:10]}"
    with pg.connect(admin) as session:
        session.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def _drop_database(admin: Connection, name: str) -> None:
    with pg.connect(admin) as session:
        session.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                        .format(sql.Identifier(name)))


@pytest.fixture
def database(admin: Connection) -> Iterator[str]:
    """A new empty database on db-1, dropped after the test."""
    name = _create_database(admin)
    try:
        yield name
    finally:
        _drop_database(admin, name)


@pytest.fixture
def query(admin: Connection, database: str) -> Query:
    """``query(sql, *params)``: rows from the test's database, over the admin connection."""
    def run(text: str, *params: Any) -> list[tuple[Any, ...]]:
        with pg.connect(admin, database) as session:
            cursor = session.execute(text.encode(), params or None)
            return cursor.fetchall() if cursor.description else []
    return run




def recorded(query: Query) -> list[tuple[int, str]]:
    """``schema_migrations`` as (version, name), in order."""
    return [(int(v), str(n)) for v, n in
            query("SELECT version, name FROM schema_migrations ORDER BY version")]


def exists(query: Query, relation: str) -> bool:
    return query("SELECT to_regclass(%s) IS NOT NULL", relation)[0][0] is True


def columns(query: Query, table: str) -> list[str]:
    return [r[0] for r in query("SELECT column_name FROM information_schema.columns "
                                "WHERE table_name = %s ORDER BY ordinal_position", table)]




ALL_BASIC = ["0001_create_accounts", "0002_add_email", "0003_create_orders"]
PROBE = ('SELECT version, name, checksum, applied_at::text, deploy_id FROM "schema_migrations" '
         'ORDER BY version')


# -- SQL migrations ----------------------------------------------------------------------------


def test_check_mode_lists_pending_and_changes_nothing(conn: Connection, database: str,
                                                      query: Query) -> None:
    result = migrations.migrate(BASIC, database=database).run(conn, check=True)
    assert result.status is Status.CHANGED and result.check
    assert result.message == "would change (check mode)"
    assert result.data["pending"] == ALL_BASIC
    assert result.diff == "\n".join(f"{m}: pending -> applied" for m in ALL_BASIC)
    # the probe: one SQL read, not one SSH command
    assert [(e.command, e.write) for e in conn.log] == [(f"sql {database}: {PROBE}", False)]
    assert not exists(query, "schema_migrations") and not exists(query, "accounts")


def test_migrate_applies_then_a_noop_is_one_sql_statement_and_no_ssh_command(
        conn: Connection, admin: Connection, database: str, query: Query) -> None:
    task = migrations.migrate(BASIC, database=database, deploy_id="deploy-1")
    first = apply_twice(conn, task)
    assert first.data["ran"] == ALL_BASIC and first.data["pending"] == ALL_BASIC
    assert (first.data["before"], first.data["after"]) == (None, "0003_create_orders")
    assert first.message == f"applied {', '.join(ALL_BASIC)}"
    ran = [e.command.split(": ", 1)[1] for e in conn.log if e.write]
    assert [c for c in ran if c.startswith("\\i ")] == [
        f"\\i {BASIC / m}.up.sql" for m in ALL_BASIC]
    assert len(ran) == 1 + 2 * len(ALL_BASIC)  # the table, then each file and its row

    rows = query("SELECT version, name, checksum, deploy_id, applied_at IS NOT NULL "
                 "FROM schema_migrations ORDER BY version")
    assert rows == [(i + 1, m.split("_", 1)[1],
                     hashlib.sha256((BASIC / f"{m}.up.sql").read_bytes()).hexdigest(),
                     "deploy-1", True) for i, m in enumerate(ALL_BASIC)]
    # the files ran as written: '%' and ';' in a value, a trigger function body
    assert query("SELECT login FROM accounts ORDER BY id") == [("admin",), ("50%; off",)]
    query("UPDATE accounts SET email = 'ADMIN@EXAMPLE.ORG' WHERE login = 'admin'")
    assert query("SELECT email FROM accounts WHERE login = 'admin'") == [("admin@example.org",)]
    assert exists(query, "orders_account_id")

    # A no-op: count the SQL statements the server saw (logged for this database only)
    with pg.connect(admin) as session:
        session.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'")
                        .format(sql.Identifier(database)))
    size = int(admin.run(["stat", "-c", "%s", PG_LOG], write=False).stdout)
    mark = len(conn.log)
    again = task.run(conn)
    assert again.status is Status.OK and again.data["ran"] == []
    assert [(e.command, e.write) for e in conn.log[mark:]] == [
        (f"sql {database}: {PROBE}", False)]  # no SSH command, one SQL read
    logged = admin.run(["tail", "-c", f"+{size + 1}", PG_LOG], write=False).stdout
    statements = re.findall(r"LOG:  (?:statement|execute [^:]*): (.*)", logged)
    assert statements == [PROBE]


def test_to_applies_part_and_a_later_run_the_rest(conn: Connection, database: str,
                                                  query: Query) -> None:
    first = apply_twice(conn, migrations.migrate(BASIC, database=database, to="0002"))
    assert first.data["ran"] == ALL_BASIC[:2]
    assert recorded(query) == [(1, "create_accounts"), (2, "add_email")]
    assert not exists(query, "orders")
    assert migrations.migrate(BASIC, database=database, to=1).run(conn).status is Status.OK
    rest = apply_twice(conn, migrations.migrate(BASIC, database=database))
    assert rest.data["ran"] == ["0003_create_orders"]
    assert rest.data["before"] == "0002_add_email"
    assert rest.data["after"] == "0003_create_orders"
    assert exists(query, "orders")


def test_rollback_one_step_then_to_a_version_and_undo(conn: Connection, database: str,
                                                      query: Query) -> None:
    migrations.migrate(BASIC, database=database).run(conn)
    one = migrations.rollback(BASIC, database=database, steps=1)
    check = one.run(conn, check=True)
    assert check.status is Status.CHANGED
    assert check.diff == "0003_create_orders: applied -> rolled back"
    assert exists(query, "orders")  # check mode changed nothing

    result = one.run(conn)
    assert result.status is Status.CHANGED, result.message
    assert result.message == "rolled back 0003_create_orders"
    assert result.data["ran"] == ["0003_create_orders"]
    assert not exists(query, "orders") and exists(query, "accounts")
    assert recorded(query) == [(1, "create_accounts"), (2, "add_email")]

    undo = UndoStack()
    down = apply_twice(conn, migrations.rollback(BASIC, database=database, to=1), undo)
    assert down.data["ran"] == ["0002_add_email"]
    assert columns(query, "accounts") == ["id", "login", "created_at"]
    assert query("SELECT count(*) FROM pg_proc WHERE proname = 'accounts_lower_email'") == [(0,)]
    assert recorded(query) == [(1, "create_accounts")]

    undone, failed = undo.unwind(conn)  # re-applies 0002 with its up file
    assert (len(undone), failed) == (1, [])
    assert recorded(query) == [(1, "create_accounts"), (2, "add_email")]
    assert "email" in columns(query, "accounts")


def test_a_changed_checksum_fails_before_anything_runs(conn: Connection, database: str,
                                                       query: Query, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(BASIC, tmp_path / "migrations"))
    migrations.migrate(directory, database=database, to=2).run(conn)
    changed = directory / "0002_add_email.up.sql"
    changed.write_text(changed.read_text().replace("email text", "email varchar(200)"))
    task = migrations.migrate(directory, database=database)
    mark = len(conn.log)
    for check in (True, False):
        result = task.run(conn, check=check)
        assert result.status is Status.FAILED
        assert result.message.startswith(f"{changed}: changed after it was applied (checksum ")
        assert "write a new migration instead" in result.message
    assert writes(conn, mark) == [] and not exists(query, "orders")
    assert recorded(query) == [(1, "create_accounts"), (2, "add_email")]


def test_a_failing_migration_is_rolled_back_alone_and_named_by_file_and_line(
        conn: Connection, database: str, query: Query) -> None:
    undo = UndoStack()
    result = migrations.migrate(BROKEN, database=database).run(conn, undo=undo)
    assert result.status is Status.FAILED
    bad = BROKEN / "0003_bad_syntax.up.sql"
    assert result.message.startswith(
        f'0003_bad_syntax (up) failed and was rolled back: {bad}:6:45: syntax error at or near '
        f'"CHEK"')
    assert result.message.endswith("(applied before the failure, in their own transactions: "
                                   "0001_create_items, 0002_add_price)")
    assert result.data["ran"] == ["0001_create_items", "0002_add_price"]
    # the earlier ones committed, the failing one left nothing, the later one never ran
    assert recorded(query) == [(1, "create_items"), (2, "add_price")]
    assert columns(query, "items") == ["id", "label", "price"]
    assert not exists(query, "item_tags") and not exists(query, "never_reached")

    undone, failed = undo.unwind(conn)  # the runner's undo: down files of 0002, then 0001
    assert failed == [] and len(undone) == 1
    assert recorded(query) == [] and not exists(query, "items")


def test_a_migration_commits_together_with_its_row(conn: Connection, database: str,
                                                  query: Query, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    shutil.copy(BROKEN / "0001_create_items.up.sql", directory)
    # valid SQL, but it makes its own schema_migrations row impossible
    (directory / "0002_blocks_its_row.up.sql").write_text(
        "CREATE TABLE side_effect (id int);\n"
        "ALTER TABLE schema_migrations ADD CONSTRAINT no_v2 CHECK (version <> 2);\n")
    result = migrations.migrate(directory, database=database).run(conn)
    assert result.status is Status.FAILED
    assert result.message.startswith(
        f"0002_blocks_its_row (up) failed and was rolled back: "
        f"{directory / '0002_blocks_its_row.up.sql'} ran, but updating schema_migrations failed: "
        f'new row for relation "schema_migrations" violates check constraint "no_v2"')
    assert recorded(query) == [(1, "create_items")]
    assert not exists(query, "side_effect")
    assert query("SELECT count(*) FROM pg_constraint WHERE conname = 'no_v2'") == [(0,)]


def test_undo_stops_at_a_migration_without_down_file(conn: Connection, database: str,
                                                     query: Query, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(BASIC, tmp_path / "migrations"))
    (directory / "0001_create_accounts.down.sql").unlink()
    undo = UndoStack()
    migrations.migrate(directory, database=database).run(conn, undo=undo)
    undone, failed = undo.unwind(conn)
    assert undone == []
    assert len(failed) == 1
    assert failed[0].endswith("0001_create_accounts has no down file: 0001_create_accounts stay "
                              "applied (0003_create_orders, 0002_add_email rolled back); "
                              "restore the database from a backup if they must go")
    assert recorded(query) == [(1, "create_accounts")]
    assert columns(query, "accounts") == ["id", "login", "created_at"]


def test_two_concurrent_runs_apply_each_migration_exactly_once(
        lab_connection: Callable[[str], Connection], database: str, query: Query) -> None:
    start = threading.Barrier(2)
    results: dict[str, Result] = {}

    def run(deploy_id: str) -> None:
        conn = lab_connection(HOST)
        conn.open()
        start.wait()
        task = migrations.migrate(CONCURRENT, database=database, deploy_id=deploy_id)
        results[deploy_id] = task.run(conn)

    threads = [threading.Thread(target=run, args=(f"run-{i}",)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(not r.failed for r in results.values()), [r.message for r in results.values()]
    winner, loser = sorted(results.values(), key=lambda r: -len(r.data["ran"]))
    assert winner.status is Status.CHANGED
    assert winner.data["ran"] == ["0001_create_ledger", "0002_slow", "0003_after_slow"]
    assert loser.data["ran"] == []
    assert loser.status is Status.OK
    # both probed at once: the loser saw three pending, waited for the lock, found none left
    assert len(loser.data["pending"]) == 3, loser.data
    assert loser.message.startswith("nothing left to do: another run did it")
    assert loser.data["lock_waited"] > 0.3
    assert query("SELECT version, count(*) FROM ledger GROUP BY version ORDER BY version") == [
        (1, 1), (2, 1), (3, 1)]
    assert query("SELECT count(DISTINCT backend_pid) FROM ledger") == [(1,)]
    assert query("SELECT DISTINCT deploy_id FROM schema_migrations") == [
        (winner.data["deploy_id"],)]
    assert [v for v, _ in recorded(query)] == [1, 2, 3]


def test_a_held_lock_fails_the_run_after_lock_timeout_naming_the_holder(
        conn: Connection, admin: Connection, database: str, query: Query) -> None:
    key = migrations.sql._lock_key("schema_migrations")
    with pg.connect(admin, database) as holder:
        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        result = migrations.migrate(BASIC, database=database, lock_timeout=0.5).run(conn)
    assert result.status is Status.FAILED
    assert re.fullmatch(rf"another run has held the migration lock of schema_migrations for "
                        rf"over 0\.5 s \(held by pid {pid} from \S+, connected .+\)",
                        result.message), result.message
    assert not exists(query, "schema_migrations")


def test_runner_unwinds_the_migrations_when_a_later_step_fails(
        lab_inventory: Inventory, database: str, query: Query) -> None:
    steps = [migrations.migrate(BASIC, database=database, name="migrate shop"),
             system.command("exit 7", name="smoke test")]
    runner = Runner(steps)
    report = runner.run([lab_inventory.host(HOST)])
    host = report.hosts[HOST]
    assert [r.status for r in host.results] == [Status.CHANGED, Status.FAILED]
    assert host.undone == ["roll back what migrate shop applied"] and host.undo_failed == []
    assert recorded(query) == [] and not exists(query, "accounts")

    assert Runner(steps[:1]).run([lab_inventory.host(HOST)]).ok
    noop = Runner(steps[:1])
    assert noop.run([lab_inventory.host(HOST)]).hosts[HOST].results[0].status is Status.OK
    # no shell command at all (nothing to batch for a SQL-only step): one SQL read
    assert [(c.command, c.write) for c in noop.logs[HOST]] == [(f"sql {database}: {PROBE}",
                                                                 False)]


def test_runner_batches_the_command_adapter_probe(lab_inventory: Inventory, tool: str) -> None:
    task = tool_task(tool)
    assert Runner([task]).run([lab_inventory.host(HOST)]).hosts[HOST].results[0].changed
    noop = Runner([task])
    result = noop.run([lab_inventory.host(HOST)]).hosts[HOST].results[0]
    assert result.status is Status.OK and result.data["before"] == "0002_avatars"
    assert len(noop.logs[HOST]) == 1 and not noop.logs[HOST][0].write  # one round trip


# -- alembic on the host -----------------------------------------------------------------------

ALEMBIC_HOME = "/srv/dkmg-alembic"
ALEMBIC = f"{ALEMBIC_HOME}/venv/bin/alembic -c {ALEMBIC_HOME}/project/alembic.ini"


def _tarball(entries: dict[str, Path]) -> bytes:
    """A tar.gz of local files and directories, each under its archive name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, path in entries.items():
            tar.add(path, arcname=name, filter=lambda i: None if "__pycache__" in i.name else i)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def alembic_venv(admin: Connection) -> Iterator[str]:
    """A venv with alembic on db-1, from the offline wheelhouse, plus the alembic project."""
    wheels = sorted(WHEELHOUSE.glob("*.whl"))
    if not wheels:
        pytest.fail(f"no wheels in {WHEELHOUSE}: run scripts/bootstrap.sh")
    requirements = FIXTURES / "alembic" / "requirements.txt"
    admin.run(["mkdir", "-p", ALEMBIC_HOME])
    admin.put(_tarball({"wheels": WHEELHOUSE, "project": FIXTURES / "alembic"}),
              f"{ALEMBIC_HOME}/bundle.tar.gz")
    try:
        admin.run(f"set -e; cd {ALEMBIC_HOME}; tar -xzf bundle.tar.gz; "
                  f"/usr/bin/python3 -m venv venv; "
                  f"venv/bin/pip install -q --no-index --find-links wheels "
                  f"-r project/{requirements.name}", timeout=300)
        yield ALEMBIC
    finally:
        admin.run(["rm", "-rf", "--", ALEMBIC_HOME])


def database_url(admin: Connection, database: str) -> Secret:
    """The project's DATABASE_URL: the postgres role through 127.0.0.1 on the host."""
    password = pg.PgSettings.from_host(admin.host).password
    assert password is not None
    return Secret(f"postgresql+psycopg://postgres:{password.reveal()}@127.0.0.1:5432/{database}")


def test_alembic_upgrade_head_then_ok_then_downgrade_one(
        conn: Connection, admin: Connection, database: str, query: Query,
        alembic_venv: str) -> None:
    url = database_url(admin, database)
    env = {"DATABASE_URL": url}
    upgrade = migrations.alembic_migrate(alembic_venv, "head", env=env)

    check = upgrade.run(conn, check=True)
    assert check.status is Status.CHANGED and check.diff == "revision: base -> head"
    assert writes(conn) == [] and not exists(query, "alembic_version")

    first = apply_twice(conn, upgrade)
    assert (first.data["before"], first.data["after"]) == ([], ["c0ffee000002"])
    assert first.diff == "revision: base -> head"
    assert "Running upgrade c0ffee000001 -> c0ffee000002, add notes.title" in \
        first.data["stderr"]
    assert columns(query, "notes") == ["id", "body", "title"]
    assert query("SELECT version_num FROM alembic_version") == [("c0ffee000002",)]
    mark = len(conn.log)
    heads = migrations.alembic_migrate(alembic_venv, "heads", env=env).run(conn)
    assert heads.status is Status.OK and heads.data["after"] == ["c0ffee000002"]
    assert writes(conn, mark) == []

    down = migrations.alembic_downgrade(alembic_venv, "-1", env=env).run(conn)
    assert down.status is Status.CHANGED, down.message
    assert (down.data["before"], down.data["after"]) == (["c0ffee000002"], ["c0ffee000001"])
    assert columns(query, "notes") == ["id", "body"]

    # the password went to the host in the environment, never into a log or a result
    password = url.reveal().split(":")[2].split("@")[0]
    assert all(password not in e.command for e in conn.log)
    for result in (check, first, heads, down):  # raw fields, before any report redaction
        assert password not in f"{result.message} {result.diff} {result.data}"


def test_alembic_upgrade_undo_downgrades_to_the_revision_before(
        conn: Connection, admin: Connection, database: str, query: Query,
        alembic_venv: str) -> None:
    env = {"DATABASE_URL": database_url(admin, database)}
    migrations.alembic_migrate(alembic_venv, "c0ffee000001", env=env).run(conn)
    undo = UndoStack()
    result = migrations.alembic_migrate(alembic_venv, env=env).run(conn, undo=undo)
    assert result.data["before"] == ["c0ffee000001"] and result.data["after"] == ["c0ffee000002"]
    undone, failed = undo.unwind(conn)
    assert failed == [] and undone == [f"{result.task}: alembic downgrade c0ffee000001"]
    assert query("SELECT version_num FROM alembic_version") == [("c0ffee000001",)]


def test_alembic_failure_names_the_command_and_the_error(
        conn: Connection, database: str, alembic_venv: str) -> None:
    bad = {"DATABASE_URL": Secret(f"postgresql+psycopg://postgres:wrong@127.0.0.1:5432/"
                                  f"{database}")}
    result = migrations.alembic_migrate(alembic_venv, env=bad).run(conn)
    assert result.status is Status.FAILED
    assert result.message.startswith(f"status command {alembic_venv} current exited with code 1")
    assert 'password authentication failed for user "postgres"' in result.message
    assert writes(conn) == []


# -- a generic migration tool ------------------------------------------------------------------


@pytest.fixture
def tool(admin: Connection) -> Iterator[str]:
    """The fixture migrate-tool on db-1 in a new TOOL_HOME with two migrations."""
    home = f"/srv/dkmg-tool-{uuid.uuid4().hex[:8]}"
    admin.run(["mkdir", "-p", f"{home}/migrations"])
    admin.put(FIXTURES / "migrations" / "tool" / "migrate-tool.sh", f"{home}/migrate-tool",
              mode=0o755)
    for name in ("0001_users", "0002_avatars"):
        add_tool_migration(admin, home, name)
    try:
        yield home
    finally:
        admin.run(["rm", "-rf", "--", home])


def add_tool_migration(admin: Connection, home: str, name: str, body: str = "") -> None:
    """A tool migration whose side effect is one line in ``$TOOL_HOME/effects``."""
    script = body or f'echo {name} >> "$TOOL_HOME/effects"\n'
    admin.put(script, f"{home}/migrations/{name}.sh")


def tool_task(home: str, **kwargs: Any) -> migrations.CommandMigrateTask:
    options: dict[str, Any] = {"pending": r"^Pending ", "current": r"^Current: (\S+)",
                               "rollback": [f"{home}/migrate-tool", "rollback"],
                               "env": {"TOOL_HOME": home}, **kwargs}
    return migrations.command_migrate([f"{home}/migrate-tool", "status"],
                                      [f"{home}/migrate-tool", "apply"], **options)


def test_command_adapter_applies_when_pending_then_ok(conn: Connection, admin: Connection,
                                                     tool: str) -> None:
    task = tool_task(tool)
    check = task.run(conn, check=True)
    assert check.status is Status.CHANGED
    assert check.diff == "migrations: pending at none -> applied"
    assert writes(conn) == []
    assert admin.run(["test", "-e", f"{tool}/effects"], check=False, write=False).failed

    first = apply_twice(conn, task)
    assert (first.data["before"], first.data["after"]) == ("none", "0002_avatars")
    assert first.data["stdout"] == "Migrated: 0001_users\nMigrated: 0002_avatars"
    assert admin.get(f"{tool}/effects") == b"0001_users\n0002_avatars\n"

    add_tool_migration(admin, tool, "0003_orders")
    undo = UndoStack()
    third = task.run(conn, undo=undo)
    assert third.status is Status.CHANGED
    assert (third.data["before"], third.data["after"]) == ("0002_avatars", "0003_orders")
    undone, failed = undo.unwind(conn)
    assert failed == [] and len(undone) == 1
    assert admin.get(f"{tool}/applied") == b"0001_users\n0002_avatars\n"


def test_command_adapter_without_pending_test_is_ok_when_the_status_does_not_change(
        conn: Connection, tool: str) -> None:
    tool_task(tool).run(conn)
    task = tool_task(tool, pending=None)
    result = task.run(conn)
    assert result.status is Status.OK
    assert result.message == "ran; the status did not change"
    assert len(writes(conn)) == 2  # first run's apply, and this run's: it cannot know before


def test_command_adapter_failure_keeps_partial_state_for_the_undo(
        conn: Connection, admin: Connection, tool: str) -> None:
    tool_task(tool).run(conn)
    add_tool_migration(admin, tool, "0003_good")
    add_tool_migration(admin, tool, "0004_bad", "echo 'disk on fire' >&2\nexit 3\n")
    undo = UndoStack()
    result = tool_task(tool).run(conn, undo=undo)
    assert result.status is Status.FAILED
    assert result.message.startswith(f"{tool}/migrate-tool apply exited with code 1:")
    assert "disk on fire" in result.message and "migration 0004_bad failed" in result.message
    assert result.data["after"] == "0003_good"  # status read again after the failure
    undone, failed = undo.unwind(conn)  # the status moved: the rollback command runs
    assert failed == [] and len(undone) == 1
    assert admin.get(f"{tool}/applied") == b"0001_users\n0002_avatars\n"
