"""Database and extension state tasks: :func:`database`, :func:`extension`."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from deploykit.connection import Connection
from deploykit.errors import TaskError
from deploykit.pg import PgSettings
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.postgres.session import (
    DatabaseFacts,
    PgTask,
    Session,
    State,
    Statement,
    check_name,
    check_state,
    database_facts,
    undo_impossible,
    undo_sql,
)


class DatabaseTask(PgTask):
    """A database, present with an owner (and encoding at creation), or absent."""

    kind = "postgres.database"

    def __init__(self, db: str, *, owner: str | None = None, encoding: str | None = None,
                 template: str | None = None, state: State = "present", force: bool = False,
                 settings: PgSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        check_state(state)
        self.db = check_name("database", db)
        self.owner = None if owner is None else check_name("owner", owner)
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
        facts["db"] = database_facts(self.scope(facts).sql("postgres"), self.db)
        return self.compare(facts["db"])

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql("postgres")
        settings = self.settings_for(conn)
        name = sql.Identifier(self.db)
        current: DatabaseFacts | None = facts["db"]
        if self.state == "absent":
            undo.push(f"recreate database {self.db}", undo_impossible(
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
            undo.push(f"drop database {self.db} (created by {self.name})", undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name), None)]))
        elif plan.has("owner"):
            undo.push(f"give database {self.db} back to {current.owner}", undo_sql(
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
        check_state(state)
        self.extension_name = check_name("extension", extension_name)
        self.db = check_name("database", db)
        self.version = version
        self.schema = None if schema is None else check_name("schema", schema)
        self.cascade = cascade
        self.state = state

    def target(self) -> str:
        return f"{self.extension_name} in {self.db}"

    def read(self, s: Session) -> ExtensionFacts:
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
                  undo_sql(self.name, self.settings_for(conn), self.db, back[::-1]))


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
