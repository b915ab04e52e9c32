"""The app contract's ``migrate:`` section: one interface for every migration tool.

``tool: sql | alembic | django | flask | command``; each tool can

* list what is **applied** and **pending**, by the tool's own query, in one read-only
  command on the host (:meth:`MigrationTool.state`): ``manage.py showmigrations --plan``,
  ``alembic current`` + ``alembic history``, ``flask db current`` + ``flask db history``,
  the ``pending`` command of a ``command`` tool, deploykit's ``schema_migrations`` table;
* **apply** them with the release's environment (:meth:`MigrationTool.migrate`, a task:
  ``data["ran"]`` lists what it applied, for history and the run report);
* **roll back N** with the scripts of the release that applied them
  (:meth:`MigrationTool.rollback`, given that release).

A failing migration leaves nothing half-applied where the tool is transactional
(PostgreSQL DDL; Django on SQLite too). Where it is not (alembic/Flask-Migrate on SQLite,
a ``command`` tool unless told), the failed step's ``data["needs_restore"]`` is true and
its undo action fails saying the pre-deploy backup must be restored: the pipeline wires
that restore. Typical use by the pipeline, after install and before the new processes
start, under the database lock::

    tool = migrations.tool_for(contract.migrate, engine=contract.database.engine)
    rel = migrations.ReleaseEnv("/srv/app/releases/v2", env=app_env, source=source_dir)
    tool.state(conn, rel).pending            # --check, and the plan shown before a deploy
    result = tool.migrate(rel).run(conn, undo=undo)   # result.data["ran"] -> history
    tool.rollback(release_that_applied_them, steps=2).run(conn)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.pg import PgSettings
from deploykit.shell import join, quote
from deploykit.tasks.migrations.base import MigrationState, MigrationTool, ReleaseEnv, check_steps
from deploykit.tasks.migrations.hoststeps import HostTool
from deploykit.tasks.migrations.sql import MigrateTask, RollbackTask

__all__ = [
    "TOOLS",
    "AlembicTool",
    "CommandTool",
    "DjangoTool",
    "FlaskTool",
    "SqlTool",
    "parse_alembic_history",
    "parse_django_plan",
    "tool_for",
]


# -- Django ---------------------------------------------------------------------------------

_DJANGO_LINE = re.compile(r"\s*\[(?P<mark>[ X-])\]\s+(?P<app>[\w]+)\.(?P<name>\w+)")
_DJANGO_LISTED = re.compile(r"\s+\[(?P<mark>[ X-])\]\s+(?P<name>\w+)"
                            r"(?: \(applied at (?P<at>[\d\- :.]+)\))?")


def parse_django_plan(output: str, listing: str = "") -> MigrationState:
    """``manage.py showmigrations --plan`` -> applied and pending ``app.name`` ids (``[X]``
    applied, ``[ ]`` pending, ``[-]`` soft-applied squash counts as applied).

    Pending ones come in plan order; applied ones in the order they were applied when
    ``listing`` (``showmigrations --list -v 2``: "applied at" times) is given, plan order
    breaking ties (a plan puts independent apps' migrations in any order: the newest in
    the plan is not the newest applied).
    """
    applied: list[str] = []
    pending: list[str] = []
    for line in output.splitlines():
        match = _DJANGO_LINE.match(line)
        if match:
            (pending if match["mark"] == " " else applied).append(
                f"{match['app']}.{match['name']}")
    when: dict[str, str] = {}
    app = ""
    for line in listing.splitlines():
        if line[:1].strip():
            app = line.strip()
        elif (match := _DJANGO_LISTED.match(line)) and match["at"]:
            when[f"{app}.{match['name']}"] = match["at"]
    position = {m: i for i, m in enumerate(applied)}
    applied.sort(key=lambda m: (when.get(m, ""), position[m]))
    return MigrationState(tuple(applied), tuple(pending))


class DjangoTool(HostTool):
    """``manage.py migrate`` of a Django project; ids are ``app.0002_name``."""

    name: ClassVar[str] = "django"

    def __init__(self, *, manage: str = "manage.py", transactional: bool = True,
                 timeout: float = 1800.0) -> None:
        super().__init__(transactional=transactional, timeout=timeout)
        self.manage = manage

    def python(self, release: ReleaseEnv, *args: str) -> str:
        return f"{quote(release.bin('python'))} {join([self.manage, *args])}"

    def status_commands(self, release: ReleaseEnv) -> list[str]:
        return [self.python(release, "showmigrations", "--plan", "--no-color"),
                self.python(release, "showmigrations", "--list", "-v", "2", "--no-color")]

    def parse(self, outputs: list[str]) -> MigrationState:
        return parse_django_plan(outputs[0], outputs[1])

    def up_command(self, release: ReleaseEnv) -> str:
        return self.python(release, "migrate", "--noinput", "--no-color")

    def down_commands(self, release: ReleaseEnv, state: MigrationState,
                      targets: Sequence[str]) -> list[str]:
        """Per app, ``migrate APP PREVIOUS`` (or ``zero``) where PREVIOUS precedes the app's
        earliest target; apps whose targets come last in the plan go first."""
        order = list(state.applied) + list(state.pending)
        firsts: dict[str, str] = {}
        for m in targets:
            app = m.split(".", 1)[0]
            if app not in firsts or order.index(m) < order.index(firsts[app]):
                firsts[app] = m
        commands = []
        for app, first in sorted(firsts.items(), key=lambda kv: -order.index(kv[1])):
            same_app = [m for m in order if m.split(".", 1)[0] == app]
            index = same_app.index(first)
            previous = same_app[index - 1].split(".", 1)[1] if index else "zero"
            commands.append(self.python(release, "migrate", app, previous, "--noinput",
                                        "--no-color"))
        return commands


# -- alembic and Flask-Migrate --------------------------------------------------------------

_HISTORY = re.compile(r"(?P<down>.+?) -> (?P<rev>[0-9A-Za-z_]+)(?: \([a-z ]+\))*,")
_CURRENT = re.compile(r"(?P<rev>[0-9A-Za-z_]+)(?: \([a-z ]+\))*\s*")


def parse_alembic_history(current: str, history: str) -> MigrationState:
    """``alembic current`` and ``alembic history`` outputs -> applied revisions (every
    ancestor of a current one) and pending ones, oldest first."""
    parents: dict[str, list[str]] = {}
    order: list[str] = []
    for line in history.splitlines():
        match = _HISTORY.match(line.strip())
        if match:
            down = match["down"].strip().strip("()")
            parents[match["rev"]] = [] if down == "<base>" else \
                [d.strip() for d in down.split(",") if d.strip()]
            order.append(match["rev"])
    order.reverse()  # history lists the newest first
    now = [m["rev"] for line in current.splitlines()
           if (m := _CURRENT.fullmatch(line.strip())) and m["rev"] in parents]
    applied: set[str] = set()
    todo = list(now)
    while todo:
        rev = todo.pop()
        if rev not in applied:
            applied.add(rev)
            todo.extend(parents.get(rev, []))
    return MigrationState(tuple(r for r in order if r in applied),
                          tuple(r for r in order if r not in applied), tuple(sorted(now)))


class AlembicTool(HostTool):
    """``alembic upgrade heads`` with the release's ``alembic.ini``; ids are revisions."""

    name: ClassVar[str] = "alembic"

    def __init__(self, *, config: str = "alembic.ini", transactional: bool = True,
                 timeout: float = 1800.0) -> None:
        super().__init__(transactional=transactional, timeout=timeout)
        self.config = config

    def command(self, release: ReleaseEnv, *args: str) -> str:
        return f"{quote(release.bin('alembic'))} {join(['-c', self.config, *args])}"

    def status_commands(self, release: ReleaseEnv) -> list[str]:
        return [self.command(release, "current"), self.command(release, "history")]

    def parse(self, outputs: list[str]) -> MigrationState:
        return parse_alembic_history(outputs[0], outputs[1])

    def up_command(self, release: ReleaseEnv) -> str:
        return self.command(release, "upgrade", "heads")

    def down_commands(self, release: ReleaseEnv, state: MigrationState,
                      targets: Sequence[str]) -> list[str]:
        """One ``downgrade`` to the revision below the oldest target (``base`` if none)."""
        keep = [r for r in state.applied if r not in targets]
        if targets and [r for r in state.applied if r in targets] != \
                list(state.applied[len(keep):]):
            raise TaskError(f"alembic: {', '.join(targets)} are not the newest applied "
                            f"revisions; roll back to a revision instead")
        return [self.command(release, "downgrade", keep[-1] if keep else "base")]


class FlaskTool(AlembicTool):
    """Flask-Migrate (``flask db upgrade``): alembic behind the app's ``flask`` command."""

    name: ClassVar[str] = "flask"

    def __init__(self, *, app: str | None = None, transactional: bool = True,
                 timeout: float = 1800.0) -> None:
        super().__init__(transactional=transactional, timeout=timeout)
        self.app = app

    def command(self, release: ReleaseEnv, *args: str) -> str:
        app = ["--app", self.app] if self.app else []
        return f"{quote(release.bin('flask'))} {join([*app, 'db', *args])}"


# -- a team's own tool ----------------------------------------------------------------------


class CommandTool(HostTool):
    """A tool given as commands: ``pending`` prints one pending id a line; ``up`` applies
    them; ``down`` rolls back (``{steps}`` in it is the count, else it runs once a step);
    ``applied`` (optional) prints the applied ids, oldest first."""

    name: ClassVar[str] = "command"

    def __init__(self, *, up: str, down: str, pending: str, applied: str | None = None,
                 transactional: bool = False, timeout: float = 1800.0) -> None:
        super().__init__(transactional=transactional, timeout=timeout)
        for key, value in (("up", up), ("down", down), ("pending", pending)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"migrate.{key}: a command is required for tool: command")
        self.up, self.down, self.pending, self.applied = up, down, pending, applied

    def status_commands(self, release: ReleaseEnv) -> list[str]:
        return [self.pending] + ([self.applied] if self.applied else [])

    def parse(self, outputs: list[str]) -> MigrationState:
        lines = [[s for s in (x.strip() for x in out.splitlines()) if s] for out in outputs]
        return MigrationState(tuple(lines[1]) if len(lines) > 1 else (), tuple(lines[0]))

    def up_command(self, release: ReleaseEnv) -> str:
        return self.up

    def targets_of(self, state: MigrationState, steps: int) -> list[str]:
        if not self.applied:  # nothing to name them by: roll back blind, counted
            return [f"step {i + 1}" for i in range(steps)]
        return super().targets_of(state, steps)

    def down_commands(self, release: ReleaseEnv, state: MigrationState,
                      targets: Sequence[str]) -> list[str]:
        if "{steps}" in self.down:
            return [self.down.replace("{steps}", str(len(targets)))]
        return [self.down] * len(targets)


# -- deploykit's SQL files ------------------------------------------------------------------


class SqlTool(MigrationTool):
    """deploykit's ``migrations/NNNN_name.up.sql`` from the release's source on the
    controller, through an SSH port forward to PostgreSQL (always transactional)."""

    name: ClassVar[str] = "sql"

    def __init__(self, *, database: str, directory: str = "migrations",
                 settings: PgSettings | None = None, table: str = "schema_migrations",
                 allow_newer: bool = False) -> None:
        self.transactional = True
        self.database = database
        self.directory = directory
        self.settings = settings
        self.table = table
        self.allow_newer = allow_newer

    def folder(self, release: ReleaseEnv) -> Path:
        if release.source is None:
            raise ConfigError("migrate tool sql: the release's source directory is needed "
                              "(ReleaseEnv.source)")
        return release.source / self.directory

    def state(self, conn: Connection, release: ReleaseEnv) -> MigrationState:
        result = self.migrate(release).run(conn, check=True)
        if result.failed:
            raise TaskError(result.message, host=conn.name, task=result.task)
        pending = tuple(result.data.get("pending", []))
        applied = tuple(result.data.get("applied", []))
        return MigrationState(applied, pending)

    def migrate(self, release: ReleaseEnv) -> MigrateTask:
        return MigrateTask(self.folder(release), database=self.database, table=self.table,
                           settings=self.settings, lock_timeout=300.0,
                           deploy_id=release.deploy_id, name=None, allow_newer=self.allow_newer)

    def rollback(self, release: ReleaseEnv, steps: int) -> RollbackTask:
        return RollbackTask(self.folder(release), steps=check_steps(steps), database=self.database,
                            table=self.table, settings=self.settings, lock_timeout=300.0,
                            deploy_id=release.deploy_id, name=None)


TOOLS: dict[str, type[MigrationTool]] = {t.name: t for t in
                                         (SqlTool, AlembicTool, DjangoTool, FlaskTool, CommandTool)}


def tool_for(spec: Any, *, engine: str = "postgres", database: str | None = None,
             settings: PgSettings | None = None, allow_newer: bool = False) -> MigrationTool:
    """The tool a contract's ``migrate`` section names (a :class:`deploykit.contract.Migrate`
    or any object with the same attributes).

    ``transactional`` defaults by tool and engine: PostgreSQL DDL is transactional for
    every tool; on SQLite, Django's migrations are atomic but alembic/Flask-Migrate's
    are not (alembic turns transactional DDL off for SQLite); a ``command`` tool is
    taken as not transactional unless the contract says so. ``allow_newer`` (sql): the
    database may hold migrations newer than the release (expand ones, once
    :func:`deploykit.tasks.migrations.policy.judge` allowed older code over them).
    """
    tool = getattr(spec, "tool", None)
    if tool not in TOOLS:
        raise ConfigError(f"migrate.tool: {tool!r} is not one of {', '.join(TOOLS)}")
    given = getattr(spec, "transactional", None)
    default = engine == "postgres" or tool == "django"
    transactional = bool(default if given is None else given)
    timeout = float(getattr(spec, "timeout", 1800.0))
    if tool == "sql":
        if not database:
            raise ConfigError("migrate tool sql needs database.name (PostgreSQL only)")
        return SqlTool(database=database, directory=getattr(spec, "directory", "migrations"),
                       settings=settings,
                       allow_newer=allow_newer or bool(getattr(spec, "allow_newer", False)))
    if tool == "django":
        return DjangoTool(manage=getattr(spec, "manage", "manage.py"),
                          transactional=transactional, timeout=timeout)
    if tool == "alembic":
        return AlembicTool(config=getattr(spec, "config", "alembic.ini"),
                           transactional=transactional, timeout=timeout)
    if tool == "flask":
        return FlaskTool(app=getattr(spec, "app", None), transactional=transactional,
                         timeout=timeout)
    return CommandTool(up=getattr(spec, "up", ""), down=getattr(spec, "down", ""),
                       pending=getattr(spec, "pending", ""),
                       applied=getattr(spec, "applied", None),
                       transactional=bool(given) if given is not None else False,
                       timeout=timeout)
