"""PostgreSQL tasks: server state, backups, restore with swap, and data checks.

Each function builds a task (a plain value) that follows :mod:`deploykit.task`::

    from deploykit.tasks import postgres
    postgres.role("app", password=Secret(pw)).run(conn)
    postgres.database("app", owner="app").run(conn)
    postgres.backup("app", app="shop", deploy_id=run_id, keep_last=5).run(conn)
    postgres.restore("app", postgres.backup_path("shop", "app", run_id)).run(conn)

**State tasks** (:func:`database`, :func:`role`, :func:`extension`, :func:`privilege`)
talk SQL with psycopg 3 through :func:`deploykit.pg.connect`: by default over an
SSH local port forward on the host's connection (the database port never needs
to be open to the controller), directly when the host sets ``postgres_direct``.
Their probe is SQL, not shell: ``probe_script`` is ``:``, and the facts are
read in :meth:`Task.plan`, which therefore works whether the runner batched the
(empty) shell probe or not. Every SQL statement is appended to
:attr:`Connection.log` as ``sql <database>: <statement>``, marked as a read or a
write, secrets shown as ``********``: the same log that proves that a no-op run
sends no write command proves it for SQL.

**Backups** (:func:`backup`, :func:`latest_backup`, :func:`verify_backup`) run
``pg_dump``/``pg_restore`` *on the database host*, as the ``postgres`` OS user
over the Unix socket (peer authentication: no password travels) or, with
``os_user=None``, over TCP with the password read from the command's stdin
(never on a command line). A backup is ``/var/backups/<app>/<db>-<deploy_id>.dump``
(custom format, mode 0600) with a ``.sha256`` sidecar in ``sha256sum`` format.

**Restore with swap** (:func:`restore`, :func:`undo_restore`) restores into
``<db>_restore``, verifies it, then swaps names. The guarantees, exactly:

* the dump is checked first (``pg_restore --list``, and its sidecar checksum
  when there is one); a corrupt or truncated dump then fails *during the
  restore into* ``<db>_restore``, which is dropped: ``<db>`` is never touched
  before the swap, and its sessions are not interrupted;
* the swap: ``ALLOW_CONNECTIONS false`` on ``<db>`` and ``<db>_restore``
  (committed, so new sessions are refused), every session on both terminated
  (waiting until they are gone), then **one transaction** renames ``<db>`` to
  ``<db>_old_<UTC timestamp>`` and ``<db>_restore`` to ``<db>``, sets
  ``ALLOW_CONNECTIONS true`` on the new ``<db>`` and records the restore in its
  comment. PostgreSQL 15 allows ``ALTER DATABASE ... RENAME`` in a transaction
  block (not ``CREATE``/``DROP DATABASE``): the two renames commit together or
  not at all: the catalog always has exactly one database named ``<db>``, the
  old or the restored one. New sessions on ``<db>`` are refused meanwhile
  ("not currently accepting connections"); one that slipped in between is
  blocked by the rename's lock and then fails ("just been dropped or
  renamed"): none reaches the wrong database or a half-restored one;
* if the transaction fails, both names are unchanged, ``<db>`` accepts
  connections again and ``<db>_restore`` is dropped; if the controller is cut
  off *between* the first commit and the swap transaction, ``<db>`` may stay
  ``ALLOW_CONNECTIONS false`` (the error says so): running the restore again
  repairs it;
* downtime for clients of ``<db>``: from terminating their sessions to the
  commit (milliseconds to seconds), plus their reconnect; sessions are cut,
  so applications must reconnect;
* the old database is kept as ``<db>_old_<timestamp>`` (not connectable) until
  you drop it; :func:`undo_restore` (also the registered undo action) swaps it
  back the same way, keeping the restored one as ``<db>_undone_<timestamp>``.
  Database-level owner, privileges and ``ALTER DATABASE/ROLE ... SET`` settings
  of ``<db>`` are carried over to the restored copy (``pg_restore`` without
  ``--create`` does not restore them).

**Data checks** (:func:`snapshot_counts`, :func:`compare_counts`,
:func:`query_check`) only read; their findings are in ``Result.data``, so run
reports carry them. A failed check is a ``failed`` result with a message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import hmac
import json
import math
import os
import re
import stringprep
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import psycopg
from psycopg import sql

from deploykit import humanize, pg
from deploykit.connection import Connection, LoggedCommand
from deploykit.errors import ConfigError, DeployError, RollbackError, TaskError
from deploykit.facts import format_mode
from deploykit.pg import PgSettings
from deploykit.result import Result
from deploykit.secrets import REDACTED, Secret, redact
from deploykit.shell import quote
from deploykit.task import Facts, Plan, Task, UndoStack

__all__ = [
    "BACKUP_ROOT",
    "PRIVILEGES",
    "BackupTask",
    "CompareCountsTask",
    "CountDifference",
    "DatabaseFacts",
    "DatabaseTask",
    "DumpFacts",
    "ExtensionFacts",
    "ExtensionTask",
    "LatestBackupTask",
    "PgTask",
    "PrivilegeTask",
    "QueryCheckTask",
    "RestoreTask",
    "RoleFacts",
    "RoleTask",
    "SnapshotCountsTask",
    "UndoRestoreTask",
    "VerifyBackupTask",
    "backup",
    "backup_path",
    "compare_counts",
    "count_differences",
    "database",
    "extension",
    "latest_backup",
    "parse_dump",
    "parse_marker",
    "privilege",
    "query_check",
    "render_differences",
    "restore",
    "retention",
    "role",
    "saslprep",
    "scram_matches",
    "scram_verifier",
    "snapshot_counts",
    "split_guc_list",
    "undo_restore",
    "verify_backup",
    "verify_script",
]

State = Literal["present", "absent"]
Query = str | sql.Composable
Params = Sequence[object] | Mapping[str, object]
Row = tuple[Any, ...]
BACKUP_ROOT = "/var/backups"
"""Backups go to ``BACKUP_ROOT/<app>/`` unless a task says otherwise."""
SCRAM_ITERATIONS = 4096
"""PostgreSQL's default SCRAM iteration count (``scram_iterations`` from 16 on)."""
SWAP_WAIT = 10.0
"""Seconds to wait for terminated sessions to end before a swap gives up."""
_MARKER = "deploykit restore "
_BACKUP_DB = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,37}")
_FILE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SCOPE = "_pg_scope"


def _check_state(state: str) -> None:
    if state not in ("present", "absent"):
        raise ConfigError(f"state must be 'present' or 'absent', not {state!r}")


def _check_name(what: str, value: str) -> str:
    """A PostgreSQL identifier: 1-63 bytes, no NUL."""
    if not isinstance(value, str) or not value or "\0" in value or len(value.encode()) > 63:
        raise ConfigError(f"{what} name {value!r}: 1 to 63 bytes, no NUL character")
    return value


# -- SCRAM-SHA-256 verifiers ---------------------------------------------------------------


def saslprep(password: str) -> bytes:
    """The bytes PostgreSQL hashes for ``password`` (its ``pg_saslprep``, RFC 4013).

    ASCII is used as is; otherwise the text is mapped and NFKC-normalised, and
    if the result holds a prohibited or unassigned character or breaks the
    bidi rules, PostgreSQL falls back to the raw UTF-8 bytes: so does this.
    """
    raw = password.encode("utf-8", "surrogateescape")
    if password.isascii():
        return raw
    # non-ASCII spaces first (U+200B is in both tables: PostgreSQL makes it a space)
    mapped = "".join(" " if stringprep.in_table_c12(c) else "" if stringprep.in_table_b1(c)
                     else c for c in password)
    text = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
                  stringprep.in_table_a1)
    if not text or any(check(c) for c in text for check in prohibited):
        return raw
    if any(stringprep.in_table_d1(c) for c in text) and (
            any(stringprep.in_table_d2(c) for c in text)
            or not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1]))):
        return raw
    return text.encode()


def _scram_keys(password: Secret, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password.reveal()), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def scram_verifier(password: Secret, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """A ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` verifier for ``password``,
    as PostgreSQL stores it in ``pg_authid.rolpassword`` (random 16-byte salt by default).

    Roles get their password as this verifier, so the password itself never
    reaches the server, its logs or ``pg_stat_activity``.
    """
    salt = os.urandom(16) if salt is None else salt
    stored, server = _scram_keys(password, salt, iterations)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def scram_matches(verifier: str | None, password: Secret) -> bool:
    """True when the stored SCRAM-SHA-256 ``verifier`` was made from ``password``.

    Recomputes StoredKey and ServerKey with the verifier's salt and iteration
    count. Anything else (None, an md5 hash, a malformed verifier) is False.
    """
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    if match is None:
        return False
    try:
        iterations = int(match[1])
        salt, stored, server = (base64.b64decode(match[i], validate=True) for i in (2, 3, 4))
    except (ValueError, binascii.Error):
        return False
    if not 0 < iterations <= 10_000_000:
        return False
    want_stored, want_server = _scram_keys(password, salt, iterations)
    return hmac.compare_digest(stored, want_stored) and hmac.compare_digest(server, want_server)


# -- SQL sessions --------------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


class _Session:
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
        text = redact(_one_line(text, 2000), self.conn.secrets)
        try:
            cursor = self.pg.execute(query, params)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            self.conn.log.append(LoggedCommand(f"sql {self.dbname}: {text}", write, 1))
            primary = exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None
            reason = redact(primary or str(exc).strip(), self.conn.secrets)
            raise TaskError(f"SQL on database {self.dbname!r} failed: {reason} "
                            f"[{_one_line(text, 200)}]", host=self.conn.name,
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


class _Scope:
    """What one run of a task shares between plan, apply and the re-probe: one open
    session per database, and the data that goes into ``Result.data``."""

    def __init__(self, task: PgTask, conn: Connection) -> None:
        self.task = task
        self.conn = conn
        self.data: dict[str, Any] = {}
        self._open: dict[str, tuple[contextlib.ExitStack, _Session]] = {}

    def sql(self, dbname: str) -> _Session:
        """The session on ``dbname``, opened on first use."""
        if dbname not in self._open:
            stack = contextlib.ExitStack()
            pgconn = stack.enter_context(pg.connect(self.conn, dbname,
                                                    settings=self.task.settings_for(self.conn)))
            self._open[dbname] = (stack, _Session(self.conn, pgconn, dbname, self.task.name))
        return self._open[dbname][1]

    def close(self, dbname: str | None = None) -> None:
        """Close the session on ``dbname`` (every session when None)."""
        for name in [dbname] if dbname is not None else list(self._open):
            entry = self._open.pop(name, None)
            if entry is not None:
                entry[0].close()


@contextlib.contextmanager
def _session(conn: Connection, settings: PgSettings, dbname: str, task: str
             ) -> Iterator[_Session]:
    """A session outside a task run (undo actions)."""
    with pg.connect(conn, dbname, settings=settings) as pgconn:
        yield _Session(conn, pgconn, dbname, task)


def _where(conn: Connection, settings: PgSettings) -> str:
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
    def scope(facts: Facts) -> _Scope:
        """This run's sessions and result data."""
        scope: _Scope = facts[_SCOPE]
        return scope

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        current: Facts = {} if facts is None else facts
        scope = current[_SCOPE] = _Scope(self, conn)
        try:
            result = super().run(conn, check=check, facts=current, undo=undo)
        finally:
            scope.close()
        result.data.update(scope.data)
        return result

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        fresh = self.probe(conn)
        fresh[_SCOPE] = facts[_SCOPE]
        return self.plan(conn, fresh)

    def error(self, conn: Connection, message: str) -> TaskError:
        """A TaskError of this task on ``conn``'s host."""
        return TaskError(message, host=conn.name, task=self.name)


Statement = tuple[sql.Composable, str | None]
"""A statement and, when it holds a secret, how the log shows it."""


def _undo_sql(task: str, settings: PgSettings, dbname: str,
              statements: Sequence[Statement]) -> Callable[[Connection], None]:
    """An undo action running ``statements`` on ``dbname``, in order."""
    def run(conn: Connection) -> None:
        with _session(conn, settings, dbname, f"undo {task}") as s:
            for statement, shown in statements:
                s.write(statement, shown=shown)
    return run


def _undo_impossible(message: str) -> Callable[[Connection], None]:
    def fail(conn: Connection) -> None:
        raise RollbackError(message, host=conn.name)
    return fail


# -- database ------------------------------------------------------------------------------


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


def _database_facts(s: _Session, name: str) -> DatabaseFacts | None:
    rows = s.rows("SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), "
                  "d.datcollate, d.datctype, d.datallowconn, "
                  "shobj_description(d.oid, 'pg_database') "
                  "FROM pg_database d WHERE d.datname = %s", [name])
    return DatabaseFacts(*rows[0]) if rows else None


class DatabaseTask(PgTask):
    """A database, present with an owner (and encoding at creation), or absent."""

    kind = "postgres.database"

    def __init__(self, db: str, *, owner: str | None = None, encoding: str | None = None,
                 template: str | None = None, state: State = "present", force: bool = False,
                 settings: PgSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        _check_state(state)
        self.db = _check_name("database", db)
        self.owner = None if owner is None else _check_name("owner", owner)
        self.encoding = encoding
        self.template = template or ("template0" if encoding else None)
        self.state = state
        self.force = force

    def target(self) -> str:
        return self.db

    def compare(self, current: DatabaseFacts | None) -> Plan:
        """The plan from the database's facts (None: it does not exist)."""
        plan = Plan()
        if self.state == "absent":
            if current is not None:
                plan.add("state", "present", "absent")
            return plan
        if current is None:
            plan.add("state", "absent", "present")
            if self.owner is not None:
                plan.add("owner", None, self.owner)
            if self.encoding is not None:
                plan.add("encoding", None, self.encoding.upper())
            return plan
        if self.encoding is not None and current.encoding.upper() != self.encoding.upper():
            raise TaskError(f"database {self.db!r} has encoding {current.encoding}, not "
                            f"{self.encoding.upper()}; an encoding cannot be changed (dump, "
                            f"recreate and restore the database)")
        if self.owner is not None and current.owner != self.owner:
            plan.add("owner", current.owner, self.owner)
        return plan

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        facts["db"] = _database_facts(self.scope(facts).sql("postgres"), self.db)
        return self.compare(facts["db"])

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql("postgres")
        settings = self.settings_for(conn)
        name = sql.Identifier(self.db)
        current: DatabaseFacts | None = facts["db"]
        if self.state == "absent":
            undo.push(f"recreate database {self.db}", _undo_impossible(
                f"database {self.db} was dropped; restore it from a backup "
                f"(postgres.restore)"))
            s.write(sql.SQL("DROP DATABASE {}{}").format(
                name, sql.SQL(" WITH (FORCE)") if self.force else sql.SQL("")))
        elif current is None:
            options: list[sql.Composable] = [sql.SQL("")]
            for keyword, value in (("OWNER", self.owner), ("TEMPLATE", self.template)):
                if value is not None:
                    options.append(sql.SQL("{} {}").format(sql.SQL(keyword),
                                                           sql.Identifier(value)))
            if self.encoding is not None:
                options.append(sql.SQL("ENCODING {}").format(sql.Literal(self.encoding)))
            s.write(sql.SQL("CREATE DATABASE {}").format(name) + sql.SQL(" ").join(options))
            undo.push(f"drop database {self.db} (created by {self.name})", _undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name), None)]))
        elif plan.has("owner"):
            undo.push(f"give database {self.db} back to {current.owner}", _undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    name, sql.Identifier(current.owner)), None)]))
            s.write(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                name, sql.Identifier(self.owner or "")))


def database(db: str, *, owner: str | None = None, encoding: str | None = None,
             template: str | None = None, state: State = "present", force: bool = False,
             settings: PgSettings | None = None, name: str | None = None) -> DatabaseTask:
    """Ensure database ``db`` exists (with ``owner``) or, with ``state="absent"``, does not.

    Args:
        owner: the owning role (it must exist); None leaves the owner alone.
        encoding: the encoding at creation (then from ``template0``); an
            existing database with another encoding is an error, never recreated.
        template: the template database at creation.
        force: with ``state="absent"``, terminate sessions first (``WITH (FORCE)``).
        settings: how to reach the server (default: the host's ``postgres_*`` vars).

    Plan: ``state: absent -> present``, ``owner: postgres -> app``.
    Undo: a created database is dropped (``WITH (FORCE)``); a changed owner
    is given back; a dropped database cannot be brought back (the undo
    report says to restore a backup).
    """
    return DatabaseTask(db, owner=owner, encoding=encoding, template=template, state=state,
                        force=force, settings=settings, name=name)


# -- role ----------------------------------------------------------------------------------

_ROLE_FLAGS: dict[str, tuple[str, str]] = {
    # attribute: (pg_roles column, keyword)
    "login": ("rolcanlogin", "LOGIN"),
    "superuser": ("rolsuper", "SUPERUSER"),
    "createdb": ("rolcreatedb", "CREATEDB"),
    "createrole": ("rolcreaterole", "CREATEROLE"),
    "replication": ("rolreplication", "REPLICATION"),
    "inherit": ("rolinherit", "INHERIT"),
}


@dataclass(frozen=True)
class RoleFacts:
    """A role's attributes and, when it could be read, its stored password verifier."""

    attributes: Mapping[str, bool | int]
    verifier: str | None = field(default=None, repr=False)


def _role_options(attributes: Mapping[str, bool | int], password: str | None,
                  password_set: bool) -> tuple[sql.Composable, str]:
    """Options for ``CREATE/ALTER ROLE ... WITH``, and how they show in the log (a
    password verifier as ``********``)."""
    parts: list[sql.Composable] = []
    for attribute, value in attributes.items():
        if attribute == "connection_limit":
            parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(int(value))))
        else:
            keyword = _ROLE_FLAGS[attribute][1]
            parts.append(sql.SQL(keyword if value else f"NO{keyword}"))
    shown = sql.SQL(" ").join(parts).as_string(None)
    if password_set:
        parts.append(sql.SQL("PASSWORD {}").format(
            sql.Literal(password) if password is not None else sql.SQL("NULL")))
        shown += f" PASSWORD {REDACTED if password is not None else 'NULL'}"
    return sql.SQL(" ").join(parts), shown.strip()


class RoleTask(PgTask):
    """A role with attributes and a password (as a Secret), or absent."""

    kind = "postgres.role"

    def __init__(self, role_name: str, *, password: Secret | None = None,
                 login: bool | None = True, superuser: bool | None = None,
                 createdb: bool | None = None, createrole: bool | None = None,
                 replication: bool | None = None, inherit: bool | None = None,
                 connection_limit: int | None = None, state: State = "present",
                 settings: PgSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        _check_state(state)
        self.role_name = _check_name("role", role_name)
        if password is not None and not isinstance(password, Secret):
            raise ConfigError(f"role {role_name}: give the password as a Secret, not a "
                              f"plain {type(password).__name__}")
        self.password = password
        wanted: dict[str, bool | int | None] = {
            "login": login, "superuser": superuser, "createdb": createdb,
            "createrole": createrole, "replication": replication, "inherit": inherit,
            "connection_limit": connection_limit}
        self.attributes: dict[str, bool | int] = {k: v for k, v in wanted.items()
                                                  if v is not None}
        self.state = state

    def target(self) -> str:
        return self.role_name

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return (self.password,) if self.password is not None else ()

    def read(self, s: _Session) -> RoleFacts | None:
        """The role's facts; its verifier too when a password is managed or it is dropped."""
        columns = ", ".join(col for col, _ in _ROLE_FLAGS.values())
        rows = s.rows(f"SELECT {columns}, rolconnlimit FROM pg_roles WHERE rolname = %s",
                      [self.role_name])
        if not rows:
            return None
        attributes: dict[str, bool | int] = dict(zip(_ROLE_FLAGS, rows[0][:-1], strict=True))
        attributes["connection_limit"] = rows[0][-1]
        if self.password is None and self.state == "present":
            return RoleFacts(attributes)
        if not s.value("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')"):
            if self.password is not None:
                raise TaskError(f"cannot compare the password of role {self.role_name!r}: "
                                f"reading pg_authid needs a superuser login")
            return RoleFacts(attributes)
        verifier = s.value("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                           [self.role_name])
        return RoleFacts(attributes, verifier)

    def compare(self, current: RoleFacts | None) -> Plan:
        """The plan from the role's facts (None: it does not exist)."""
        plan = Plan()
        if self.state == "absent":
            if current is not None:
                plan.add("state", "present", "absent")
            return plan
        if current is None:
            plan.add("state", "absent", "present")
        for attribute, value in self.attributes.items():
            before = None if current is None else current.attributes[attribute]
            if before != value:
                plan.add(attribute, _show(before), _show(value))
        if self.password is not None:
            verifier = None if current is None else current.verifier
            if not scram_matches(verifier, self.password):
                plan.add("password", None if verifier is None else "(secret)",
                         "(new secret)" if verifier is not None else "(secret)")
        return plan

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        facts["role"] = self.read(self.scope(facts).sql("postgres"))
        return self.compare(facts["role"])

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql("postgres")
        settings = self.settings_for(conn)
        role = sql.Identifier(self.role_name)
        current: RoleFacts | None = facts["role"]
        if self.state == "absent":
            assert current is not None
            options, shown = _role_options(current.attributes, current.verifier,
                                           current.verifier is not None)
            undo.push(f"recreate role {self.role_name} (memberships not restored)", _undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("CREATE ROLE {} WITH {}").format(role, options),
                  f"CREATE ROLE {role.as_string(None)} WITH {shown}")]))
            s.write(sql.SQL("DROP ROLE {}").format(role))
            return
        changed = {a: v for a, v in self.attributes.items() if plan.has(a)}
        verifier = None
        if plan.has("password") and self.password is not None:
            iterations = s.value("SELECT current_setting('scram_iterations', true)")
            verifier = scram_verifier(self.password,
                                      iterations=int(iterations or SCRAM_ITERATIONS))
        options, shown = _role_options(changed, verifier, verifier is not None)
        who = role.as_string(None)
        if current is None:
            verb = "CREATE"
            undo.push(f"drop role {self.role_name} (created by {self.name})", _undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("DROP ROLE IF EXISTS {}").format(role), None)]))
        else:
            verb = "ALTER"
            back = {a: current.attributes[a] for a in changed}
            old_options, old_shown = _role_options(back, current.verifier, verifier is not None)
            what = ", ".join([*back, *(["password"] if verifier is not None else [])])
            undo.push(f"restore role {self.role_name} ({what})", _undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("ALTER ROLE {} WITH {}").format(role, old_options),
                  f"ALTER ROLE {who} WITH {old_shown}")]))
        s.write(sql.SQL(verb + " ROLE {} WITH {}").format(role, options),
                shown=f"{verb} ROLE {who} WITH {shown}")


def _show(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def role(name: str, *, password: Secret | None = None, login: bool | None = True,
         superuser: bool | None = None, createdb: bool | None = None,
         createrole: bool | None = None, replication: bool | None = None,
         inherit: bool | None = None, connection_limit: int | None = None,
         state: State = "present", settings: PgSettings | None = None) -> RoleTask:
    """Ensure role ``name`` exists with these attributes and password, or is absent.

    Args:
        password: a :class:`~deploykit.secrets.Secret`; None leaves the password
            alone. It is compared with the SCRAM-SHA-256 verifier stored in
            ``pg_authid`` (recomputed with its salt: a superuser login is
            needed), and set as a verifier computed on the controller: the
            password never reaches the server, a log, a diff or a report. A
            stored md5 hash never matches, so it is replaced by a SCRAM verifier.
        login: LOGIN (the default: a role for an application) or NOLOGIN.
        superuser, createdb, createrole, replication, inherit: the attribute
            flags; None leaves a flag as it is (a new role gets PostgreSQL's default).
        connection_limit: CONNECTION LIMIT (-1: none).

    Plan: ``state: absent -> present``, ``createdb: false -> true``,
    ``password: (secret) -> (new secret)``.
    Undo: a created role is dropped; changed attributes and the password
    (its previous verifier) are set back; a dropped role is recreated with its
    attributes and password verifier (not its memberships).
    """
    return RoleTask(name, password=password, login=login, superuser=superuser,
                    createdb=createdb, createrole=createrole, replication=replication,
                    inherit=inherit, connection_limit=connection_limit, state=state,
                    settings=settings)


# -- extension -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionFacts:
    """An extension as installed in a database (None fields: not installed) and what
    the server offers."""

    version: str | None
    schema: str | None
    available: tuple[str, ...]
    default_version: str | None
    relocatable: bool = False


class ExtensionTask(PgTask):
    """An extension installed in a database (with a version and schema), or absent."""

    kind = "postgres.extension"

    def __init__(self, extension_name: str, *, db: str, state: State = "present",
                 version: str | None = None, schema: str | None = None, cascade: bool = False,
                 settings: PgSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        _check_state(state)
        self.extension_name = _check_name("extension", extension_name)
        self.db = _check_name("database", db)
        self.version = version
        self.schema = None if schema is None else _check_name("schema", schema)
        self.cascade = cascade
        self.state = state

    def target(self) -> str:
        return f"{self.extension_name} in {self.db}"

    def read(self, s: _Session) -> ExtensionFacts:
        """The extension's facts in this task's database."""
        installed = s.rows("SELECT e.extversion, n.nspname, e.extrelocatable FROM pg_extension e "
                           "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = %s",
                           [self.extension_name])
        offered = s.rows("SELECT v.version, a.default_version FROM "
                         "pg_available_extension_versions v JOIN pg_available_extensions a "
                         "ON a.name = v.name WHERE v.name = %s ORDER BY v.version",
                         [self.extension_name])
        version, schema, relocatable = installed[0] if installed else (None, None, False)
        return ExtensionFacts(version, schema, tuple(r[0] for r in offered),
                              offered[0][1] if offered else None, bool(relocatable))

    def compare(self, current: ExtensionFacts) -> Plan:
        """The plan from the extension's facts."""
        plan = Plan()
        if self.state == "absent":
            if current.version is not None:
                plan.add("state", "present", "absent")
            return plan
        if not current.available:
            raise TaskError(f"extension {self.extension_name!r} is not available on the server "
                            f"(no control file; database {self.db}): install the package "
                            f"that provides it")
        if self.version is not None and self.version not in current.available:
            raise TaskError(f"extension {self.extension_name!r} has no version "
                            f"{self.version!r}; available: {', '.join(current.available)} "
                            f"(database {self.db})")
        if current.version is None:
            plan.add("state", "absent", "present")
            plan.add("version", None, self.version or current.default_version)
            if self.schema is not None:
                plan.add("schema", None, self.schema)
            return plan
        if self.version is not None and current.version != self.version:
            plan.add("version", current.version, self.version)
        if self.schema is not None and current.schema != self.schema:
            if not current.relocatable:
                raise TaskError(f"extension {self.extension_name!r} is in schema "
                                f"{current.schema!r} and cannot be moved to {self.schema!r} "
                                f"(not relocatable; database {self.db})")
            plan.add("schema", current.schema, self.schema)
        return plan

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        facts["extension"] = self.read(self.scope(facts).sql(self.db))
        return self.compare(facts["extension"])

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql(self.db)
        current: ExtensionFacts = facts["extension"]
        ext = sql.Identifier(self.extension_name)
        back: list[Statement] = []
        if self.state == "absent":
            statement = sql.SQL("DROP EXTENSION {}{}").format(
                ext, sql.SQL(" CASCADE") if self.cascade else sql.SQL(""))
            back.append((sql.SQL("CREATE EXTENSION {} WITH SCHEMA {} VERSION {}").format(
                ext, sql.Identifier(current.schema or "public"),
                sql.Literal(current.version)), None))
            s.write(statement)
        elif current.version is None:
            options: list[sql.Composable] = []
            if self.schema is not None:
                options.append(sql.SQL("SCHEMA {}").format(sql.Identifier(self.schema)))
            if self.version is not None:
                options.append(sql.SQL("VERSION {}").format(sql.Literal(self.version)))
            if self.cascade:
                options.append(sql.SQL("CASCADE"))
            back.append((sql.SQL("DROP EXTENSION IF EXISTS {}").format(ext), None))
            s.write(sql.SQL("CREATE EXTENSION {} WITH ").format(ext) + sql.SQL(" ").join(options))
        else:
            if plan.has("version"):
                back.append((sql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(
                    ext, sql.Literal(current.version)), None))
                s.write(sql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(
                    ext, sql.Literal(self.version)))
            if plan.has("schema"):
                back.append((sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(
                    ext, sql.Identifier(current.schema or "public")), None))
                s.write(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(
                    ext, sql.Identifier(self.schema or "public")))
        undo.push(f"put extension {self.extension_name} in {self.db} back "
                  f"({plan.render().replace(chr(10), '; ')})",
                  _undo_sql(self.name, self.settings_for(conn), self.db, back[::-1]))


def extension(name: str, *, db: str, state: State = "present", version: str | None = None,
              schema: str | None = None, cascade: bool = False,
              settings: PgSettings | None = None) -> ExtensionTask:
    """Ensure extension ``name`` is installed in database ``db`` (or absent).

    Args:
        version: the wanted version; None accepts any installed version (a new
            installation gets the default). A different installed version is
            updated (``ALTER EXTENSION ... UPDATE TO``).
        schema: the schema to install into / move a relocatable extension to.
        cascade: install required extensions too; with ``absent``, drop
            dependent objects too.

    An extension the server does not offer (no control file) is an error
    naming it. Undo: a created extension is dropped; a version or schema is set
    back (PostgreSQL may have no downgrade path: the undo report then says
    so); a dropped extension is created again (objects that depended on it
    are not).
    """
    return ExtensionTask(name, db=db, state=state, version=version, schema=schema,
                         cascade=cascade, settings=settings)


# -- privilege -----------------------------------------------------------------------------

ObjectType = Literal["database", "schema", "table", "sequence"]
PRIVILEGES: dict[str, tuple[str, ...]] = {
    "database": ("CONNECT", "CREATE", "TEMPORARY"),
    "schema": ("CREATE", "USAGE"),
    "table": ("DELETE", "INSERT", "REFERENCES", "SELECT", "TRIGGER", "TRUNCATE", "UPDATE"),
    "sequence": ("SELECT", "UPDATE", "USAGE"),
}
"""The privileges each object type has, as ``aclexplode`` names them."""
_ACL_OBJECTS: dict[str, str] = {
    # name, acl (explicit, else the default for the owner) of the objects asked for
    "database": "SELECT datname::text, coalesce(datacl, acldefault('d', datdba)) "
                "FROM pg_database WHERE datname = ANY(%(names)s)",
    "schema": "SELECT nspname::text, coalesce(nspacl, acldefault('n', nspowner)) "
              "FROM pg_namespace WHERE nspname = ANY(%(names)s)",
    "table": "SELECT c.relname::text, coalesce(c.relacl, acldefault('r', c.relowner)) "
             "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
             "AND (%(all)s OR c.relname = ANY(%(names)s))",
    "sequence": "SELECT c.relname::text, coalesce(c.relacl, acldefault('s', c.relowner)) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %(schema)s AND c.relkind = 'S' "
                "AND (%(all)s OR c.relname = ANY(%(names)s))",
}


def _privilege_list(on: str, privileges: str | Sequence[str]) -> tuple[str, ...]:
    known = PRIVILEGES.get(on)
    if known is None:
        raise ConfigError(f"privilege: on must be one of {', '.join(PRIVILEGES)}, not {on!r}")
    items = [privileges] if isinstance(privileges, str) else list(privileges)
    wanted: set[str] = set()
    for item in items:
        for word in str(item).replace(",", " ").upper().split():
            word = "TEMPORARY" if word == "TEMP" else word
            if word == "ALL":
                wanted.update(known)
            elif word in known:
                wanted.add(word)
            else:
                raise ConfigError(f"privilege {word!r} does not apply to a {on}; "
                                  f"{on} privileges: {', '.join(known)}, ALL")
    if not wanted:
        raise ConfigError("privilege: name at least one privilege")
    return tuple(sorted(wanted))


def _join(items: Iterable[str]) -> str | None:
    text = ",".join(sorted(items))
    return text or None


class PrivilegeTask(PgTask):
    """Privileges of a role on databases, schemas, tables or sequences."""

    kind = "postgres.privilege"

    def __init__(self, role_name: str, privileges: str | Sequence[str], *, on: ObjectType,
                 objects: str | Sequence[str], db: str, schema: str = "public",
                 state: State = "present", settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        _check_state(state)
        self.role_name = "PUBLIC" if role_name.upper() == "PUBLIC" else _check_name(
            "role", role_name)
        self.on = on
        self.privileges = _privilege_list(on, privileges)
        names = [objects] if isinstance(objects, str) else list(objects)
        if not names:
            raise ConfigError("privilege: name at least one object")
        self.all = names == ["ALL"] and on in ("table", "sequence")
        self.objects = () if self.all else tuple(_check_name(on, n) for n in names)
        self.db = _check_name("database", db)
        self.schema = _check_name("schema", schema)
        self.state = state

    def target(self) -> str:
        where = f"{self.schema}." if self.on in ("table", "sequence") else ""
        what = f"ALL {self.on}s in {self.schema}" if self.all else ", ".join(
            where + o for o in self.objects)
        return f"{','.join(self.privileges)} on {self.on} {what} to {self.role_name}"

    def label(self, obj: str) -> str:
        """How the plan names one object (``table public.orders``)."""
        prefix = f"{self.schema}." if self.on in ("table", "sequence") else ""
        return f"{self.on} {prefix}{obj}"

    def read(self, s: _Session) -> dict[str, frozenset[str]]:
        """Object name -> the privileges the role holds on it explicitly."""
        if self.role_name == "PUBLIC":
            grantee = 0
        else:
            grantee = s.value("SELECT oid FROM pg_roles WHERE rolname = %s", [self.role_name])
            if grantee is None:
                raise TaskError(f"role {self.role_name!r} does not exist")
        query = ("SELECT o.name, a.privilege_type FROM (" + _ACL_OBJECTS[self.on] +
                 ") AS o(name, acl) LEFT JOIN LATERAL aclexplode(o.acl) AS a "
                 "ON a.grantee = %(grantee)s")
        rows = s.rows(query, {"names": list(self.objects), "schema": self.schema,
                              "all": self.all, "grantee": grantee})
        held: dict[str, set[str]] = {}
        for obj, privilege in rows:
            held.setdefault(obj, set())
            if privilege is not None:
                held[obj].add(privilege)
        missing = [o for o in self.objects if o not in held]
        if missing:
            raise TaskError(f"{', '.join(self.label(o) for o in missing)} does not exist "
                            f"in database {self.db!r}")
        return {o: frozenset(p) for o, p in held.items()}

    def compare(self, held: Mapping[str, frozenset[str]]) -> Plan:
        """One change per object whose privileges differ."""
        plan = Plan()
        wanted = set(self.privileges)
        for obj in sorted(held):
            have = held[obj]
            after = have | wanted if self.state == "present" else have - wanted
            if after != have:
                plan.add(f"{self.label(obj)} privileges of {self.role_name}",
                         _join(have), _join(after))
        return plan

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        facts["held"] = self.read(self.scope(facts).sql(self.db))
        return self.compare(facts["held"])

    def statement(self, verb: str, obj: str, privileges: Iterable[str]) -> sql.Composed:
        """``GRANT ... ON TYPE obj TO role`` or ``REVOKE ... FROM role``."""
        target = (sql.Identifier(self.schema, obj) if self.on in ("table", "sequence")
                  else sql.Identifier(obj))
        who = sql.SQL("PUBLIC") if self.role_name == "PUBLIC" else sql.Identifier(self.role_name)
        return sql.SQL("{} {} ON {} {} {} {}").format(
            sql.SQL(verb), sql.SQL(", ").join(sql.SQL(p) for p in sorted(privileges)),
            sql.SQL(self.on.upper()), target, sql.SQL("TO" if verb == "GRANT" else "FROM"), who)

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql(self.db)
        held: Mapping[str, frozenset[str]] = facts["held"]
        verb, back_verb = ("GRANT", "REVOKE") if self.state == "present" else ("REVOKE", "GRANT")
        done: list[Statement] = []
        undo.push(f"{back_verb.lower()} what {self.name} {verb.lower()}ed",
                  _undo_sql(self.name, self.settings_for(conn), self.db, done))
        for obj in sorted(held):
            delta = (set(self.privileges) - held[obj] if self.state == "present"
                     else set(self.privileges) & held[obj])
            if delta:
                s.write(self.statement(verb, obj, delta))
                done.append((self.statement(back_verb, obj, delta), None))


def privilege(role: str, privileges: str | Sequence[str], *, on: ObjectType,
              objects: str | Sequence[str], db: str = "postgres", schema: str = "public",
              state: State = "present", settings: PgSettings | None = None) -> PrivilegeTask:
    """Ensure ``role`` holds (or, with ``state="absent"``, does not hold) ``privileges``.

    Args:
        role: the grantee, or ``"PUBLIC"``.
        privileges: ``"SELECT,INSERT"``, a list, or ``"ALL"`` (every privilege
            of the object type; ``TEMP`` means ``TEMPORARY``).
        on: ``database``, ``schema``, ``table`` (tables, views, materialized and
            foreign tables) or ``sequence``.
        objects: names of the objects (tables and sequences in ``schema``), or
            ``"ALL"`` for every table/sequence existing in ``schema`` now (not
            default privileges for future ones).
        db: the database to connect to (where the schemas and tables are).

    Compares the role's explicit ACL entries (``aclexplode`` of the ACL, the
    owner's default ACL when there is none): privileges the role has through
    membership or as superuser do not count. Only the privileges named are
    granted or revoked; others are left alone. A missing role or object is an
    error naming it. Plan: ``table public.orders privileges of app: SELECT ->
    INSERT,SELECT``. Undo: revokes what was granted / grants what was revoked.
    """
    return PrivilegeTask(role, privileges, on=on, objects=objects, db=db, schema=schema,
                         state=state, settings=settings)


# -- data checks ---------------------------------------------------------------------------


def _table(name: str) -> sql.Identifier:
    """``"orders"`` or ``"shop.orders"`` as an identifier."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigError(f"table {name!r}: give 'table' or 'schema.table'")
    for part in parts:
        _check_name("table", part)
    return sql.Identifier(*parts)


def _count_rows(s: _Session, tables: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Exact row counts of the tables that exist, and the names of those that do not."""
    idents = {t: _table(t) for t in tables}
    if not idents:
        return {}, []
    found = s.rows("SELECT to_regclass(t) IS NOT NULL FROM unnest(%s::text[]) "
                   "WITH ORDINALITY AS u(t, i) ORDER BY i",
                   [[i.as_string(s.pg) for i in idents.values()]])
    present = [t for t, (exists,) in zip(idents, found, strict=True) if exists]
    missing = [t for t in idents if t not in present]
    counts: dict[str, int] = {}
    if present:
        row = s.rows(sql.SQL("SELECT ") + sql.SQL(", ").join(
            sql.SQL("(SELECT count(*) FROM {})").format(idents[t]) for t in present))[0]
        counts = {t: int(n) for t, n in zip(present, row, strict=True)}
    return counts, missing


@dataclass(frozen=True)
class CountDifference:
    """A table whose row count moved beyond the tolerance (``now`` None: it is gone)."""

    table: str
    baseline: int
    now: int | None
    allowed: int

    def to_dict(self) -> dict[str, Any]:
        """As JSON data."""
        return {"table": self.table, "baseline": self.baseline, "now": self.now,
                "allowed": self.allowed}


def count_differences(baseline: Mapping[str, int], now: Mapping[str, int], *,
                      tolerance: float = 0.0, absolute: int = 0) -> list[CountDifference]:
    """Tables whose count differs from ``baseline`` by more than
    ``max(absolute, tolerance * baseline)`` rows, or that are gone."""
    out = []
    for table, base in baseline.items():
        allowed = max(int(absolute), math.floor(tolerance * base))
        current = now.get(table)
        if current is None or abs(current - base) > allowed:
            out.append(CountDifference(table, base, current, allowed))
    return out


def render_differences(differences: Sequence[CountDifference]) -> str:
    """A plain-text table of count differences."""
    header = ("table", "baseline", "now", "difference", "allowed")
    rows = []
    for d in differences:
        if d.now is None:
            now, delta = "missing", "-"
        else:
            change = d.now - d.baseline
            pct = f" ({change / d.baseline:+.1%})" if d.baseline else ""
            now, delta = str(d.now), f"{change:+d}{pct}"
        rows.append((d.table, str(d.baseline), now, delta, f"±{d.allowed}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


class _CheckTask(PgTask):
    """A read-only check: ``ok`` (data in Result.data) or ``failed``; never changes."""

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self.error(conn, "a check never changes the host")  # pragma: no cover


class SnapshotCountsTask(_CheckTask):
    """Record exact row counts of tables. See :func:`snapshot_counts`."""

    kind = "postgres.snapshot_counts"

    def __init__(self, db: str, tables: Sequence[str], *, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.db = _check_name("database", db)
        self.tables = tuple(tables)
        if not self.tables:
            raise ConfigError("snapshot_counts: name at least one table")
        for t in self.tables:
            _table(t)

    def target(self) -> str:
        return f"{self.db}: {', '.join(self.tables)}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        counts, missing = _count_rows(self.scope(facts).sql(self.db), self.tables)
        if missing:
            raise self.error(conn, f"table(s) {', '.join(missing)} do not exist in database "
                                   f"{self.db!r}")
        self.scope(facts).data.update(database=self.db, counts=counts)
        return Plan()


def snapshot_counts(db: str, tables: Sequence[str], *, settings: PgSettings | None = None,
                    name: str | None = None) -> SnapshotCountsTask:
    """Count the rows of ``tables`` (``"t"`` or ``"schema.t"``) in database ``db``.

    Always ``ok`` (never changes anything); ``Result.data`` holds ``{"database":
    db, "counts": {table: rows}}``, so the run report keeps them as a baseline
    for :func:`compare_counts`. A missing table fails the task naming it.
    """
    return SnapshotCountsTask(db, tables, settings=settings, name=name)


class CompareCountsTask(_CheckTask):
    """Compare row counts with a baseline. See :func:`compare_counts`."""

    kind = "postgres.compare_counts"

    def __init__(self, db: str, baseline: Mapping[str, int], *, tolerance: float = 0.0,
                 absolute: int = 0, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.db = _check_name("database", db)
        self.baseline = {str(t): int(n) for t, n in baseline.items()}
        if not self.baseline:
            raise ConfigError("compare_counts: the baseline is empty")
        for t in self.baseline:
            _table(t)
        if tolerance < 0 or absolute < 0:
            raise ConfigError("compare_counts: tolerance and absolute must not be negative")
        self.tolerance = tolerance
        self.absolute = absolute

    def target(self) -> str:
        return f"{self.db}: {', '.join(self.baseline)}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        counts, _ = _count_rows(self.scope(facts).sql(self.db), list(self.baseline))
        differences = count_differences(self.baseline, counts, tolerance=self.tolerance,
                                        absolute=self.absolute)
        self.scope(facts).data.update(database=self.db, counts=counts, baseline=self.baseline,
                                      differences=[d.to_dict() for d in differences])
        if differences:
            raise self.error(conn, f"row counts in database {self.db!r} differ from the "
                                   f"baseline beyond tolerance ({self.tolerance:g} of the "
                                   f"baseline, or {self.absolute} rows):\n"
                                   + render_differences(differences))
        return Plan()


def compare_counts(db: str, baseline: Mapping[str, int], *, tolerance: float = 0.0,
                   absolute: int = 0, settings: PgSettings | None = None,
                   name: str | None = None) -> CompareCountsTask:
    """Fail when a table's row count moved away from ``baseline`` beyond a tolerance.

    Args:
        baseline: table -> rows, e.g. ``snapshot_result.data["counts"]``.
        tolerance: allowed change as a fraction of the baseline (0.05 = 5 %).
        absolute: allowed change in rows; a table passes when within either.

    ``ok`` when every table is within; else ``failed`` with a table of the
    differences (a vanished table counts as one). ``Result.data`` holds the
    counts, the baseline and the differences either way.
    """
    return CompareCountsTask(db, baseline, tolerance=tolerance, absolute=absolute,
                             settings=settings, name=name)


_ANY: Any = object()


class QueryCheckTask(_CheckTask):
    """Run a read-only query and check its result. See :func:`query_check`."""

    kind = "postgres.query_check"

    def __init__(self, db: str, query: str, *, expect: Any = _ANY,
                 params: Params | None = None,
                 timeout: float = 30.0, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.db = _check_name("database", db)
        if not query.strip():
            raise ConfigError("query_check: the query is empty")
        self.query = query
        self.expect = expect
        self.params = params
        self.timeout = timeout

    def target(self) -> str:
        return f"{self.db}: {_one_line(self.query, 60)}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        s = self.scope(facts).sql(self.db)
        with s.transaction():
            s.rows("SET TRANSACTION READ ONLY")
            s.rows("SELECT set_config('statement_timeout', %s, true)",
                   [f"{int(self.timeout * 1000)}ms"])
            rows = s.rows(self.query, self.params)
        first = rows[0][0] if rows and rows[0] else None
        self.scope(facts).data.update(database=self.db, rows=len(rows), value=first)
        what = f"query_check on database {self.db!r} ({_one_line(self.query, 120)})"
        if self.expect is _ANY:
            return Plan()
        if callable(self.expect):
            if not self.expect(rows):
                raise self.error(conn, f"{what}: the result does not satisfy the "
                                       f"expectation: {_one_line(repr(rows), 300)}")
        elif not rows:
            raise self.error(conn, f"{what} returned no row, expected {self.expect!r}")
        elif first != self.expect:
            raise self.error(conn, f"{what} returned {first!r}, expected {self.expect!r}")
        return Plan()


def query_check(db: str, query: str, *, expect: Any = _ANY,
                params: Params | None = None,
                timeout: float = 30.0, settings: PgSettings | None = None,
                name: str | None = None) -> QueryCheckTask:
    """Run ``query`` in database ``db`` in a READ ONLY transaction and check the result.

    Args:
        expect: the value the first column of the first row must equal
            (``query_check("app", "SELECT 1", expect=1)``), or a callable given
            all rows (list of tuples) that returns whether they are right.
            Left out: the query only has to succeed (a health check).
        params: query parameters (``%s`` / ``%(name)s`` placeholders).
        timeout: statement timeout in seconds.

    A query that writes fails (read-only transaction). ``Result.data`` holds the
    row count and the first value.
    """
    return QueryCheckTask(db, query, expect=expect, params=params, timeout=timeout,
                          settings=settings, name=name)


# -- backups: files on the database host ------------------------------------------------------


def backup_path(app: str, db: str, deploy_id: str, *, directory: str | None = None) -> str:
    """Where :func:`backup` puts database ``db``'s dump for ``deploy_id``:
    ``/var/backups/<app>/<db>-<deploy_id>.dump`` (or in ``directory``)."""
    if not _BACKUP_DB.fullmatch(db):
        raise ConfigError(f"database name {db!r}: backups and restores take names of "
                          f"letters, digits and '_' (1 to 38, not starting with a digit)")
    if not _FILE_PART.fullmatch(deploy_id):
        raise ConfigError(f"deploy id {deploy_id!r}: letters, digits, '.', '_' and '-' only")
    return f"{_backup_dir(app, directory)}/{db}-{deploy_id}.dump"


def _backup_dir(app: str, directory: str | None) -> str:
    if directory is not None:
        if not directory.startswith("/") or "\0" in directory:
            raise ConfigError(f"backup directory must be an absolute path, got {directory!r}")
        return directory.rstrip("/") or "/"
    if not _FILE_PART.fullmatch(app):
        raise ConfigError(f"app name {app!r}: letters, digits, '.', '_' and '-' only")
    return f"{BACKUP_ROOT}/{app}"




def _program(bin_dir: str | None, name: str) -> str:
    return quote(f"{bin_dir.rstrip('/')}/{name}" if bin_dir else name)


def verify_script(path_expr: str, bin_dir: str | None = None) -> str:
    """A snippet printing :class:`DumpFacts` lines for the dump at ``path_expr`` (a shell
    word: a quoted path or ``"$var"``): size, mtime and mode, the sidecar's line, the
    actual SHA-256, and whether ``pg_restore --list`` reads it. Never fails."""
    restore = _program(bin_dir, "pg_restore")
    return (
        f"dk_dump={path_expr}\n"
        'if [ -f "$dk_dump" ]; then\n'
        "  printf 'file %s\\n' \"$(stat -c '%s %Y %a' -- \"$dk_dump\")\"\n"
        '  if [ -f "$dk_dump.sha256" ]; then '
        "printf 'sidecar %s\\n' \"$(head -c 1000 -- \"$dk_dump.sha256\" | head -n 1)\"; "
        "else echo 'sidecar -'; fi\n"
        "  printf 'actual %s\\n' \"$(sha256sum < \"$dk_dump\" | cut -c1-64)\"\n"
        f'  if dk_err=$({restore} --list -- "$dk_dump" 2>&1 >/dev/null); '
        "then echo 'list ok'; "
        "else printf 'list fail %s\\n' \"$(printf '%s' \"$dk_err\" | tr '\\n' ' ' | "
        "cut -c1-300)\"; fi\n"
        "else echo 'file -'; fi"
    )


@dataclass(frozen=True)
class DumpFacts:
    """What :func:`verify_script` found about a dump file."""

    path: str
    exists: bool
    size: int = 0
    mtime: float = 0.0
    mode: int = 0
    sidecar: str | None = None
    actual: str | None = None
    list_error: str | None = None

    @property
    def recorded(self) -> str | None:
        """The SHA-256 the sidecar records for this file, when it is well formed."""
        match = re.fullmatch(r"([0-9a-f]{64})[ \t][ *]?(.+)", self.sidecar or "")
        if match is None or match[2] != self.path.rsplit("/", 1)[-1]:
            return None
        return match[1]

    def problems(self, *, require_checksum: bool = True) -> list[str]:
        """Why the file is not a verified dump (empty: it is)."""
        if not self.exists:
            return ["does not exist"]
        found = []
        if self.list_error is not None:
            found.append(f"is not a pg_dump custom-format archive ({self.list_error})")
        if self.sidecar is None:
            if require_checksum:
                found.append(f"has no checksum file {self.path}.sha256")
        elif self.recorded is None:
            found.append(f"its checksum file {self.path}.sha256 is not a sha256sum line "
                         f"for {self.path.rsplit('/', 1)[-1]}")
        elif self.recorded != self.actual:
            found.append(f"checksum mismatch: {self.path}.sha256 records "
                         f"{self.recorded[:12]}..., the file has {(self.actual or '')[:12]}...")
        return found

    def summary(self, now: float) -> dict[str, Any]:
        """The file as JSON data for Result.data."""
        return {"path": self.path, "size": self.size, "sha256": self.actual,
                "age": round(max(0.0, now - self.mtime), 1)}


def parse_dump(lines: Iterable[str], path: str) -> DumpFacts:
    """Parse the lines :func:`verify_script` printed (other lines are ignored)."""
    found: dict[str, str] = {}
    for line in lines:
        key, _, rest = line.partition(" ")
        if key in ("file", "sidecar", "actual", "list") and key not in found:
            found[key] = rest
    if found.get("file", "-") == "-":
        return DumpFacts(path, False)
    try:
        size, mtime, mode = found["file"].split()
        listed = found.get("list", "fail (no answer)")
        return DumpFacts(
            path, True, int(size), float(mtime), int(mode, 8),
            sidecar=None if found.get("sidecar", "-") == "-" else found["sidecar"],
            actual=found.get("actual") or None,
            list_error=None if listed == "ok" else listed.removeprefix("fail ").strip())
    except (KeyError, ValueError):
        raise TaskError(f"unexpected dump probe output for {path}: {found!r}") from None


def retention(entries: Sequence[tuple[str, float]], *, keep_last: int | None,
              keep_days: float | None, now: float, keep: Iterable[str] = ()) -> list[str]:
    """Names of backups to remove: those neither among the ``keep_last`` newest nor
    younger than ``keep_days`` (nor in ``keep``). Without a rule nothing goes."""
    if keep_last is None and keep_days is None:
        return []
    kept = set(keep)
    if keep_last is not None:
        newest = sorted(entries, key=lambda e: (-e[1], e[0]))
        kept.update(name for name, _ in newest[:keep_last])
    if keep_days is not None:
        kept.update(name for name, mtime in entries if mtime >= now - keep_days * 86400)
    return sorted(name for name, _ in entries if name not in kept)


def _client(settings: PgSettings, program: str, *, os_user: str | None, bin_dir: str | None
            ) -> tuple[str, bytes | None]:
    """Command prefix running a PostgreSQL client program on the host, and its stdin.

    With ``os_user`` the program runs as that OS user (``runuser``) over the Unix
    socket (peer authentication). Without, it connects over TCP and the script's
    first line reads the password from stdin into PGPASSWORD (:data:`_READ_PASSWORD`):
    it never appears on a command line.
    """
    args = f"--username={quote(settings.user)} --port={int(settings.port)} --no-password"
    if os_user is not None:
        return f"runuser -u {quote(os_user)} -- {_program(bin_dir, program)} {args}", None
    if settings.password is None:
        raise ConfigError("os_user=None connects with a password: set postgres_password or "
                          "postgres_password_file for the host")
    if "\n" in settings.password.reveal():
        raise ConfigError("a password with a newline cannot be passed to pg_dump/pg_restore")
    return (f"{_program(bin_dir, program)} --host={quote(settings.server_host)} {args}",
            settings.password.reveal().encode() + b"\n")


_READ_PASSWORD = "IFS= read -r PGPASSWORD || exit 3\nexport PGPASSWORD\n"


def _tail(text: str, lines: int = 4) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


class _FileTask(PgTask):
    """A task whose shell probe looks at dump files; parses ``key value`` lines."""

    shell_probe = True

    def __init__(self, *, bin_dir: str | None = None, os_user: str | None = "postgres",
                 timeout: float | None = None, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.bin_dir = bin_dir
        self.os_user = os_user
        self.timeout = timeout

    def client(self, conn: Connection, program: str) -> tuple[str, bytes | None]:
        """See :func:`_client`; a ConfigError becomes this task's error."""
        try:
            return _client(self.settings_for(conn), program, os_user=self.os_user,
                           bin_dir=self.bin_dir)
        except ConfigError as exc:
            raise self.error(conn, exc.message) from None

    def script(self, conn: Connection, stdin: bytes | None, lines: Sequence[str],
               failure: str) -> None:
        """Run a ``set -e`` script from ``/`` (a client run as another OS user cannot
        enter the login user's home); on failure raise ``failure: <stderr tail>``."""
        text = ((_READ_PASSWORD if stdin is not None else "") + "set -e\ncd /\n"
                + "\n".join(lines))
        result = conn.run(text, stdin=stdin, check=False, timeout=self.timeout, task=self.name)
        if result.failed:
            raise self.error(conn, f"{failure}: {_tail(result.stderr or result.stdout)}")

    def parse(self, output: str) -> Facts:
        lines = output.splitlines()
        values: dict[str, str] = {}
        entries: list[tuple[str, float]] = []
        for line in lines:
            key, _, rest = line.partition(" ")
            if key == "entry":
                fields = rest.split(" ", 2)
                with contextlib.suppress(ValueError, IndexError):
                    entries.append((fields[2], float(fields[0])))
            else:
                values.setdefault(key, rest)
        try:
            now = float(values.get("now", ""))
        except ValueError:
            now = time.time()
        return {"shell": True, "lines": lines, "values": values, "entries": entries, "now": now}


class BackupTask(_FileTask):
    """A verified pg_dump of a database for a deploy id. See :func:`backup`."""

    kind = "postgres.backup"

    def __init__(self, db: str, *, app: str, deploy_id: str, directory: str | None = None,
                 keep_last: int | None = None, keep_days: float | None = None,
                 space_factor: float = 1.0, compress: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if compress is not None and not 0 <= compress <= 9:
            raise ConfigError(f"compress must be 0 to 9, not {compress!r}")
        self.compress = compress
        self.db = db
        self.path = backup_path(app, db, deploy_id, directory=directory)
        self.directory = self.path.rsplit("/", 1)[0]
        self.deploy_id = deploy_id
        if keep_last is not None and keep_last < 1:
            raise ConfigError("keep_last must be at least 1 (the new backup is always kept)")
        if keep_days is not None and keep_days < 0:
            raise ConfigError("keep_days must not be negative")
        if space_factor < 0:
            raise ConfigError("space_factor must not be negative")
        self.keep_last = keep_last
        self.keep_days = keep_days
        self.space_factor = space_factor

    def target(self) -> str:
        return f"{self.db} -> {self.path}"

    def probe_script(self) -> str:
        d = quote(self.directory)
        return "\n".join([
            "echo \"now $(date +%s)\"",
            verify_script(quote(self.path), self.bin_dir),
            f'dk_p={d}; while [ ! -e "$dk_p" ]; do dk_p=$(dirname -- "$dk_p"); done',
            "printf 'space %s\\n' \"$(stat -f -c '%a %S' -- \"$dk_p\")\"",
            f"if [ -d {d} ]; then find {d} -maxdepth 1 -type f "
            f"-name {quote(self.db + '-*.dump')} -printf 'entry %T@ %s %f\\n'; fi",
        ])

    def _ours(self, name: str) -> bool:
        return re.fullmatch(re.escape(self.db) + r"-[A-Za-z0-9][A-Za-z0-9._-]*\.dump",
                            name) is not None

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        dump = facts["dump"] = parse_dump(f["lines"], self.path)
        plan = Plan()
        problems = dump.problems()
        if not dump.exists:
            plan.add("backup", None, f"{self.path} (pg_dump -Fc of {self.db})")
        elif problems:
            plan.add("backup", f"{self.path} {'; '.join(problems)}", f"{self.path} (new dump)")
        elif dump.mode != 0o600:
            plan.add("mode", format_mode(dump.mode), "0600")
        if plan.has("backup"):
            self.client(conn, "pg_dump")  # a configuration error shows before anything else
            self.check_space(conn, facts)
        else:
            self.scope(facts).data.update(database=self.db, deploy_id=self.deploy_id,
                                          **dump.summary(f["now"]))
        base = self.path.rsplit("/", 1)[-1]
        entries = [(n, m) for n, m in f["entries"] if self._ours(n)]
        if not any(n == base for n, _ in entries):
            entries.append((base, f["now"]))
        prune = facts["prune"] = retention(entries, keep_last=self.keep_last,
                                           keep_days=self.keep_days, now=f["now"], keep=[base])
        if prune:
            plan.add("remove", ", ".join(prune), None)
        return plan

    def check_space(self, conn: Connection, facts: Facts) -> None:
        """Refuse (TaskError) when the database is missing or the free space in the
        backup directory is below ``pg_database_size * space_factor``."""
        settings = self.settings_for(conn)
        size = self.scope(facts).sql("postgres").value(
            "SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", [self.db])
        if size is None:
            raise self.error(conn, f"database {self.db!r} does not exist "
                                   f"({_where(conn, settings)})")
        space = facts["values"].get("space", "").split()
        try:
            free = int(space[0]) * int(space[1])
        except (IndexError, ValueError):
            raise self.error(conn, f"cannot read the free space of {self.directory} on host "
                                   f"{conn.name}: {' '.join(space)!r}") from None
        need = math.ceil(int(size) * self.space_factor)
        if free < need:
            raise self.error(conn, f"not enough free space for a backup of database "
                                   f"{self.db!r} in {self.directory} on host {conn.name}: "
                                   f"{humanize.size(free)} free, about "
                                   f"{humanize.size(need)} needed "
                                   f"(pg_database_size {humanize.size(int(size))} x "
                                   f"{self.space_factor:g}); nothing was written")

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        p = quote(self.path)
        lines: list[str] = []
        stdin = None
        if plan.has("backup"):
            dump, stdin = self.client(conn, "pg_dump")
            lines += [
                "umask 077",
                f"mkdir -p -- {quote(self.directory)}",
                f"dk_tmp=$(mktemp -- {quote(self.directory + '/.dk-backup.XXXXXX')})",
                "trap 'rm -f -- \"$dk_tmp\" \"$dk_tmp.sha256\"' EXIT",
                f"{dump} --format=custom"
                + (f" --compress={self.compress}" if self.compress is not None else "")
                + f' --dbname={quote(self.db)} > "$dk_tmp"',
                f'{_program(self.bin_dir, "pg_restore")} --list -- "$dk_tmp" > /dev/null',
                'dk_sum=$(sha256sum < "$dk_tmp" | cut -c1-64)',
                f"printf '%s  %s\\n' \"$dk_sum\" {quote(self.path.rsplit('/', 1)[-1])} "
                '> "$dk_tmp.sha256"',
                'chmod 600 -- "$dk_tmp" "$dk_tmp.sha256"',
                f'mv -f -- "$dk_tmp" {p}',
                f'mv -f -- "$dk_tmp.sha256" {quote(self.path + ".sha256")}',
                "trap - EXIT",
            ]
            facts["wrote"] = True
        elif plan.has("mode"):
            lines.append(f"chmod 600 -- {p}")
        for name in facts["prune"]:
            old = f"{self.directory}/{name}"
            lines.append(f"rm -f -- {quote(old)} {quote(old + '.sha256')}")
        self.script(conn, stdin, lines,
                    f"backup of database {self.db!r} to {self.path} on host {conn.name} "
                    f"failed (no partial file kept)")

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        fresh = self.probe(conn)
        fresh[_SCOPE] = facts[_SCOPE]
        dump = parse_dump(fresh["lines"], self.path)
        problems = dump.problems()
        if facts.get("wrote") and problems:
            conn.run(["rm", "-f", "--", self.path, self.path + ".sha256"], task=self.name)
            raise self.error(conn, f"the backup {self.path} on host {conn.name} failed "
                                   f"verification after writing ({'; '.join(problems)}); "
                                   f"it was removed")
        return self.plan(conn, fresh)


def backup(db: str, *, app: str, deploy_id: str, directory: str | None = None,
           keep_last: int | None = None, keep_days: float | None = None,
           space_factor: float = 1.0, compress: int | None = None,
           os_user: str | None = "postgres", bin_dir: str | None = None,
           timeout: float | None = None, settings: PgSettings | None = None,
           name: str | None = None) -> BackupTask:
    """Back database ``db`` up with ``pg_dump --format=custom`` on the database host.

    The dump goes to ``/var/backups/<app>/<db>-<deploy_id>.dump`` (directory
    created 0700), mode 0600, with a ``.sha256`` sidecar in ``sha256sum``
    format. It is written to a temporary name, read back with
    ``pg_restore --list``, checksummed, then moved into place; afterwards the
    re-probe verifies the final file (listing and checksum) and removes it if
    that fails. On any failure the partial file is removed.

    Args:
        app: names the directory under /var/backups (``directory`` overrides it).
        deploy_id: names the backup; a verified backup for it is ``ok`` (not
            redone); a corrupt one is replaced.
        keep_last, keep_days: retention over ``<db>-*.dump`` in the directory:
            a backup is kept when it is among the ``keep_last`` newest *or*
            younger than ``keep_days``; the others (and their sidecars) are
            removed after a successful backup. No rule: nothing is removed.
        space_factor: refuse, before starting, when the free space is below
            ``pg_database_size(db) * space_factor`` (a dump is usually smaller:
            no indexes, compressed; 0 disables the check).
        compress: pg_dump's compression level, 0 to 9 (default: pg_dump's, 6);
            1 dumps much faster for a somewhat larger file.
        os_user: run pg_dump as this OS user over the Unix socket (peer
            authentication); None: over TCP as the settings' user, with the
            password passed on stdin.
        bin_dir: where pg_dump and pg_restore are (default: the PATH).
        timeout: seconds the dump may take (default: the connection's).

    A missing database, a refused login or too little space fail before
    anything is written, each with one message naming the database and host.
    ``Result.data``: ``path``, ``size``, ``sha256``, ``age``, ``deploy_id``.
    No undo: a backup is kept when a deploy is rolled back.
    """
    return BackupTask(db, app=app, deploy_id=deploy_id, directory=directory,
                      keep_last=keep_last, keep_days=keep_days, space_factor=space_factor,
                      compress=compress, os_user=os_user, bin_dir=bin_dir, timeout=timeout,
                      settings=settings, name=name)


class _VerifyTask(_FileTask):
    """Check a dump file: it exists, is listed by pg_restore, matches its checksum, and
    is young enough."""

    def __init__(self, *, max_age: float | datetime.timedelta | None = None,
                 require_checksum: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_age = (max_age.total_seconds() if isinstance(max_age, datetime.timedelta)
                        else max_age)
        self.require_checksum = require_checksum

    def judge(self, conn: Connection, facts: Facts, dump: DumpFacts) -> Plan:
        """Empty plan when the dump passes; TaskError naming the problems otherwise."""
        problems = dump.problems(require_checksum=self.require_checksum)
        now = facts["now"]
        if dump.exists:
            self.scope(facts).data.update(dump.summary(now))
            if self.max_age is not None and now - dump.mtime > self.max_age:
                problems.append(f"is {humanize.age(now - dump.mtime)} old, older than "
                                f"{humanize.age(self.max_age)}")
        if problems:
            raise self.error(conn, f"backup {dump.path} on host {conn.name} "
                                   f"{'; '.join(problems)}")
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self.error(conn, "a check never changes the host")  # pragma: no cover


class VerifyBackupTask(_VerifyTask):
    """See :func:`verify_backup`."""

    kind = "postgres.verify_backup"

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not path.startswith("/") or "\0" in path:
            raise ConfigError(f"backup path must be absolute, got {path!r}")
        self.path = path

    def target(self) -> str:
        return self.path

    def probe_script(self) -> str:
        return "echo \"now $(date +%s)\"\n" + verify_script(quote(self.path), self.bin_dir)

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        return self.judge(conn, facts, parse_dump(f["lines"], self.path))


def verify_backup(path: str, *, max_age: float | datetime.timedelta | None = None,
                  require_checksum: bool = True, bin_dir: str | None = None,
                  name: str | None = None) -> VerifyBackupTask:
    """Check the dump at ``path`` on the host: it exists, ``pg_restore --list`` reads
    it, its ``.sha256`` sidecar matches (unless ``require_checksum=False`` and there is
    none), and it is at most ``max_age`` (seconds or a timedelta) old.

    A pre-flight check: ``ok`` (``Result.data``: path, size, sha256, age) or
    ``failed`` with every problem named; never changes anything.
    """
    return VerifyBackupTask(path, max_age=max_age, require_checksum=require_checksum,
                            bin_dir=bin_dir, name=name)


class LatestBackupTask(_VerifyTask):
    """See :func:`latest_backup`."""

    kind = "postgres.latest_backup"

    def __init__(self, db: str, *, app: str, directory: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backup_path(app, db, "x", directory=directory)  # validates the names
        self.db = db
        self.directory = _backup_dir(app, directory)

    def target(self) -> str:
        return f"{self.db} in {self.directory}"

    def probe_script(self) -> str:
        return "\n".join([
            "echo \"now $(date +%s)\"",
            f"dk_f=$(find {quote(self.directory)} -maxdepth 1 -type f "
            f"-name {quote(self.db + '-*.dump')} -printf '%T@ %p\\n' 2>/dev/null "
            "| sort -n | tail -n 1 | cut -d' ' -f2-)",
            'if [ -n "$dk_f" ]; then printf \'path %s\\n\' "$dk_f"',
            verify_script('"$dk_f"', self.bin_dir),
            "else echo 'path -'; fi",
        ])

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        path = f["values"].get("path", "-")
        if path == "-":
            raise self.error(conn, f"no backup of database {self.db!r} in {self.directory} "
                                   f"on host {conn.name}")
        deploy_id = path.rsplit("/", 1)[-1][len(self.db) + 1:].removesuffix(".dump")
        self.scope(facts).data.update(database=self.db, deploy_id=deploy_id)
        return self.judge(conn, facts, parse_dump(f["lines"], path))


def latest_backup(db: str, *, app: str, directory: str | None = None,
                  max_age: float | datetime.timedelta | None = None,
                  require_checksum: bool = True, bin_dir: str | None = None,
                  name: str | None = None) -> LatestBackupTask:
    """Check that the newest backup of ``db`` in ``/var/backups/<app>`` exists, is
    intact (listing and checksum, as :func:`verify_backup`) and at most ``max_age`` old.

    ``Result.data`` names it (``path``, ``deploy_id``, ``size``, ``sha256``,
    ``age``), e.g. to feed :func:`restore`. ``failed`` when there is none or it
    does not pass; never changes anything.
    """
    return LatestBackupTask(db, app=app, directory=directory, max_age=max_age,
                            require_checksum=require_checksum, bin_dir=bin_dir, name=name)


# -- restore with swap ---------------------------------------------------------------------

_LIST_GUCS = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                        "shared_preload_libraries", "local_preload_libraries"})


def parse_marker(comment: str | None) -> dict[str, Any] | None:
    """The restore record deploykit keeps in a database's comment, if it has one."""
    if not comment or not comment.startswith(_MARKER):
        return None
    try:
        data = json.loads(comment[len(_MARKER):])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _marker_text(marker: Mapping[str, Any]) -> str:
    return _MARKER + json.dumps(dict(marker), sort_keys=True)


def split_guc_list(value: str) -> list[str]:
    """The elements of a list setting as stored (``"$user", public``), unquoted."""
    items: list[str] = []
    buf: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        c = value[i]
        if c == '"':
            if quoted and value[i + 1:i + 2] == '"':
                buf.append('"')
                i += 1
            else:
                quoted = not quoted
        elif c == "," and not quoted:
            items.append("".join(buf))
            buf = []
        elif quoted or not c.isspace():
            buf.append(c)
        i += 1
    items.append("".join(buf))
    return [item for item in items if item]


def _setting(name: str, value: str) -> sql.Composable:
    """``name = value`` for ALTER DATABASE/ROLE ... SET, from a stored ``setconfig`` item."""
    ident = sql.Identifier(*name.split("."))
    if name.lower() in _LIST_GUCS:
        literal: sql.Composable = sql.SQL(", ").join(
            sql.Literal(v) for v in split_guc_list(value)) or sql.Literal("")
    else:
        literal = sql.Literal(value)
    return sql.SQL("{} = {}").format(ident, literal)


def _stamp() -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime())


def _exists(s: _Session, db: str) -> bool:
    return bool(s.value("SELECT 1 FROM pg_database WHERE datname = %s", [db]))


def _free_name(s: _Session, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``... when taken."""
    name, n = base, 1
    while _exists(s, name):
        n += 1
        name = f"{base}_{n}"
    return name


def _terminate(s: _Session, names: Sequence[str], wait: float = SWAP_WAIT) -> None:
    """Terminate every other session on databases ``names`` and wait until they are gone."""
    deadline = time.monotonic() + wait
    while s.rows("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                 "ANY(%s) AND pid <> pg_backend_pid()", [list(names)], write=True):
        if time.monotonic() > deadline:
            raise TaskError(f"sessions on database(s) {', '.join(names)} did not end within "
                            f"{wait:g} s of being terminated")
        time.sleep(0.05)


def _swap(s: _Session, live: str, incoming: str, retire_as: str, comment: str | None) -> None:
    """Put database ``incoming`` in the place of ``live``, which becomes ``retire_as``.

    ``ALLOW_CONNECTIONS false`` on both and their sessions terminated, then one
    transaction: both renames, ``ALLOW_CONNECTIONS true`` on the new ``live``,
    and its comment (when given). ``retire_as`` keeps ``ALLOW_CONNECTIONS false``.
    On failure nothing is renamed and ``live`` accepts connections again.
    """
    old, new, retired = (sql.Identifier(n) for n in (live, incoming, retire_as))
    for ident in (old, new):
        s.write(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
    try:
        _terminate(s, [live, incoming])
        with s.transaction():
            s.write(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, retired))
            s.write(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(new, old))
            s.write(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old))
            if comment is not None:
                s.write(sql.SQL("COMMENT ON DATABASE {} IS {}").format(old, sql.Literal(comment)))
    except DeployError as exc:
        try:
            s.write(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old))
        except DeployError:
            raise TaskError(f"{exc.message}; database {live} may not accept connections now "
                            f"(fix: ALTER DATABASE {old.as_string(None)} ALLOW_CONNECTIONS true, "
                            f"or run the restore again)", host=exc.host, task=exc.task) from None
        raise


def _incoming_comment(s: _Session, incoming: str, previous: str | None) -> str | None:
    """The comment for a database swapped back in: its restore record with
    ``previous`` set (or removed when None); None leaves a comment that is not ours."""
    facts = _database_facts(s, incoming)
    marker = parse_marker(facts.comment if facts else None)
    if marker is None:
        return None
    marker.pop("previous", None)
    if previous is not None:
        marker["previous"] = previous
    return _marker_text(marker)


def _swap_back(s: _Session, db: str, previous: str) -> str:
    """Undo a restore: ``previous`` becomes ``db`` again, the restored ``db`` is kept as
    ``<db>_undone_<timestamp>`` (returned)."""
    if not _exists(s, previous):
        raise TaskError(f"database {previous}, kept by the restore of {db}, no longer exists: "
                        f"cannot swap {db} back")
    retire = _free_name(s, f"{db}_undone_{_stamp()}")
    _swap(s, db, previous, retire, _incoming_comment(s, previous, None))
    return retire


def _redo_swap(s: _Session, db: str, restored: str) -> str:
    """Undo an undo: the restored database ``restored`` becomes ``db`` again."""
    retire = _free_name(s, f"{db}_old_{_stamp()}")
    _swap(s, db, restored, retire, _incoming_comment(s, restored, retire))
    return retire


def _swap_action(settings: PgSettings, task: str,
                 swap: Callable[[_Session], str]) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        with _session(conn, settings, "postgres", f"undo {task}") as s:
            swap(s)
    return run


class RestoreTask(_FileTask):
    """Restore a dump into ``<db>_restore``, verify it, and swap it in. See :func:`restore`."""

    kind = "postgres.restore"

    def __init__(self, db: str, source: str, *, tables: Sequence[str] = (),
                 expect_counts: Mapping[str, int] | None = None,
                 assertions: Sequence[str] = (), analyze: bool = True,
                 require_checksum: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backup_path("x", db, "x")  # validates the database name
        if not source.startswith("/") or "\0" in source:
            raise ConfigError(f"dump path must be absolute, got {source!r}")
        self.db = db
        self.source = source
        self.expect_counts = dict(expect_counts or {})
        self.tables = tuple(dict.fromkeys([*tables, *self.expect_counts]))
        for t in self.tables:
            _table(t)
        self.assertions = tuple(assertions)
        self.analyze = analyze
        self.require_checksum = require_checksum

    def target(self) -> str:
        return f"{self.db} <- {self.source}"

    def probe_script(self) -> str:
        return verify_script(quote(self.source), self.bin_dir)

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        f = self.shell(conn, facts)
        dump = facts["dump"] = parse_dump(f["lines"], self.source)
        problems = dump.problems(require_checksum=self.require_checksum)
        if problems:
            raise self.error(conn, f"cannot restore database {self.db!r} from {self.source} on "
                                   f"host {conn.name}: the dump {'; '.join(problems)}")
        self.client(conn, "pg_restore")  # a configuration error shows before anything else
        live = facts["live"] = _database_facts(self.scope(facts).sql("postgres"), self.db)
        if live is None:
            raise self.error(conn, f"database {self.db!r} does not exist "
                                   f"({_where(conn, self.settings_for(conn))}); restore "
                                   f"replaces an existing database")
        marker = parse_marker(live.comment)
        data = self.scope(facts).data
        data.update(database=self.db, source=self.source, sha256=dump.actual)
        plan = Plan()
        if marker is not None and marker.get("sha256") == dump.actual:
            data["previous"] = marker.get("previous")
            return plan
        plan.add("database", f"{self.db} as it is",
                 f"{self.db} restored from {self.source} (sha256:{(dump.actual or '')[:12]})")
        plan.add("previous database", None, f"kept as {self.db}_old_<UTC timestamp>")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        scope = self.scope(facts)
        s = scope.sql("postgres")
        live: DatabaseFacts = facts["live"]
        staging = f"{self.db}_restore"
        ident = sql.Identifier(staging)
        if _exists(s, staging):
            s.write(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
        s.write(self.create_like(s, live, staging))
        try:
            self.copy_properties(s, staging)
            prefix, stdin = self.client(conn, "pg_restore")
            self.script(conn, stdin,
                        [f"{prefix} --exit-on-error --dbname={quote(staging)} "
                         f"< {quote(self.source)}"],
                        f"restore of {self.source} into database {staging} on host "
                        f"{conn.name} failed ({self.db} is untouched)")
            self.verify(conn, scope, staging)
            scope.close(staging)
            retire = _free_name(s, f"{self.db}_old_{_stamp()}")
            record = {"sha256": facts["dump"].actual, "source": self.source,
                      "at": _stamp(), "previous": retire}
            swap_started = time.monotonic()
            _swap(s, self.db, staging, retire, _marker_text(record))
            scope.data["swap_seconds"] = round(time.monotonic() - swap_started, 3)
        except DeployError:
            scope.close(staging)
            with contextlib.suppress(DeployError):
                s.write(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            raise
        scope.data["previous"] = retire
        undo.push(f"swap database {self.db} back to {retire}", _swap_action(
            self.settings_for(conn), self.name, lambda x: _swap_back(x, self.db, retire)))

    def create_like(self, s: _Session, live: DatabaseFacts, staging: str) -> sql.Composed:
        """CREATE DATABASE ``staging`` like the live database: owner, encoding, locale
        (ICU too), tablespace and connection limit."""
        info: dict[str, Any] = s.value(
            "SELECT to_jsonb(d) || jsonb_build_object('spcname', t.spcname) FROM pg_database d "
            "JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s",
            [self.db]) or {}
        options = [sql.SQL("TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {} "
                           "TABLESPACE {} CONNECTION LIMIT {}").format(
            sql.Identifier(live.owner), sql.Literal(live.encoding), sql.Literal(live.collate),
            sql.Literal(live.ctype), sql.Identifier(info.get("spcname") or "pg_default"),
            sql.Literal(int(info.get("datconnlimit", -1))))]
        if info.get("datlocprovider") == "i":  # PostgreSQL 15+: an ICU database
            options.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                sql.Literal(info.get("daticulocale") or info.get("datlocale"))))
        return sql.SQL("CREATE DATABASE {} WITH ").format(sql.Identifier(staging)) + \
            sql.SQL(" ").join(options)

    def copy_properties(self, s: _Session, staging: str) -> None:
        """Give ``staging`` the live database's privileges and per-database settings."""
        ident = sql.Identifier(staging)
        if not s.value("SELECT datacl IS NULL FROM pg_database WHERE datname = %s", [self.db]):
            s.write(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
            s.write(sql.SQL("REVOKE ALL ON DATABASE {0} FROM {1}").format(
                ident, sql.Identifier(str(s.value(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                    [self.db])))))
            for grantee, privilege, grantable in s.rows(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) "
                    "END, a.privilege_type, a.is_grantable FROM pg_database d, "
                    "aclexplode(d.datacl) a WHERE d.datname = %s", [self.db]):
                s.write(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege), ident,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
        for rolname, item in s.rows(
                "SELECT r.rolname, unnest(c.setconfig) FROM pg_db_role_setting c "
                "JOIN pg_database d ON d.oid = c.setdatabase "
                "LEFT JOIN pg_roles r ON r.oid = c.setrole WHERE d.datname = %s", [self.db]):
            name, _, value = str(item).partition("=")
            setting = _setting(name, value)
            if rolname is None:
                s.write(sql.SQL("ALTER DATABASE {} SET {}").format(ident, setting))
            else:
                s.write(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {}").format(
                    sql.Identifier(rolname), ident, setting))

    def verify(self, conn: Connection, scope: _Scope, staging: str) -> None:
        """Counts, expected counts and assertions in the restored copy; ANALYZE it."""
        st = scope.sql(staging)
        counts, missing = _count_rows(st, self.tables)
        scope.data["counts"] = counts
        problems = []
        if missing:
            problems.append(f"missing table(s): {', '.join(missing)}")
        differences = [d for d in count_differences(self.expect_counts, counts)
                       if d.now is not None]
        if differences:
            problems.append("row counts differ from the expected ones:\n"
                            + render_differences(differences))
        for assertion in self.assertions:
            with st.transaction():
                st.rows("SET TRANSACTION READ ONLY")
                value = st.value(assertion)
            if value is not True:
                problems.append(f"assertion {_one_line(assertion, 120)!r} returned {value!r}")
        if problems:
            raise self.error(conn, f"the restored copy {staging} failed verification, so "
                                   f"{self.db} is untouched: " + "; ".join(problems))
        if self.analyze:
            st.write("ANALYZE")


def restore(db: str, source: str, *, tables: Sequence[str] = (),
            expect_counts: Mapping[str, int] | None = None, assertions: Sequence[str] = (),
            analyze: bool = True, require_checksum: bool = False,
            os_user: str | None = "postgres", bin_dir: str | None = None,
            timeout: float | None = None, settings: PgSettings | None = None,
            name: str | None = None) -> RestoreTask:
    """Replace database ``db`` by a restore of the dump ``source`` (a path on the host),
    keeping the current ``db`` as ``<db>_old_<UTC timestamp>``.

    Steps (see the module docstring for the exact guarantees of the swap):
    check the dump (``pg_restore --list``; its ``.sha256`` sidecar when present,
    required with ``require_checksum``); create ``<db>_restore`` (dropping a
    leftover one) with the live database's owner, encoding, locale, privileges
    and settings; ``pg_restore --exit-on-error`` into it; verify it; ANALYZE
    it; swap. Any failure before the swap drops ``<db>_restore`` and leaves
    ``db`` untouched, its sessions uninterrupted.

    Args:
        tables: tables (``"t"`` or ``"schema.t"``) that must exist in the
            restored copy; their row counts go to ``Result.data["counts"]``.
        expect_counts: exact row counts the restored tables must have (e.g.
            :func:`snapshot_counts` data taken when the backup was made).
        assertions: SQL queries returning one boolean, each must be true in
            the restored copy (read-only).
        analyze: run ANALYZE on the restored copy before the swap.
        os_user, bin_dir, timeout, settings: as for :func:`backup`.

    Idempotence: the restored ``db`` records the dump's SHA-256 in its comment;
    restoring the same dump again is ``ok``. Undo (registered after the swap):
    :func:`undo_restore`'s swap back. ``Result.data``: ``source``, ``sha256``,
    ``previous`` (the kept database), ``counts``, ``swap_seconds`` (from refusing
    new sessions to the commit: what clients of ``db`` saw as downtime).
    """
    return RestoreTask(db, source, tables=tables, expect_counts=expect_counts,
                       assertions=assertions, analyze=analyze,
                       require_checksum=require_checksum, os_user=os_user, bin_dir=bin_dir,
                       timeout=timeout, settings=settings, name=name)


class UndoRestoreTask(PgTask):
    """Swap the database kept by the last restore back in. See :func:`undo_restore`."""

    kind = "postgres.undo_restore"

    def __init__(self, db: str, *, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        backup_path("x", db, "x")  # validates the database name
        self.db = db

    def target(self) -> str:
        return self.db

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        s = self.scope(facts).sql("postgres")
        live = _database_facts(s, self.db)
        if live is None:
            raise self.error(conn, f"database {self.db!r} does not exist "
                                   f"({_where(conn, self.settings_for(conn))})")
        marker = parse_marker(live.comment) or {}
        previous = facts["previous"] = marker.get("previous")
        self.scope(facts).data["database"] = self.db
        plan = Plan()
        if previous is None:
            return plan
        if not _exists(s, previous):
            raise self.error(conn, f"database {previous}, kept by the restore of {self.db}, "
                                   f"no longer exists: cannot swap {self.db} back")
        plan.add("database", f"{self.db} restored from {marker.get('source')}",
                 f"{previous} (as before the restore)")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql("postgres")
        retire = _swap_back(s, self.db, facts["previous"])
        self.scope(facts).data["restored_kept_as"] = retire
        undo.push(f"swap the restored database {retire} back in as {self.db}", _swap_action(
            self.settings_for(conn), self.name, lambda x: _redo_swap(x, self.db, retire)))


def undo_restore(db: str, *, settings: PgSettings | None = None,
                 name: str | None = None) -> UndoRestoreTask:
    """Undo the last :func:`restore` of ``db``: the database it kept
    (``<db>_old_<timestamp>``) becomes ``db`` again, the restored one is kept as
    ``<db>_undone_<timestamp>``, with the same swap as the restore.

    ``ok`` when ``db`` carries no restore record with a kept database (never
    restored, or already swapped back): applied twice, the second run is
    ``ok``. A kept database that was dropped since is an error naming it.
    Undo: swaps the restored database back in.
    """
    return UndoRestoreTask(db, settings=settings, name=name)


# Migrations live in their own module (SQL directories, alembic and command
# adapters); they are PostgreSQL tasks too, so they answer here as well.
from deploykit.tasks.migrations import (  # noqa: E402
    alembic_downgrade as alembic_downgrade,
)
from deploykit.tasks.migrations import (  # noqa: E402
    alembic_migrate as alembic_migrate,
)
from deploykit.tasks.migrations import (  # noqa: E402
    command_migrate as command_migrate,
)
from deploykit.tasks.migrations import migrate as migrate  # noqa: E402
from deploykit.tasks.migrations import rollback as rollback  # noqa: E402
