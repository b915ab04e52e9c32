"""Database migrations: a runner for SQL migration directories, and adapters for alembic
and for any migration tool with a status command.

**SQL migrations** (:func:`migrate`, :func:`rollback`) live on the controller in a
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

**Adapters** run a team's own tool on the host over SSH, with the same Result
semantics (``data["before"]``/``data["after"]``; ``changed`` only when they differ):

* :func:`alembic_migrate` / :func:`alembic_downgrade`: ``alembic current`` before
  and after ``alembic upgrade head`` / ``alembic downgrade -1``;
* :func:`command_migrate`: any tool with a status command (``flask db current``,
  ``php artisan migrate:status``), an apply command and an optional rollback
  command.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets as _random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, LiteralString

import psycopg
from psycopg import sql

from deploykit import pg
from deploykit.connection import CommandResult, Connection, LoggedCommand
from deploykit.errors import ConfigError, DeployError, LockHeldError, RollbackError, TaskError
from deploykit.pg import PgSettings
from deploykit.result import Result, Status
from deploykit.secrets import Secret, redact
from deploykit.shell import join, quote
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "AlembicTask",
    "AppliedMigration",
    "CommandMigrateTask",
    "MigrateTask",
    "Migration",
    "RollbackTask",
    "alembic_downgrade",
    "alembic_migrate",
    "command_migrate",
    "load_migrations",
    "migrate",
    "parse_alembic_revisions",
    "pending_migrations",
    "rollback",
    "rollback_targets",
    "sql_error_location",
]

_FILE = re.compile(r"(?P<version>\d+)_(?P<name>[A-Za-z0-9_\-]+)\.(?P<direction>up|down)\.sql\Z")
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\Z")
# A file wrapping itself in BEGIN; ... COMMIT; would commit deploykit's transaction early.
_OWN_TRANSACTION = re.compile(r"^[ \t]*(BEGIN(?:\s+(?:WORK|TRANSACTION))?|START\s+TRANSACTION)\s*;",
                              re.I | re.M)
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: How often a run waiting for another run's migration lock asks again (seconds).
LOCK_POLL = 0.2
#: How much of a tool's output a Result keeps (the end: where errors are).
OUTPUT_TAIL = 2000


def _tail(text: str, limit: int = OUTPUT_TAIL) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _new_deploy_id() -> str:
    """A deploy id in the runner's run-id format: ``20240501T120000-ab12cd``."""
    return time.strftime("%Y%m%dT%H%M%S-") + _random.token_hex(3)


# -- the migration directory --------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One migration of a directory: ``NNNN_name.up.sql`` and maybe ``NNNN_name.down.sql``."""

    version: int
    label: str  # the version as the file writes it: "0003"
    name: str
    up_path: Path
    up_sql: str = field(repr=False)
    checksum: str  # SHA-256 of the .up.sql bytes
    down_path: Path | None = None
    down_sql: str | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        """``0003_add_index``: how plans, results and errors name the migration."""
        return f"{self.label}_{self.name}"


@dataclass(frozen=True)
class AppliedMigration:
    """One row of the ``schema_migrations`` table."""

    version: int
    name: str
    checksum: str
    applied_at: str = ""
    deploy_id: str | None = None


def _read_sql(path: Path) -> tuple[bytes, str]:
    """A migration file's bytes and text; refuses a file that opens its own transaction."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read migration {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"migration {path} is not UTF-8 text (byte {exc.start})") from None
    own = _OWN_TRANSACTION.search(text)
    if own is not None:
        line, _ = sql_error_location(text, own.start(1) + 1)
        raise ConfigError(f"{path}:{line}: {own[1]}: deploykit runs each migration in its own "
                          f"transaction; remove the file's BEGIN and COMMIT")
    return data, text


def load_migrations(directory: str | Path) -> list[Migration]:
    """Read a migration directory: every ``NNNN_name.up.sql`` (with its down file), by version.

    Files not ending in ``.sql`` are ignored (a README may sit there); a ``.sql``
    file not named ``NNNN_name.up.sql`` / ``.down.sql``, two migrations with one
    version, or a down file without its up file is a :class:`ConfigError`.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"migrations directory {root} does not exist or is not a directory")
    ups: dict[int, tuple[str, str, Path]] = {}
    downs: dict[int, tuple[str, Path]] = {}
    for path in sorted(root.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if match is None:
            raise ConfigError(f"migration file {path}: name must be NNNN_name.up.sql or "
                              f"NNNN_name.down.sql")
        version = int(match["version"])
        if match["direction"] == "up":
            if version in ups:
                raise ConfigError(f"migrations {ups[version][2].name} and {path.name} in {root} "
                                  f"have the same version {version}")
            ups[version] = (match["version"], match["name"], path)
        else:
            downs[version] = (match["name"], path)
    for version, (name, path) in downs.items():
        if version not in ups or ups[version][1] != name:
            raise ConfigError(f"{path} has no matching up file ({path.name[:-9]}.up.sql)")
    migrations = []
    for version in sorted(ups):
        label, name, up_path = ups[version]
        data, text = _read_sql(up_path)
        down_path = downs[version][1] if version in downs else None
        migrations.append(Migration(
            version=version, label=label, name=name, up_path=up_path, up_sql=text,
            checksum=hashlib.sha256(data).hexdigest(), down_path=down_path,
            down_sql=_read_sql(down_path)[1] if down_path else None))
    return migrations


def _parse_version(value: int | str, what: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
        raise ConfigError(f"{what} must be a migration version number, not {value!r}")
    return int(value)


def _verify_applied(migrations: Sequence[Migration],
                    applied: Mapping[int, AppliedMigration]) -> None:
    """Every applied version is in the directory, with the checksum it was applied with."""
    by_version = {m.version: m for m in migrations}
    unknown = [a for v, a in sorted(applied.items()) if v not in by_version]
    if unknown:
        listed = ", ".join(f"{a.version}_{a.name}" for a in unknown)
        raise TaskError(f"the database has migrations this directory does not: {listed}; "
                        f"deploy the release that has them, or roll them back with it")
    for version, row in sorted(applied.items()):
        m = by_version[version]
        if row.checksum != m.checksum:
            raise TaskError(
                f"{m.up_path}: changed after it was applied (checksum {row.checksum[:12]} "
                f"applied{f' by deploy {row.deploy_id}' if row.deploy_id else ''}, file now "
                f"{m.checksum[:12]}); an applied migration must never change: write a new "
                f"migration instead")


def pending_migrations(migrations: Sequence[Migration], applied: Mapping[int, AppliedMigration],
                       to: int | None = None) -> list[Migration]:
    """The migrations to apply, in order, up to version ``to`` (inclusive; None = all).

    Raises :class:`TaskError` when an applied migration changed or is unknown to
    the directory, when ``to`` names no migration, or when a pending migration
    is older than an applied one (out of order).
    """
    _verify_applied(migrations, applied)
    if to is not None and to not in {m.version for m in migrations}:
        raise TaskError(f"to={to}: no migration has this version")
    todo = [m for m in migrations if m.version not in applied and (to is None or m.version <= to)]
    newest = max(applied, default=0)
    late = [m for m in todo if m.version < newest]
    if late:
        above = next(m for m in migrations if m.version == newest)
        raise TaskError(f"{late[0].id} is not applied but the newer {above.id} is: "
                        f"out-of-order migrations are refused; give it a version above "
                        f"{above.label}")
    return todo


def rollback_targets(migrations: Sequence[Migration], applied: Mapping[int, AppliedMigration],
                     *, steps: int | None = None, to: int | None = None) -> list[Migration]:
    """The applied migrations to roll back, newest first: the last ``steps``, or all above ``to``.

    Each must be in the directory with an unchanged up file and a down file,
    else :class:`TaskError` (before anything runs).
    """
    by_version = {m.version: m for m in migrations}
    versions = sorted(applied, reverse=True)
    if steps is not None:
        if steps > len(versions):
            raise TaskError(f"cannot roll back {steps} migration(s): only {len(versions)} "
                            f"applied")
        chosen = versions[:steps]
    else:
        assert to is not None
        chosen = [v for v in versions if v > to]
    _verify_applied(migrations, {v: applied[v] for v in chosen})
    targets = [by_version[v] for v in chosen]
    missing = [m for m in targets if m.down_sql is None]
    if missing:
        raise TaskError(f"cannot roll back {missing[0].id}: no down file "
                        f"{missing[0].up_path.with_name(missing[0].id + '.down.sql')}")
    return targets


def sql_error_location(text: str, position: int) -> tuple[int, int]:
    """``(line, column)``, both 1-based, of PostgreSQL's 1-based character ``position``."""
    before = text[:max(position - 1, 0)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


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
        result.data.update(
            database=self.database, before=_newest(state["applied"], state.get("ids", {})),
            after=_newest(state.get("after_rows", state["applied"]), state.get("ids", {})),
            pending=[m.id for m in state.get("todo", [])], ran=[m.id for m in done],
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

    def __init__(self, directory: str | Path, *, to: int | str | None = None, **kwargs: Any
                 ) -> None:
        super().__init__(directory, **kwargs)
        self.to = None if to is None else _parse_version(to, "migrate: to")

    def select(self, migrations: Sequence[Migration],
               applied: Mapping[int, AppliedMigration]) -> list[Migration]:
        return pending_migrations(migrations, applied, self.to)


def migrate(
    directory: str | Path,
    *,
    database: str,
    to: int | str | None = None,
    table: str = "schema_migrations",
    deploy_id: str | None = None,
    settings: PgSettings | None = None,
    lock_timeout: float = 300.0,
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
                       lock_timeout=lock_timeout, deploy_id=deploy_id, name=name)


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
        self.to = None if to is None else _parse_version(to, "rollback: to")

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


# -- adapters: tools on the host ------------------------------------------------------------

Cmd = str | Sequence[str]


def _shell(cmd: Cmd) -> str:
    """A command as shell code: a string as written (the caller's), a list quoted."""
    return cmd if isinstance(cmd, str) else join(cmd)


def _check_command(kind: str, what: str, cmd: Cmd | None) -> None:
    """Refuse an empty command, and a Secret in one (it would be logged: use env)."""
    if cmd is None:
        return
    if not (cmd.strip() if isinstance(cmd, str) else cmd):
        raise ConfigError(f"{kind}: {what} is empty")
    if not isinstance(cmd, str) and not all(isinstance(a, str) for a in cmd):
        raise ConfigError(f"{kind}: {what} takes strings only; pass a Secret through env= "
                          f"(it is never logged there)")


def _untag(output: str, tag: str) -> tuple[list[str], int | None]:
    """The stdout lines and exit code that :meth:`_ToolTask.status_script` printed."""
    lines: list[str] = []
    code: int | None = None
    for line in output.splitlines():
        if line.startswith(f"{tag} "):
            lines.append(line[len(tag) + 1:])
        elif line.startswith(f"{tag}-rc ") and line[len(tag) + 4:].strip().isdigit():
            code = int(line[len(tag) + 4:])
    while lines and not lines[-1].strip():
        lines.pop()
    return lines, code


class _ToolTask(Task):
    """A migration tool run over SSH: its status, an action, its status again.

    Subclasses give the status command (:meth:`status_command`), read its
    output (:meth:`read`, facts with a ``status`` key) and say what
    ``data["before"]``/``["after"]`` show (:meth:`describe`). The result is
    ``changed`` only when the status differs after the action.
    """

    tag: ClassVar[str] = "status"

    def __init__(self, *, env: Mapping[str, str | Secret] | None, chdir: str | None,
                 sudo: bool | None, timeout: float | None, name: str | None) -> None:
        super().__init__(name=name)
        for key in env or {}:
            if not _ENV_KEY.match(key):
                raise ConfigError(f"{self.kind}: invalid environment variable name {key!r}")
        if chdir is not None and not chdir.startswith("/"):
            raise ConfigError(f"{self.kind}: chdir must be an absolute path, not {chdir!r}")
        self.env: dict[str, str | Secret] = dict(env or {})
        self.chdir = chdir
        self.sudo = sudo
        self.timeout = timeout

    @abstractmethod
    def status_command(self) -> str:
        """The read-only command (shell code) printing the tool's status."""

    @abstractmethod
    def read(self, lines: list[str]) -> Facts:
        """Facts (with a ``status`` key) from the status command's stdout lines."""

    @abstractmethod
    def describe(self, facts: Facts) -> Any:
        """What ``data["before"]``/``["after"]`` show of a status."""

    @property
    def secrets(self) -> Sequence[Secret]:
        return [v for v in self.env.values() if isinstance(v, Secret)]

    def in_dir(self, command: str) -> str:
        """``command`` run in :attr:`chdir` (in a subshell), if one is set."""
        return f"(cd -- {quote(self.chdir)} && {command})" if self.chdir else command

    def status_script(self) -> str:
        """The status command, its stdout lines tagged, then its exit code."""
        return (f"dk_out=$({self.in_dir(self.status_command())}\n); dk_rc=$?\n"
                f"printf '%s\\n' \"$dk_out\" | sed 's/^/{self.tag} /'\n"
                f"echo \"{self.tag}-rc $dk_rc\"")

    def probe_script(self) -> str:
        if self.secrets or self.sudo is not None:
            return ":"  # probed alone (run): a secret goes in env, never in a logged command
        exports = "".join(f"export {k}={quote(v)}\n" for k, v in self.env.items())
        return exports + self.status_script()

    def parse(self, output: str) -> Facts:
        lines, code = _untag(output, self.tag)
        if code != 0:  # the runner's batched probe: this task then probes alone, for stderr
            raise TaskError(f"{self.status_command()} exited with code {code}")
        return self.read(lines)

    def probe(self, conn: Connection) -> Facts:
        res = conn.run(self.status_script(), write=False, check=False, sudo=self.sudo,
                       env=self.env, task=self.name)
        lines, code = _untag(res.stdout, self.tag)
        if code != 0:
            detail = _tail(res.stderr, 1500)
            raise TaskError(f"status command {self.status_command()} "
                            + (f"exited with code {code}" if code is not None else "failed")
                            + (f":\n{detail}" if detail else ""), host=conn.name, task=self.name)
        return self.read(lines)

    def act(self, conn: Connection, command: str, facts: Facts) -> None:
        """Run the tool's action (a write), then read the status again into ``facts``."""
        res = conn.run(self.in_dir(command), check=False, sudo=self.sudo, env=self.env,
                       timeout=self.timeout, task=self.name)
        facts["ran"] = res
        if res.failed:
            detail = _tail(res.stderr or res.stdout, 1500)
            raise TaskError(f"{res.command} exited with code {res.exit_code}"
                            + (f":\n{detail}" if detail else ""), host=conn.name, task=self.name)
        facts["after"] = self.probe(conn)

    def push_undo(self, undo: UndoStack, description: str, command: str,
                  needed: Callable[[Connection], bool] = lambda c: True) -> None:
        """Register ``command`` (run like the action) as the undo, run only if ``needed``."""
        where, sudo, env, timeout = self.in_dir(command), self.sudo, self.env, self.timeout
        task = f"undo {self.name}"

        def run(c: Connection) -> None:
            if needed(c):
                c.run(where, sudo=sudo, env=env, timeout=timeout, task=task)

        undo.push(description, run)

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """The task contract, with ``data["before"]``/``["after"]`` and the action's output."""
        conn.secrets.update(self.secrets)
        state: Facts = dict(facts) if facts and "status" in facts else {}
        if not state:
            try:
                state = self.probe(conn)
            except DeployError as exc:
                return Result(host=conn.name, task=self.name, status=Status.FAILED,
                              message=exc.message, check=check)
        result = super().run(conn, check=check, facts=state, undo=undo)
        after: Facts = state.get("after", state)
        result.data.update(before=self.describe(state), after=self.describe(after))
        ran = state.get("ran")
        if isinstance(ran, CommandResult):
            result.data.update(command=ran.command, exit_code=ran.exit_code,
                               stdout=_tail(ran.stdout), stderr=_tail(ran.stderr))
        if result.changed and not check and after["status"] == state["status"]:
            result.status, result.diff = Status.OK, ""
            result.message = "ran; the status did not change"
        return result


def parse_alembic_revisions(lines: Sequence[str]) -> list[tuple[str, bool]]:
    """``alembic current`` lines -> ``[(revision, is_head)]``.

    A line is ``REV`` then markers such as ``(head)``, ``(effective head)`` or
    ``(branchpoint)``; other lines (a log configured onto stdout) are ignored.
    """
    found = []
    for line in lines:
        match = re.fullmatch(r"([0-9A-Za-z_\-]+)((?: \([a-z ]+\))*)\s*", line)
        if match:
            found.append((match[1], "head)" in match[2]))
    return found


_HEADS = "--deploykit-alembic-heads--"


class AlembicTask(_ToolTask):
    """``alembic upgrade``/``downgrade`` on the host. See :func:`alembic_migrate`."""

    kind: ClassVar[str] = "alembic"
    tag: ClassVar[str] = "current"

    def __init__(self, command_prefix: Cmd, action: Literal["upgrade", "downgrade"],
                 target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not target or any(c.isspace() for c in target):
            raise ConfigError(f"alembic: target must be a revision, not {target!r}")
        _check_command("alembic", "command_prefix", command_prefix)
        self.prefix = command_prefix
        self.action = action
        self.revision = target

    def target(self) -> str:
        return f"{self.action} {self.revision}"

    @property
    def relative(self) -> bool:
        """``-1``/``+2``: a target counted from the current revision (never idempotent)."""
        return self.revision[:1] in "+-" and self.revision[1:].isdigit()

    def alembic(self, *args: str) -> str:
        """The alembic command line: the caller's prefix, then ``args`` quoted."""
        return f"{_shell(self.prefix)} {join(args)}"

    def status_command(self) -> str:
        if self.revision != "heads":
            return self.alembic("current")
        # with branches, "(head)" on each current revision does not mean every head is there
        return f"{self.alembic('current')} && echo {_HEADS} && {self.alembic('heads')}"

    def read(self, lines: list[str]) -> Facts:
        cut = lines.index(_HEADS) if _HEADS in lines else len(lines)
        revisions = parse_alembic_revisions(lines[:cut])
        current = sorted(r for r, _ in revisions)
        if cut < len(lines):
            heads = sorted(r for r, _ in parse_alembic_revisions(lines[cut + 1:]))
            return {"status": current, "at_head": bool(current) and current == heads}
        return {"status": current,
                "at_head": bool(revisions) and all(head for _, head in revisions)}

    def describe(self, facts: Facts) -> Any:
        return list(facts["status"])

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        current: list[str] = facts["status"]
        if self.action == "upgrade" and (self.relative or self.revision in ("head", "heads")):
            needed = not facts["at_head"]
        elif self.action == "upgrade":
            needed = current != [self.revision]
        else:  # downgrade: nothing below base
            needed = bool(current) and (self.relative or current != [self.revision])
        plan = Plan()
        if needed:
            plan.add("revision", ",".join(current) or "base", self.revision)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        before: list[str] = facts["status"]
        back = "downgrade" if self.action == "upgrade" else "upgrade"
        if len(before) > 1:
            undo.push(f"{self.name}: back to {','.join(before)}", _cannot(
                f"the database was at several alembic heads ({', '.join(before)}); "
                f"alembic cannot {back} to all of them in one command"))
        else:
            rev = before[0] if before else "base"
            self.push_undo(undo, f"{self.name}: alembic {back} {rev}", self.alembic(back, rev))
        self.act(conn, self.alembic(self.action, self.revision), facts)

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """An absolute target must be reached; a relative one must have moved the revision."""
        after: Facts = facts["after"]
        if not self.relative:
            return self.plan(conn, after)
        plan = Plan()
        if after["status"] == facts["status"]:
            plan.add("revision", ",".join(after["status"]) or "base", self.revision)
        return plan


def _cannot(message: str) -> Callable[[Connection], None]:
    """An undo action that reports why the change cannot be undone."""
    def fail(conn: Connection) -> None:
        raise RollbackError(message, host=conn.name)
    return fail


def alembic_migrate(
    command_prefix: Cmd,
    target: str = "head",
    *,
    env: Mapping[str, str | Secret] | None = None,
    chdir: str | None = None,
    sudo: bool | None = None,
    timeout: float | None = None,
    name: str | None = None,
) -> AlembicTask:
    """Run ``alembic upgrade TARGET`` on the host (where the app's venv lives) when needed.

    Args:
        command_prefix: how to call alembic on the host, e.g.
            ``"/srv/app/venv/bin/alembic -c /srv/app/alembic.ini"`` (shell code,
            used as written) or the same as an argument list (quoted).
        target: ``head`` (default), ``heads``, a revision, or relative ``+N``.
        env: environment of every alembic command, e.g. ``{"DATABASE_URL":
            Secret("postgresql+psycopg://app:pw@127.0.0.1/app")}``. Secrets are
            redacted in logs and results; a task with one is probed on its own
            (the runner's batched probe carries no env).
        chdir: absolute directory to run alembic in (for relative paths in alembic.ini).
        sudo, timeout, name: as for :func:`deploykit.tasks.system.command`.

    Probe: ``alembic current`` (one read-only command; for ``heads`` also ``alembic
    heads``, in the same round trip). Plan: ``revision: a1 ->
    head`` unless every current revision is a head (``head``, ``heads``, ``+N``)
    or is the target revision. Apply: ``alembic upgrade TARGET``, then ``alembic
    current`` again: ``changed`` when the revision moved, ``failed`` when it did
    not reach the target.
    Result ``data``: ``before``/``after`` (current revisions, ``[]`` for base), the
    upgrade's ``stdout``/``stderr`` tails (alembic logs each migration on stderr).
    Check mode reports ``revision: BEFORE -> TARGET`` and changes nothing.
    Undo: ``alembic downgrade BEFORE`` (``base`` for an empty database).
    """
    return AlembicTask(command_prefix, "upgrade", target, env=env, chdir=chdir, sudo=sudo,
                       timeout=timeout, name=name)


def alembic_downgrade(
    command_prefix: Cmd,
    target: str = "-1",
    *,
    env: Mapping[str, str | Secret] | None = None,
    chdir: str | None = None,
    sudo: bool | None = None,
    timeout: float | None = None,
    name: str | None = None,
) -> AlembicTask:
    """Run ``alembic downgrade TARGET`` on the host (default ``-1``: one revision back).

    A relative target (``-1``) is **not idempotent**: every run goes one revision
    further back, ``ok`` only at ``base``. An absolute target (a revision,
    ``base``) is ``ok`` once reached. Arguments, probe, Result ``data`` and check
    mode as for :func:`alembic_migrate`. Undo: ``alembic upgrade BEFORE``.
    """
    return AlembicTask(command_prefix, "downgrade", target, env=env, chdir=chdir, sudo=sudo,
                       timeout=timeout, name=name)


class CommandMigrateTask(_ToolTask):
    """Any migration tool with a status command. See :func:`command_migrate`."""

    kind: ClassVar[str] = "migrate.command"

    def __init__(self, status: Cmd, apply: Cmd, *, pending: str | Callable[[str], bool] | None,
                 current: str | None, rollback: Cmd | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for what, cmd in (("status", status), ("apply", apply), ("rollback", rollback)):
            _check_command("command_migrate", f"the {what} command", cmd)
        try:
            self.pending_re = re.compile(pending, re.M) if isinstance(pending, str) else None
            self.current_re = re.compile(current, re.M) if current is not None else None
        except re.error as exc:
            raise ConfigError(f"command_migrate: bad regular expression: {exc}") from None
        if self.current_re is not None and self.current_re.groups > 1:
            raise ConfigError("command_migrate: current must have at most one group")
        self.status_cmd = status
        self.apply_cmd = apply
        self.pending = pending
        self.rollback_cmd = rollback

    def target(self) -> str:
        return _shell(self.apply_cmd)

    def status_command(self) -> str:
        return _shell(self.status_cmd)

    def read(self, lines: list[str]) -> Facts:
        return {"status": "\n".join(lines)}

    def describe(self, facts: Facts) -> Any:
        status: str = facts["status"]
        if self.current_re is None:
            return _tail(status, 500)
        match = self.current_re.search(status)
        return None if match is None else match[self.current_re.groups]

    def is_pending(self, conn: Connection, status: str) -> bool | None:
        """What the ``pending`` test says of a status output (None: no test given)."""
        if self.pending is None:
            return None
        if self.pending_re is not None:
            return self.pending_re.search(status) is not None
        assert callable(self.pending)
        try:
            return bool(self.pending(status))
        except Exception as exc:  # a bug in the caller's test: report it on this host
            raise TaskError(f"pending test raised {type(exc).__name__}: {exc}",
                            host=conn.name, task=self.name) from exc

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        pending = self.is_pending(conn, facts["status"])
        plan = Plan()
        if pending is None:
            plan.add("migrations", "unknown (no pending test)", f"run {_shell(self.apply_cmd)}")
        elif pending:
            plan.add("migrations", f"pending at {self.describe(facts)}", "applied")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        def moved(c: Connection) -> bool:  # the rollback runs only if the apply changed things
            after: Facts | None = facts.get("after")
            if after is None:
                raise RollbackError("the apply command failed and the status could not be read "
                                    "again: the rollback command is not run blindly (it could "
                                    "undo an earlier deploy's migrations)", host=c.name)
            return bool(after["status"] != facts["status"])

        if self.rollback_cmd is not None:
            self.push_undo(undo, f"{self.name}: roll back with {_shell(self.rollback_cmd)}",
                           _shell(self.rollback_cmd), moved)
        try:
            self.act(conn, _shell(self.apply_cmd), facts)
        except TaskError:
            with contextlib.suppress(DeployError):  # what did the failed apply leave?
                facts["after"] = self.probe(conn)
            raise

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """Nothing may be pending any more (without a pending test: nothing to check)."""
        after: Facts = facts["after"]
        return self.plan(conn, after) if self.is_pending(conn, after["status"]) else Plan()


def command_migrate(
    status: Cmd,
    apply: Cmd,
    *,
    pending: str | Callable[[str], bool] | None = None,
    current: str | None = None,
    rollback: Cmd | None = None,
    env: Mapping[str, str | Secret] | None = None,
    chdir: str | None = None,
    sudo: bool | None = None,
    timeout: float | None = None,
    name: str | None = None,
) -> CommandMigrateTask:
    """Run a migration tool's apply command on the host when its status says so.

    For the tools deploykit has no adapter for: ``flask db upgrade``, ``php
    artisan migrate --force``, ``npx prisma migrate deploy``, ``rails db:migrate``.

    Args:
        status: a **read-only** command whose stdout tells the migration status
            (``php artisan migrate:status``, ``flask db current``); it runs in the
            probe, in check mode too. Shell code as written, or an argument list.
        apply: the command applying the migrations (``php artisan migrate --force``).
        pending: a regex searched (multi-line) in the status output, or a callable
            on it, true when migrations are pending (``r"\\bPending\\b"``). Without
            it the apply command runs on every run (a write each time), and the
            result is ``changed`` only if the status changed.
        current: a regex picking the current version out of the status output
            (its group, else the whole match) for ``data["before"]``/``["after"]``;
            without it they hold the status output (its last 500 characters).
        rollback: a command undoing the apply (``php artisan migrate:rollback``),
            registered on the undo stack; it runs only if the apply changed the
            status (or failed before the status could be read again).
        env, chdir, sudo, timeout, name: as for :func:`alembic_migrate`.

    Result: ``changed`` only when the status output differs after the apply
    command; ``failed`` when the apply command fails or the pending test still
    holds after it. ``data``: ``before``/``after``, and the apply command's
    ``exit_code`` and ``stdout``/``stderr`` tails.
    Check mode: ``changed`` when the pending test holds (``migrations: pending at
    0003 -> applied``); only the status command runs.
    """
    return CommandMigrateTask(status, apply, pending=pending, current=current, rollback=rollback,
                              env=env, chdir=chdir, sudo=sudo, timeout=timeout, name=name)
