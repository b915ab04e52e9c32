"""PostgreSQL sessions and the base of the PostgreSQL tasks.

A :class:`PgTask` reads its facts in SQL through one :class:`Scope` per run (one psycopg
session per database, every statement logged in ``conn.log``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import psycopg
from psycopg import sql

from deploykit import pg
from deploykit.connection import Connection, LoggedCommand
from deploykit.errors import ConfigError, RollbackError, TaskError
from deploykit.pg import PgSettings
from deploykit.result import Result
from deploykit.secrets import redact
from deploykit.task import Facts, Plan, Task, UndoStack

State = Literal["present", "absent"]
Query = str | sql.Composable
Params = Sequence[object] | Mapping[str, object]
Row = tuple[Any, ...]
SCOPE_KEY = "_pg_scope"


def check_state(state: str) -> None:
    if state not in ("present", "absent"):
        raise ConfigError(f"state must be 'present' or 'absent', not {state!r}")


def check_name(what: str, value: str) -> str:
    """A PostgreSQL identifier: 1-63 bytes, no NUL."""
    if not isinstance(value, str) or not value or "\0" in value or len(value.encode()) > 63:
        raise ConfigError(f"{what} name {value!r}: 1 to 63 bytes, no NUL character")
    return value



# -- SQL sessions --------------------------------------------------------------------------


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


class Session:
    """One psycopg connection to one database; every statement goes to ``conn.log``."""

    def __init__(self, conn: Connection, pgconn: psycopg.Connection[Any], dbname: str,
                 task: str) -> None:
        self.conn = conn
        self.pg = pgconn
        self.dbname = dbname
        self.task = task

    def _execute(self, query: Query, params: Params | None, write: bool,
                 shown: str | None) -> psycopg.Cursor[Any]:
        text = shown if shown is not None else (
            query if isinstance(query, str) else query.as_string(self.pg))
        text = redact(one_line(text, 2000), self.conn.secrets)
        try:
            cursor = self.pg.execute(query, params)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            self.conn.log.append(LoggedCommand(f"sql {self.dbname}: {text}", write, 1))
            primary = exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None
            reason = redact(primary or str(exc).strip(), self.conn.secrets)
            raise TaskError(f"SQL on database {self.dbname!r} failed: {reason} "
                            f"[{one_line(text, 200)}]", host=self.conn.name,
                            task=self.task) from None
        self.conn.log.append(LoggedCommand(f"sql {self.dbname}: {text}", write, 0))
        return cursor

    def rows(self, query: Query, params: Params | None = None, *,
             write: bool = False) -> list[Row]:
        """Run a query; its rows (none for a statement without result)."""
        cursor = self._execute(query, params, write, None)
        return list(cursor.fetchall()) if cursor.description else []

    def value(self, query: Query, params: Params | None = None) -> Any:
        """The first column of the first row, or None when there is no row."""
        rows = self.rows(query, params)
        return rows[0][0] if rows else None

    def write(self, query: Query, params: Params | None = None, *,
              shown: str | None = None) -> None:
        """Run a statement that changes something (``shown`` replaces it in the log)."""
        self._execute(query, params, True, shown)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: committed at the end, rolled back on any error."""
        with self.pg.transaction():
            yield


class Scope:
    """What one run of a task shares between plan, apply and the re-probe: one open
    session per database, and the data that goes into ``Result.data``."""

    def __init__(self, task: PgTask, conn: Connection) -> None:
        self.task = task
        self.conn = conn
        self.data: dict[str, Any] = {}
        self._open: dict[str, tuple[contextlib.ExitStack, Session]] = {}

    def sql(self, dbname: str) -> Session:
        """The session on ``dbname``, opened on first use."""
        if dbname not in self._open:
            stack = contextlib.ExitStack()
            pgconn = stack.enter_context(pg.connect(self.conn, dbname,
                                                    settings=self.task.settings_for(self.conn)))
            self._open[dbname] = (stack, Session(self.conn, pgconn, dbname, self.task.name))
        return self._open[dbname][1]

    def close(self, dbname: str | None = None) -> None:
        """Close the session on ``dbname`` (every session when None)."""
        for name in [dbname] if dbname is not None else list(self._open):
            entry = self._open.pop(name, None)
            if entry is not None:
                entry[0].close()


@contextlib.contextmanager
def open_session(conn: Connection, settings: PgSettings, dbname: str, task: str
             ) -> Iterator[Session]:
    """A session outside a task run (undo actions)."""
    with pg.connect(conn, dbname, settings=settings) as pgconn:
        yield Session(conn, pgconn, dbname, task)


def describe_server(conn: Connection, settings: PgSettings) -> str:
    return f"PostgreSQL {settings.server_host}:{settings.port} on host {conn.name}"


class PgTask(Task):
    """Base of the PostgreSQL tasks.

    * Facts are read lazily in :meth:`plan`: SQL through :meth:`scope` (one
      session per database for the whole run, shared with the re-probe), and,
      for tasks with ``shell_probe``, the shell probe when the runner did not
      batch it already.
    * Whatever a task puts in ``scope(facts).data`` ends up in ``Result.data``.
    """

    shell_probe: ClassVar[bool] = False

    def __init__(self, *, settings: PgSettings | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        self.settings = settings

    def settings_for(self, conn: Connection) -> PgSettings:
        """The given settings, else the host's (``postgres_*`` vars)."""
        return self.settings or PgSettings.from_host(conn.host)

    def probe_script(self) -> str:
        return ":"

    def parse(self, output: str) -> Facts:
        return {}

    def probe(self, conn: Connection) -> Facts:
        return super().probe(conn) if self.shell_probe else {}

    def shell(self, conn: Connection, facts: Facts) -> Facts:
        """The parsed shell probe, run now when the runner did not batch it."""
        if "shell" not in facts:
            facts.update(self.probe(conn))
        return facts

    @staticmethod
    def scope(facts: Facts) -> Scope:
        """This run's sessions and result data."""
        scope: Scope = facts[SCOPE_KEY]
        return scope

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        current: Facts = {} if facts is None else facts
        scope = current[SCOPE_KEY] = Scope(self, conn)
        try:
            result = super().run(conn, check=check, facts=current, undo=undo)
        finally:
            scope.close()
        result.data.update(scope.data)
        return result

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        fresh = self.probe(conn)
        fresh[SCOPE_KEY] = facts[SCOPE_KEY]
        return self.plan(conn, fresh)

    def error(self, conn: Connection, message: str) -> TaskError:
        """A TaskError of this task on ``conn``'s host."""
        return TaskError(message, host=conn.name, task=self.name)


Statement = tuple[sql.Composable, str | None]
"""A statement and, when it holds a secret, how the log shows it."""


def undo_sql(task: str, settings: PgSettings, dbname: str,
              statements: Sequence[Statement]) -> Callable[[Connection], None]:
    """An undo action running ``statements`` on ``dbname``, in order."""
    def run(conn: Connection) -> None:
        with open_session(conn, settings, dbname, f"undo {task}") as s:
            for statement, shown in statements:
                s.write(statement, shown=shown)
    return run


def undo_impossible(message: str) -> Callable[[Connection], None]:
    def fail(conn: Connection) -> None:
        raise RollbackError(message, host=conn.name)
    return fail


@dataclass(frozen=True)
class DatabaseFacts:
    """One row of ``pg_database``, as the tasks here need it."""

    oid: int
    owner: str
    encoding: str
    collate: str
    ctype: str
    allow_connections: bool
    comment: str | None = None


def database_facts(s: Session, name: str) -> DatabaseFacts | None:
    rows = s.rows("SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), "
                  "d.datcollate, d.datctype, d.datallowconn, "
                  "shobj_description(d.oid, 'pg_database') "
                  "FROM pg_database d WHERE d.datname = %s", [name])
    return DatabaseFacts(*rows[0]) if rows else None
