"""deploykit's SQL migrations against PostgreSQL: :func:`migrate` and :func:`rollback`.

(:func:`migrate`, :func:`rollback`) live on the controller in a
directory of ``NNNN_name.up.sql`` files (and optional ``NNNN_name.down.sql``), and
run through :func:`deploykit.pg.connect` (an SSH port forward to the database host)::

    from deploykit.tasks import migrations
    migrations.migrate("db/migrations", database="app").run(conn)
    migrations.migrate("db/migrations", database="app", to=12).run(conn, check=True)
    migrations.rollback("db/migrations", database="app", steps=1).run(conn)

* **probe** — one SQL statement: the applied versions and checksums from the
  ``schema_migrations`` table (version, name, checksum, applied_at, deploy_id),
  no SSH command at all. A no-op migrate is this one query.
* **plan** — one change per pending migration (``0003_add_index: pending ->
  applied``). An applied migration whose ``.up.sql`` changed since (SHA-256), an
  applied version missing from the directory, or a pending version below an
  applied one is an error, in check mode too.
* **apply** — under ``pg_advisory_lock`` (two concurrent runs never both apply: the
  second waits, re-reads the table and finds nothing left to do), each migration
  runs in its own transaction together with its ``schema_migrations`` row. A
  failing migration is rolled back with its row, the ones before it stay applied,
  and the error names the file, line and column (from PostgreSQL's error
  position).
* **undo** — rolls back, newest first, the migrations the run applied, with their
  ``.down.sql``. It stops at the first one without a down file and fails naming
  what stays applied (the run report lists it under "could not be undone").
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets as _random
import time
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, LiteralString

import psycopg
from psycopg import sql

from deploykit import pg
from deploykit.connection import Connection, LoggedCommand
from deploykit.errors import ConfigError, DeployError, LockHeldError, RollbackError, TaskError
from deploykit.pg import PgSettings
from deploykit.result import Result, Status
from deploykit.secrets import Secret, redact
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tasks.migrations.sqlfiles import (
    AppliedMigration,
    Migration,
    load_migrations,
    parse_version,
    pending_migrations,
    rollback_targets,
    sql_error_location,
)

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\Z")
#: How often a run waiting for another run's migration lock asks again (seconds).
LOCK_POLL = 0.2


def _new_deploy_id() -> str:
    """A deploy id in the runner's run-id format: ``20240501T120000-ab12cd``."""
    return time.strftime("%Y%m%dT%H%M%S-") + _random.token_hex(3)


def _sql_error(path: Path, text: str, exc: psycopg.Error) -> str:
    """``file:line:column: message`` for a failed migration (file only without a position)."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip().splitlines()[0]
    where = str(path)
    if diag.statement_position and diag.statement_position.isdigit():
        line, column = sql_error_location(text, int(diag.statement_position))
        where = f"{path}:{line}:{column}"
    extra = "".join(f"\n{label}: {value}" for label, value in
                    (("DETAIL", diag.message_detail), ("HINT", diag.message_hint),
                     ("CONTEXT", diag.context)) if value)
    return f"{where}: {message}{extra}"


# -- the database side ----------------------------------------------------------------------

Direction = Literal["up", "down"]
Query = sql.Composed | LiteralString | bytes


def _lock_key(table: str) -> int:
    """The advisory lock of one migrations table (advisory locks are per database)."""
    digest = hashlib.sha256(f"deploykit.migrations:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Database:
    """One psycopg session running migrations against one ``schema_migrations`` table.

    Every statement is appended to :attr:`Connection.log` as ``sql <database>:
    <statement>``, marked as a read or a write (the convention of
    :mod:`deploykit.tasks.postgres`): the log that proves a no-op run sends no
    write command proves it for SQL too. A migration file shows as ``\\i <path>``.
    """

    def __init__(self, conn: Connection, session: psycopg.Connection[tuple[Any, ...]],
                 database: str, table: str) -> None:
        self.conn = conn
        self.session = session
        self.database = database
        self.table = table
        self.ident = sql.Identifier(*table.split("."))

    def send(self, query: Query, params: tuple[Any, ...] = (), *, write: bool,
             shown: str | None = None) -> psycopg.Cursor[tuple[Any, ...]]:
        """Execute one statement (or file) and log it; psycopg errors propagate."""
        if shown is None:
            shown = query.as_string(self.session) if isinstance(query, sql.Composed) else \
                query.decode() if isinstance(query, bytes) else query
        entry = f"sql {self.database}: {redact(' '.join(shown.split()), self.conn.secrets)}"
        try:
            cursor = self.session.execute(query, params or None)
        except psycopg.Error:
            self.conn.log.append(LoggedCommand(entry, write, 1))
            raise
        self.conn.log.append(LoggedCommand(entry, write, 0))
        return cursor

    def execute(self, query: Query, params: tuple[Any, ...] = (), *, what: str,
                write: bool = False) -> list[tuple[Any, ...]]:
        """Run one bookkeeping statement; a failure is a TaskError saying what was done
        (except a missing table or column, which the caller handles)."""
        try:
            cursor = self.send(query, params, write=write)
            return cursor.fetchall() if cursor.description else []
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            raise
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or str(exc).strip()
            raise TaskError(f"{what} failed: {redact(reason, self.conn.secrets)}") from None

    def applied(self) -> dict[int, AppliedMigration] | None:
        """The table's rows by version (one statement); None when the table does not exist."""
        query = sql.SQL("SELECT version, name, checksum, applied_at::text, deploy_id FROM {} "
                        "ORDER BY version").format(self.ident)
        try:
            rows = self.execute(query, what=f"reading {self.table}")
        except psycopg.errors.UndefinedTable:
            return None
        except psycopg.errors.UndefinedColumn as exc:
            raise TaskError(f"table {self.table} exists but is not a deploykit migrations table "
                            f"({exc.diag.message_primary}); choose another with table=") from None
        return {int(r[0]): AppliedMigration(int(r[0]), str(r[1]), str(r[2]), str(r[3]),
                                            None if r[4] is None else str(r[4])) for r in rows}

    def ensure_table(self) -> None:
        """Create the migrations table if it does not exist."""
        self.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version bigint PRIMARY KEY, name text NOT NULL, "
            "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
            "deploy_id text)").format(self.ident), what=f"creating {self.table}", write=True)

    @contextlib.contextmanager
    def locked(self, timeout: float) -> Iterator[float]:
        """Hold the table's advisory lock; yields how long it waited for another run."""
        key = _lock_key(self.table)
        started = time.monotonic()
        while not self.execute("SELECT pg_try_advisory_lock(%s)", (key,),
                               what="taking the migration lock")[0][0]:
            if time.monotonic() - started >= timeout:
                raise LockHeldError(f"another run has held the migration lock of {self.table} "
                                    f"for over {timeout:g} s ({self._holder(key)})")
            time.sleep(LOCK_POLL)
        try:
            yield time.monotonic() - started
        finally:
            if not self.session.closed and not self.session.broken:
                self.execute("SELECT pg_advisory_unlock(%s)", (key,), what="releasing the lock")

    def _holder(self, key: int) -> str:
        rows = self.execute(
            "SELECT a.pid, coalesce(a.client_addr::text, 'local'), a.backend_start::text "
            "FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF), what="finding the lock's holder")
        return f"held by pid {rows[0][0]} from {rows[0][1]}, connected {rows[0][2]}" \
            if rows else "released"

    def run(self, m: Migration, direction: Direction, deploy_id: str) -> None:
        """Run one migration's up or down SQL and its table row in one transaction."""
        path, text = (m.up_path, m.up_sql) if direction == "up" else (m.down_path, m.down_sql)
        assert path is not None and text is not None
        row = (sql.SQL("INSERT INTO {} (version, name, checksum, deploy_id) "
                       "VALUES (%s, %s, %s, %s)").format(self.ident),
               (m.version, m.name, m.checksum, deploy_id)) if direction == "up" else \
              (sql.SQL("DELETE FROM {} WHERE version = %s").format(self.ident), (m.version,))
        step = "file"
        try:
            with self.session.transaction():  # the file and its row commit together
                # bytes: the file is sent as written (no placeholder handling of '%')
                self.send(text.encode(), write=True, shown=f"\\i {path}")
                step = "row"
                self.send(*row, write=True)
        except psycopg.Error as exc:
            if self.session.broken:
                raise TaskError(f"connection lost while running {path}: {exc}; the migration "
                                f"may or may not have been committed") from None
            reason = _sql_error(path, text, exc) if step == "file" else \
                f"{path} ran, but updating {self.table} failed: {exc.diag.message_primary}"
            reason = redact(reason, self.conn.secrets)
            raise TaskError(f"{m.id} ({direction}) failed and was rolled back: {reason}"
                            ) from None


# -- migrate and rollback -------------------------------------------------------------------


class _SqlMigrationTask(Task):
    """What migrate and rollback share: probe, plan, locked apply, re-read, undo.

    A subclass says which way it goes (:attr:`direction`) and which migrations
    it would run from the applied rows (:meth:`select`).
    """

    direction: ClassVar[Direction]
    verb: ClassVar[str]

    def __init__(self, directory: str | Path, *, database: str, table: str,
                 settings: PgSettings | None, lock_timeout: float, deploy_id: str | None,
                 name: str | None) -> None:
        super().__init__(name=name)
        if not database:
            raise ConfigError(f"{self.kind}: database is required")
        if not _TABLE.match(table):
            raise ConfigError(f"{self.kind}: table must be a name or schema.name, not {table!r}")
        if lock_timeout < 0:
            raise ConfigError(f"{self.kind}: lock_timeout must not be negative")
        self.directory = Path(directory)
        self.database = database
        self.table = table
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.deploy_id = deploy_id

    def target(self) -> str:
        return f"{self.database} {self.directory}"

    @property
    def secrets(self) -> Sequence[Secret]:
        return (self.settings.password,) if self.settings and self.settings.password else ()

    @abstractmethod
    def select(self, migrations: Sequence[Migration],
               applied: Mapping[int, AppliedMigration]) -> list[Migration]:
        """The migrations to run, in running order (raises TaskError when impossible)."""

    @contextlib.contextmanager
    def db(self, conn: Connection) -> Iterator[_Database]:
        """One tunnelled psycopg session to the task's database on ``conn``'s host."""
        with pg.connect(conn, self.database, settings=self.settings) as session:
            yield _Database(conn, session, self.database, self.table)

    def probe_script(self) -> str:
        return ":"  # the probe is SQL (see probe): nothing to batch with shell probes

    def parse(self, output: str) -> Facts:
        return {}

    def probe(self, conn: Connection) -> Facts:
        """The applied migrations: one SQL statement, no SSH command."""
        with self.db(conn) as db:
            return {"applied": db.applied()}

    @contextlib.contextmanager
    def session(self, conn: Connection, facts: Facts) -> Iterator[_Database]:
        """The session :meth:`run` opened for this run, else a new one."""
        db = facts.get("db")
        if isinstance(db, _Database) and not db.session.closed:
            yield db
        else:
            with self.db(conn) as db:
                yield db

    def choose(self, conn: Connection, applied: Mapping[int, AppliedMigration] | None,
               facts: Facts | None = None) -> list[Migration]:
        """:meth:`select` on the directory as it is now, errors naming host and task;
        records each version's migration id in ``facts["ids"]``."""
        try:
            found = load_migrations(self.directory)
            if facts is not None:
                facts["ids"] = {m.version: m.id for m in found}
            return self.select(found, applied or {})
        except DeployError as exc:
            raise TaskError(exc.message, host=conn.name, task=self.name) from None

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        todo = self.choose(conn, facts["applied"], facts)
        facts.setdefault("todo", todo)
        plan = Plan()
        before, after = ("pending", "applied") if self.direction == "up" else \
            ("applied", "rolled back")
        for m in todo:
            plan.add(m.id, before, after)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        done: list[Migration] = facts.setdefault("done", [])
        deploy_id = facts["deploy_id"] = self.deploy_id or _new_deploy_id()
        back: Direction = "down" if self.direction == "up" else "up"
        undo_name = f"undo {self.name}"
        undo.push(f"{'roll back' if back == 'down' else 're-apply'} what {self.name} "
                  f"{self.verb}", lambda c: _revert(c, self, list(reversed(done)), back,
                                                    undo_name))
        planned = {m.version for m in facts["todo"]}
        with self.session(conn, facts) as db, db.locked(self.lock_timeout) as waited:
            facts["lock_waited"] = waited
            applied = db.applied()  # another run may have been first: read again, locked
            todo = [m for m in self.choose(conn, applied) if m.version in planned]
            if todo and applied is None:
                db.ensure_table()
            for m in todo:
                try:
                    db.run(m, self.direction, deploy_id)
                except TaskError as exc:
                    raise TaskError(exc.message, host=conn.name, task=self.name) from None
                done.append(m)
            facts["after_rows"] = db.applied()

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """Every planned migration is now applied (rolled back), by the rows re-read under
        the lock after the last commit."""
        after = facts["after_rows"] or {}
        plan = Plan()
        for m in facts["todo"]:
            if (m.version in after) != (self.direction == "up"):
                plan.add(m.id, "not run", self.verb)
        return plan

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """The task contract in one psycopg session, with ``data`` telling the versions
        before/after and what ran.

        The probe is SQL: facts from the runner's batched shell probe hold nothing
        and are ignored. A run that finds, once it holds the lock, that another
        run did the work meanwhile reports ``ok``: it changed nothing.
        """
        started = time.monotonic()
        conn.secrets.update(self.secrets)
        state: Facts = {}
        try:
            with self.db(conn) as db:
                state.update(applied=db.applied(), db=db)
                result = super().run(conn, check=check, facts=state, undo=undo)
        except DeployError as exc:  # opening the session or the probe failed
            return Result(host=conn.name, task=self.name, status=Status.FAILED,
                          message=exc.message, check=check,
                          duration=time.monotonic() - started)
        result.duration = time.monotonic() - started
        done: list[Migration] = state.get("done", [])
        ids = state.get("ids", {})
        result.data.update(
            database=self.database, before=_newest(state["applied"], state.get("ids", {})),
            after=_newest(state.get("after_rows", state["applied"]), state.get("ids", {})),
            pending=[m.id for m in state.get("todo", [])], ran=[m.id for m in done],
            applied=[ids.get(v, f"{v}_{a.name}") for v, a in sorted(
                (state.get("after_rows", state["applied"]) or {}).items())],
            lock_waited=round(state.get("lock_waited", 0.0), 3))
        if "deploy_id" in state:
            result.data["deploy_id"] = state["deploy_id"]
        if done and result.failed:
            result.message += f"\n({self.verb} before the failure, in their own transactions:" \
                              f" {', '.join(m.id for m in done)})"
        elif result.changed and not check and not done:
            result.status, result.diff = Status.OK, ""
            result.message = "nothing left to do: another run did it while this one waited " \
                             "for the lock"
        elif result.changed and not check:
            result.message = f"{self.verb} {', '.join(m.id for m in done)}"
        return result


def _newest(applied: Mapping[int, AppliedMigration] | None, ids: Mapping[int, str]
            ) -> str | None:
    """The newest applied migration's id (``0003_add_index``), None when none is."""
    if not applied:
        return None
    row = applied[max(applied)]
    return ids.get(row.version, f"{row.version}_{row.name}")


def _revert(conn: Connection, task: _SqlMigrationTask, migrations: Sequence[Migration],
            direction: Direction, undo_name: str) -> None:
    """Undo action: run ``migrations`` in order in ``direction``, skipping those already
    there; stop with RollbackError at a migration without a down file."""
    finished: list[str] = []
    try:
        with task.db(conn) as db, db.locked(task.lock_timeout):
            applied = db.applied() or {}
            for m in migrations:
                if (m.version in applied) == (direction == "up"):
                    continue
                if m.down_sql is None and direction == "down":
                    left = [x.id for x in migrations if x.version in applied
                            and x.id not in finished]
                    raise RollbackError(
                        f"{m.id} has no down file: {', '.join(left)} stay applied"
                        + (f" ({', '.join(finished)} rolled back)" if finished else "")
                        + "; restore the database from a backup if they must go",
                        host=conn.name, task=undo_name)
                db.run(m, direction, task.deploy_id or _new_deploy_id())
                finished.append(m.id)
    except RollbackError:
        raise
    except DeployError as exc:
        raise RollbackError(exc.message + (f" ({', '.join(finished)} done before)"
                                           if finished else ""),
                            host=conn.name, task=undo_name) from None


class MigrateTask(_SqlMigrationTask):
    """Apply pending SQL migrations of a directory. See :func:`migrate`."""

    kind: ClassVar[str] = "migrate"
    direction: ClassVar[Direction] = "up"
    verb: ClassVar[str] = "applied"

    def __init__(self, directory: str | Path, *, to: int | str | None = None,
                 allow_newer: bool = False, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.to = None if to is None else parse_version(to, "migrate: to")
        self.allow_newer = allow_newer

    def select(self, migrations: Sequence[Migration],
               applied: Mapping[int, AppliedMigration]) -> list[Migration]:
        return pending_migrations(migrations, applied, self.to, allow_newer=self.allow_newer)


def migrate(
    directory: str | Path,
    *,
    database: str,
    to: int | str | None = None,
    table: str = "schema_migrations",
    deploy_id: str | None = None,
    settings: PgSettings | None = None,
    lock_timeout: float = 300.0,
    allow_newer: bool = False,
    name: str | None = None,
) -> MigrateTask:
    """Apply the pending migrations of a local directory to a PostgreSQL database.

    Args:
        directory: controller-side directory of ``NNNN_name.up.sql`` files (and
            optional ``NNNN_name.down.sql``); versions are the numbers, in order.
        database: the database on the host (it must exist).
        to: apply only up to this version (inclusive); a database already past
            it is left as it is (``ok``): going down is :func:`rollback`'s job.
        table: the bookkeeping table (``name`` or ``schema.name``), created on the
            first apply: version, name, checksum (SHA-256 of the up file),
            applied_at, deploy_id.
        deploy_id: recorded on each row this run applies (default: a new id per
            run, in ``data["deploy_id"]``).
        settings: how to reach PostgreSQL (default: the host's vars, see
            :mod:`deploykit.pg`).
        lock_timeout: seconds to wait for another run's migration lock before
            failing with a message naming the holder.
        allow_newer: leave applied versions above the directory's newest alone
            (older code deployed over a newer release's expand migrations, once
            :func:`deploykit.tasks.migrations.policy.judge` allowed it); without
            it they are an error.
        name: the step's name in reports.

    Idempotence: the probe is one SQL query; ``ok`` (and nothing else sent)
    when no migration is pending. Check mode lists the pending migrations and
    changes nothing (the table is not even created).
    Errors (the step fails, nothing runs): an applied migration whose up file
    changed, an applied version missing from the directory, a pending version
    below an applied one, a file with its own ``BEGIN;``. A failing migration is
    rolled back with its row; those applied before it stay applied (each had its
    own transaction), and the message names them and the failing file, with
    ``:line:column`` when PostgreSQL gives the error a position (syntax errors,
    unknown tables, columns, types and functions; not e.g. a duplicate table or a
    division by zero, where the message and its CONTEXT say which statement).
    Undo: rolls back, newest first, the migrations this run applied, running
    their down files; it stops at the first migration without a down file and
    reports the ones that stay applied (restore from a backup then).
    Result ``data``: ``before``/``after`` (newest applied version), ``pending``,
    ``ran`` (applied by this run), ``deploy_id``, ``lock_waited`` (seconds).
    """
    return MigrateTask(directory, to=to, database=database, table=table, settings=settings,
                       lock_timeout=lock_timeout, deploy_id=deploy_id, allow_newer=allow_newer,
                       name=name)


class RollbackTask(_SqlMigrationTask):
    """Roll back applied SQL migrations with their down files. See :func:`rollback`."""

    kind: ClassVar[str] = "migrate.rollback"
    direction: ClassVar[Direction] = "down"
    verb: ClassVar[str] = "rolled back"

    def __init__(self, directory: str | Path, *, steps: int | None = None,
                 to: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        if steps is not None and to is not None:
            raise ConfigError("rollback: give steps or to, not both")
        if to is None and steps is None:
            steps = 1
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 1):
            raise ConfigError(f"rollback: steps must be a positive integer, not {steps!r}")
        self.steps = steps
        self.to = None if to is None else parse_version(to, "rollback: to")

    def select(self, migrations: Sequence[Migration],
               applied: Mapping[int, AppliedMigration]) -> list[Migration]:
        return rollback_targets(migrations, applied, steps=self.steps, to=self.to)


def rollback(
    directory: str | Path,
    *,
    database: str,
    steps: int | None = None,
    to: int | str | None = None,
    table: str = "schema_migrations",
    deploy_id: str | None = None,
    settings: PgSettings | None = None,
    lock_timeout: float = 300.0,
    name: str | None = None,
) -> RollbackTask:
    """Roll back applied migrations, newest first, each with its down file in its own transaction.

    Args:
        directory, database, table, settings, lock_timeout, name: as for :func:`migrate`.
        steps: roll back the newest ``steps`` applied migrations (default 1).
            **Relative, hence not idempotent**, like ``alembic downgrade -1``: each
            run rolls back ``steps`` more. Prefer ``to`` in scripts run twice.
        to: roll back every applied migration above this version (``0``: all);
            idempotent: ``ok`` once the database is at or below it.
        deploy_id: recorded on the rows the undo re-applies (default: a new id).

    Every migration to roll back must be in the directory with an unchanged up
    file and a down file, else the step fails before anything runs. A failing
    down file is rolled back (its row stays); the error names ``file:line:column``.
    Check mode lists the migrations that would be rolled back.
    Undo: re-applies (up files) the migrations this run rolled back.
    Result ``data``: as for :func:`migrate`, ``ran`` being the rolled back ones.
    """
    return RollbackTask(directory, steps=steps, to=to, database=database, table=table,
                        settings=settings, lock_timeout=lock_timeout, deploy_id=deploy_id,
                        name=name)
