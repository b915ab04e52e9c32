"""The migrate tools of the app contract on real apps and real hosts.

* Django (examples/django) on db-1's PostgreSQL 15: its release installed from its
  artifact, contrib + app migrations listed by ``showmigrations --plan``, applied, v2's
  migration applied and rolled back with v2's scripts, a failing migration leaving nothing
  half-applied (and its undo rolling back what the run applied before it).
* alembic (examples/datasette) on a SQLite file: applied, rolled back; a failing migration
  says the pre-deploy backup must be restored (alembic on SQLite is not transactional).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from psycopg import sql

from deploykit import artifacts, pg
from deploykit.connection import Connection
from deploykit.contract import AppContract, load_contract
from deploykit.result import Status
from deploykit.secrets import Secret
from deploykit.shell import quote
from deploykit.task import UndoStack
from deploykit.tasks import http, migrations, releases
from deploykit.tasks.migrations import DjangoTool, ReleaseEnv

pytestmark = pytest.mark.lab

HOST = "db-1"
ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures"
WHEELHOUSE = ROOT / ".cache" / "wheelhouse"


def source_of(example: str, version: str, dest: Path, *extra: tuple[Path, str]) -> Path:
    """The example's source for ``version``: v1 as it is, v2 with ``v2/`` copied over it,
    plus ``extra`` files (path, relative destination)."""
    out = dest / f"{example}-{version}"
    shutil.copytree(EXAMPLES / example, out, ignore=shutil.ignore_patterns("v2", "__pycache__"))
    if version != "v1":
        shutil.copytree(EXAMPLES / example / "v2", out, dirs_exist_ok=True)
    for path, rel in extra:
        shutil.copy(path, out / rel)
    return out


@pytest.fixture(scope="module")
def admin(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


@pytest.fixture
def conn(lab_connection: Callable[[str], Connection]) -> Connection:
    return lab_connection(HOST)


@pytest.fixture(scope="module")
def app_root(admin: Connection) -> Iterator[str]:
    root = f"/srv/dkct-{uuid.uuid4().hex[:8]}"
    try:
        yield root
    finally:
        admin.run(["rm", "-rf", "--", root])


def install(conn: Connection, app: str, source: Path, version: str, out: Path,
            root: str) -> str:
    """Build ``source`` as ``version`` and install it on the host; the release path."""
    artifact = artifacts.build(source, app=app, version=version, out_dir=out,
                               wheelhouse=WHEELHOUSE)
    result = releases.install(app, artifact, root=root, shared_files=(), shared_dirs=(),
                              timeout=900).run(conn)
    assert result.status is Status.CHANGED, result.message
    return releases.release_dir(app, version, root=root)


def contract_of(example: str) -> AppContract:
    path = EXAMPLES / example / "deploykit.yml"
    return load_contract(yaml.safe_load(path.read_text()), str(path))


def serve(conn: Connection, contract: AppContract, release: ReleaseEnv, port: int,
          version: str, shared: str) -> int:
    """Start the contract's web process from ``release`` on ``port`` (in the background,
    its environment as the contract says); its PID."""
    web = contract.processes.web
    assert web is not None
    values: dict[str, str | int] = {"port": port, "release": release.path, "shared": shared,
                                    "app": "x", "version": version, "color": "blue"}
    env = {**release.env, **web.env(**values)}
    argv = " ".join(quote(a) for a in web.argv(**values))
    out = conn.run(f"cd {quote(release.path)} && (setsid {argv} </dev/null "
                   f">/tmp/dkct-app-{port}.log 2>&1 & echo $!)", env=env)
    return int(out.stdout.strip())


def stop(conn: Connection, pid: int) -> None:
    conn.run(f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null || true")


# -- Django on PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def django_db(admin: Connection) -> Iterator[tuple[str, Secret]]:
    name = f"dkdj_{uuid.uuid4().hex[:10]}"
    with pg.connect(admin) as session:
        session.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    password = pg.PgSettings.from_host(admin.host).password
    assert password is not None
    try:
        yield name, Secret(f"postgresql://postgres:{password.reveal()}@127.0.0.1:5432/{name}")
    finally:
        with pg.connect(admin) as session:
            session.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                            .format(sql.Identifier(name)))


def rows(admin: Connection, database: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with pg.connect(admin, database) as session:
        cursor = session.execute(query.encode(), params or None)
        return cursor.fetchall() if cursor.description else []


def note_columns(admin: Connection, database: str) -> list[str]:
    return [r[0] for r in rows(admin, database, "SELECT column_name FROM information_schema"
                               ".columns WHERE table_name = 'notes_note' ORDER BY 1")]


def test_django_migrate_list_apply_rollback_and_a_failing_migration(
        conn: Connection, admin: Connection, app_root: str, django_db: tuple[str, Secret],
        tmp_path: Path) -> None:
    database, url = django_db
    tool = migrations.tool_for(SimpleNamespace(tool="django"),
                               engine="postgres")
    assert isinstance(tool, DjangoTool) and tool.transactional
    env: dict[str, str | Secret] = {"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE":
                                    "dkdjango.settings"}
    v1 = ReleaseEnv(install(admin, "dkdjango", source_of("django", "v1", tmp_path), "v1",
                            tmp_path / "dist", app_root), env=env)

    state = tool.state(conn, v1)
    assert state.applied == () and "notes.0001_initial" in state.pending
    assert "auth.0001_initial" in state.pending and "sessions.0001_initial" in state.pending
    check = tool.migrate(v1).run(conn, check=True)
    assert check.status is Status.CHANGED and "notes.0001_initial: pending -> applied" in \
        check.diff
    assert rows(admin, database, "SELECT to_regclass('django_migrations') IS NULL") == [(True,)]

    first = tool.migrate(v1).run(conn)
    assert first.status is Status.CHANGED, first.message
    assert first.data["ran"] == list(state.pending) and first.data["pending"] == \
        list(state.pending)
    assert tool.migrate(v1).run(conn).status is Status.OK
    rows(admin, database, "INSERT INTO notes_note (title, created) VALUES ('kept', now())")

    # the app answers the contract's health and version checks (Django's own admin page,
    # the project's /version), with nothing written for deploykit
    contract = contract_of("django")
    pid = serve(admin, contract, v1, 8091, "v1", f"{app_root}/dkdjango/shared")
    try:
        health = contract.health.task("http://127.0.0.1:8091", via_ssh=True).run(conn)
        assert health.status is Status.OK, health.message
        assert contract.version is not None
        version = contract.version.task("http://127.0.0.1:8091", via_ssh=True,
                                        version="v1").run(conn)
        assert version.status is Status.OK, version.message
    finally:
        stop(admin, pid)

    # v2: one new migration; applied alone, reported, rolled back with v2's own scripts
    v2 = ReleaseEnv(install(admin, "dkdjango", source_of("django", "v2", tmp_path), "v2",
                            tmp_path / "dist", app_root), env=env)
    assert tool.state(conn, v2).pending == ("notes.0002_note_done",)
    second = tool.migrate(v2).run(conn)
    assert second.status is Status.CHANGED and second.data["ran"] == ["notes.0002_note_done"]
    assert "done" in note_columns(admin, database)
    # v1's code (it does not know "done") still writes: the migration was an expand one
    rows(admin, database, "INSERT INTO notes_note (title, created) VALUES ('v1', now())")
    known_to_v1 = tool.state(conn, v1)
    assert known_to_v1.pending == () and "notes.0002_note_done" not in known_to_v1.applied
    verdict = migrations.policy.judge(applied=tool.state(conn, v2).applied,
                                      known=(*known_to_v1.applied, *known_to_v1.pending),
                                      kinds={"notes.0002_note_done": "expand"})
    assert verdict.allowed and verdict.newer == ("notes.0002_note_done",)

    back = tool.rollback(v2, 1).run(conn)
    assert back.status is Status.CHANGED, back.message
    assert back.data["ran"] == ["notes.0002_note_done"]
    assert "done" not in note_columns(admin, database)
    assert tool.state(conn, v2).pending == ("notes.0002_note_done",)

    # v3 = v2 + a migration failing midway: nothing of it stays; 0002 (applied by the same
    # run before it) is rolled back by the step's undo
    v3 = ReleaseEnv(install(admin, "dkdjango", source_of(
        "django", "v3", tmp_path, (FIXTURES / "django" / "0003_broken.py",
                                   "notes/migrations/0003_broken.py")),
        "v3", tmp_path / "dist", app_root), env=env)
    undo = UndoStack()
    broken = tool.migrate(v3).run(conn, undo=undo)
    assert broken.status is Status.FAILED
    assert "division by zero" in broken.message
    assert "applied before the failure: notes.0002_note_done" in broken.message
    assert broken.data["ran"] == ["notes.0002_note_done"] and not broken.data["needs_restore"]
    assert "half" not in note_columns(admin, database)
    assert rows(admin, database, "SELECT count(*) FROM django_migrations WHERE app = 'notes' "
                "AND name = '0003_broken'") == [(0,)]
    undone, failed = undo.unwind(conn)
    assert failed == [] and len(undone) == 1
    assert "done" not in note_columns(admin, database)
    assert tool.state(conn, v1).pending == ()
    assert rows(admin, database, "SELECT title FROM notes_note ORDER BY id") == \
        [("kept",), ("v1",)]
    # the URL's password never reached a log
    assert all(url.reveal().split(":")[2].split("@")[0] not in e.command for e in conn.log)


# -- alembic on SQLite (examples/datasette) -----------------------------------------------------


def test_alembic_on_sqlite_apply_rollback_and_a_failing_migration_asks_for_the_backup(
        conn: Connection, admin: Connection, app_root: str, tmp_path: Path) -> None:
    tool = migrations.tool_for(SimpleNamespace(tool="alembic"), engine="sqlite")
    assert not tool.transactional
    db = f"{app_root}/dkdatasette/shared/notes.db"
    admin.run(["mkdir", "-p", f"{app_root}/dkdatasette/shared"])
    env: dict[str, str | Secret] = {"DATABASE_URL": f"sqlite:///{db}"}

    def release(version: str, *extra: tuple[Path, str]) -> ReleaseEnv:
        src = source_of("datasette", version, tmp_path, *extra)
        return ReleaseEnv(install(admin, "dkdatasette", src, version, tmp_path / "dist",
                                  app_root), env=env)

    def tables() -> list[str]:
        out = admin.run(["sqlite3", db, "SELECT name FROM sqlite_master WHERE type = 'table' "
                         "ORDER BY name"], write=False).stdout
        return out.split()

    v1 = release("v1")
    assert tool.state(conn, v1).pending == ("a1b2c3d40001",)
    first = tool.migrate(v1).run(conn)
    assert first.status is Status.CHANGED and first.data["ran"] == ["a1b2c3d40001"], \
        first.message
    assert tool.migrate(v1).run(conn).status is Status.OK
    admin.run(["sqlite3", db, "INSERT INTO notes (body) VALUES ('kept')"])

    # datasette answers the contract's health check (its own /-/versions.json) as it is
    contract = contract_of("datasette")
    assert contract.version is None
    shared = f"{app_root}/dkdatasette/shared"
    admin.run(["mkdir", "-p", f"{shared}/data"])
    admin.run(["ln", "-sfn", db, f"{shared}/data/notes.db"])
    pid = serve(admin, contract, v1, 8092, "v1", shared)
    try:
        health = contract.health.task("http://127.0.0.1:8092", via_ssh=True).run(conn)
        assert health.status is Status.OK, health.message
        assert health.data["response"]["status"] == 200
        listed = http.wait_for_task("http://127.0.0.1:8092/notes/notes.json?_shape=array",
                                    contains="kept", retries=0, via_ssh=True).run(conn)
        assert listed.status is Status.OK, listed.message
    finally:
        stop(admin, pid)

    v2 = release("v2")
    state = tool.state(conn, v2)
    assert (state.applied, state.pending) == (("a1b2c3d40001",), ("a1b2c3d40002",))
    second = tool.migrate(v2).run(conn)
    assert second.data["ran"] == ["a1b2c3d40002"]
    back = tool.rollback(v2, 1).run(conn)
    assert back.status is Status.CHANGED and back.data["ran"] == ["a1b2c3d40002"], back.message
    assert tool.state(conn, v1).applied == ("a1b2c3d40001",)

    # a failing migration on SQLite: alembic ran its DDL outside a transaction, so the step
    # says the database needs the pre-deploy backup, and its undo refuses to guess
    v3 = release("v3", (FIXTURES / "alembic_broken" / "a1b2c3d40003_broken.py",
                        "migrations/versions/a1b2c3d40003_broken.py"))
    undo = UndoStack()
    broken = tool.migrate(v3).run(conn, undo=undo)
    assert broken.status is Status.FAILED and broken.data["needs_restore"] is True
    assert "no such table: no_such_table" in broken.message
    assert "restore the pre-deploy backup" in broken.message
    undone, failed = undo.unwind(conn)
    assert undone == [] and len(failed) == 1
    assert "not transactional here" in failed[0] and "restore the pre-deploy backup" in failed[0]
    assert admin.run(["sqlite3", db, "SELECT body FROM notes"], write=False).stdout.split() == \
        ["kept"]
    assert "notes" in tables()


# -- deploykit's SQL files through the same interface -------------------------------------------


def test_sql_tool_lists_applies_rolls_back_and_runs_older_code_over_expand_migrations(
        conn: Connection, admin: Connection, django_db: tuple[str, Secret],
        tmp_path: Path) -> None:
    database, _ = django_db
    newer = ReleaseEnv("/srv/unused", source=FIXTURES / "migrations")
    tool = migrations.tool_for(SimpleNamespace(tool="sql", directory="basic"),
                               database=database)
    assert tool.state(conn, newer).pending == ("0001_create_accounts", "0002_add_email",
                                               "0003_create_orders")
    first = tool.migrate(newer).run(conn)
    assert first.status is Status.CHANGED and first.data["ran"] == [
        "0001_create_accounts", "0002_add_email", "0003_create_orders"]
    assert tool.state(conn, newer) == migrations.MigrationState(
        ("0001_create_accounts", "0002_add_email", "0003_create_orders"), ())

    # v1 = the first two migrations: refused by default, allowed once judged expand-only
    older_dir = tmp_path / "v1" / "basic"
    older_dir.mkdir(parents=True)
    for f in (FIXTURES / "migrations" / "basic").glob("000[12]_*.sql"):
        shutil.copy(f, older_dir / f.name)
    older = ReleaseEnv("/srv/unused", source=tmp_path / "v1")
    refused = tool.migrate(older).run(conn)
    assert refused.status is Status.FAILED
    assert "the database has migrations this directory does not" in refused.message
    verdict = migrations.policy.judge(applied=tool.state(conn, newer).applied,
                                      known=["0001_create_accounts", "0002_add_email"],
                                      kinds={"0003_create_orders": "expand"})
    assert verdict.allowed
    tolerant = migrations.tool_for(SimpleNamespace(tool="sql", directory="basic"),
                                   database=database, allow_newer=verdict.allowed)
    assert tolerant.migrate(older).run(conn).status is Status.OK

    back = tool.rollback(newer, 1).run(conn)
    assert back.status is Status.CHANGED and back.data["ran"] == ["0003_create_orders"]
    assert tool.state(conn, newer).pending == ("0003_create_orders",)


# -- a team's own tool, given as commands ---------------------------------------------------------


def test_command_tool_with_up_down_pending_and_a_failure_it_cannot_undo(
        conn: Connection, admin: Connection) -> None:
    home = f"/srv/dkct-tool-{uuid.uuid4().hex[:8]}"
    admin.run(["mkdir", "-p", f"{home}/migrations"])
    admin.put(FIXTURES / "migrations" / "tool" / "migrate-tool.sh", f"{home}/migrate-tool",
              mode=0o755)
    for name in ("0001_users", "0002_avatars"):
        admin.put(f'echo {name} >> "$TOOL_HOME/effects"\n', f"{home}/migrations/{name}.sh")
    spec = SimpleNamespace(tool="command", up="./migrate-tool apply",
                           down="./migrate-tool rollback",
                           pending="./migrate-tool status | sed -n 's/^Pending //p'",
                           applied="./migrate-tool status | sed -n 's/^Ran  *//p'")
    tool = migrations.tool_for(spec)
    assert not tool.transactional
    release = ReleaseEnv(home, env={"TOOL_HOME": home})
    try:
        assert tool.state(conn, release) == migrations.MigrationState(
            (), ("0001_users", "0002_avatars"))
        first = tool.migrate(release).run(conn)
        assert first.status is Status.CHANGED and first.data["ran"] == ["0001_users",
                                                                        "0002_avatars"]
        assert tool.migrate(release).run(conn).status is Status.OK
        back = tool.rollback(release, 1).run(conn)
        assert back.status is Status.CHANGED and back.data["ran"] == ["0002_avatars"]

        admin.put('echo half >> "$TOOL_HOME/effects"; exit 1\n',
                  f"{home}/migrations/0003_bad.sh")
        undo = UndoStack()
        failed = tool.migrate(release).run(conn, undo=undo)
        assert failed.status is Status.FAILED and failed.data["needs_restore"] is True
        assert failed.data["ran"] == ["0002_avatars"]
        assert "applied before the failure: 0002_avatars" in failed.message
        assert "restore the pre-deploy backup" in failed.message
        _, not_undone = undo.unwind(conn)
        assert len(not_undone) == 1 and "restore the pre-deploy backup" in not_undone[0]
    finally:
        admin.run(["rm", "-rf", "--", home])


# -- Flask-Migrate ------------------------------------------------------------------------------


def test_flask_migrate_lists_applies_and_rolls_back(conn: Connection, admin: Connection,
                                                    app_root: str, tmp_path: Path) -> None:
    source = tmp_path / "flaskapp"
    shutil.copytree(FIXTURES / "flaskapp", source,
                    ignore=shutil.ignore_patterns("__pycache__"))
    release = ReleaseEnv(install(admin, "dkflask", source, "v1", tmp_path / "dist", app_root),
                         env={"DATABASE_URL": f"sqlite:///{app_root}/flask.db"})
    tool = migrations.tool_for(SimpleNamespace(tool="flask", app="app"), engine="sqlite")
    assert isinstance(tool, migrations.FlaskTool) and not tool.transactional
    assert tool.state(conn, release).pending == ("f1a5c0000001", "f1a5c0000002")
    first = tool.migrate(release).run(conn)
    assert first.status is Status.CHANGED, first.message
    assert first.data["ran"] == ["f1a5c0000001", "f1a5c0000002"]
    assert tool.migrate(release).run(conn).status is Status.OK
    back = tool.rollback(release, 1).run(conn)
    assert back.status is Status.CHANGED and back.data["ran"] == ["f1a5c0000002"], back.message
    assert tool.state(conn, release) == migrations.MigrationState(
        ("f1a5c0000001",), ("f1a5c0000002",), ("f1a5c0000001",))
