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
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, RollbackError, TaskError
from deploykit.pg import PgSettings
from deploykit.result import Result, Status
from deploykit.secrets import Secret
from deploykit.shell import join, quote
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tasks.migrations.hosttool import tail
from deploykit.tasks.migrations.sql import MigrateTask, RollbackTask

__all__ = [
    "TOOLS",
    "AlembicTool",
    "CommandTool",
    "DjangoTool",
    "FlaskTool",
    "MigrationState",
    "MigrationTool",
    "ReleaseEnv",
    "SqlTool",
    "parse_alembic_history",
    "parse_django_plan",
    "tool_for",
]

_SEP = "--deploykit-migrations-sep--"
_RC = "--deploykit-migrations-rc--"


@dataclass(frozen=True)
class ReleaseEnv:
    """One release on the host, as a migration tool runs in it.

    ``path``: the release directory (``/srv/app/releases/v2``); every command runs there.
    ``env``: the release's environment (``DATABASE_URL``, ``DJANGO_SETTINGS_MODULE``...);
    values travel through stdin, secrets are redacted. ``venv``: the release's venv
    (relative to ``path``). ``source``: the release's source on the controller (the
    ``sql`` tool reads its ``migrations/`` there). ``deploy_id``: recorded by ``sql``.
    """

    path: str
    env: Mapping[str, str | Secret] = field(default_factory=dict)
    venv: str = "venv"
    source: Path | None = None
    deploy_id: str | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError(f"release path must be absolute, not {self.path!r}")

    def bin(self, program: str) -> str:
        """``<path>/<venv>/bin/<program>``."""
        return f"{self.path.rstrip('/')}/{self.venv}/bin/{program}"

    def run(self, command: str) -> str:
        """``command`` (shell code) run in the release directory, in a subshell."""
        return f"(cd -- {quote(self.path)} && {command})"


@dataclass(frozen=True)
class MigrationState:
    """What the tool says: applied and pending migrations, each in the tool's own order."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    current: tuple[str, ...] = ()  # alembic: the current revisions ([] at base)


class MigrationTool(ABC):
    """One migration tool of the app contract (see the module docstring)."""

    name: ClassVar[str]
    transactional: bool

    @abstractmethod
    def state(self, conn: Connection, release: ReleaseEnv) -> MigrationState:
        """Applied and pending migrations, by the tool's own read-only query."""

    @abstractmethod
    def migrate(self, release: ReleaseEnv) -> Task:
        """The step applying every pending migration with ``release``'s code and env."""

    @abstractmethod
    def rollback(self, release: ReleaseEnv, steps: int) -> Task:
        """The step rolling back the newest ``steps`` migrations with ``release``'s scripts
        (the release that applied them)."""


def _steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"migrate rollback: steps must be a positive integer, not {steps!r}")
    return steps


# -- tools run on the host ------------------------------------------------------------------


class HostTool(MigrationTool):
    """A tool run over SSH in the release: a status script, an up command, down commands."""

    def __init__(self, *, transactional: bool, timeout: float = 1800.0) -> None:
        self.transactional = transactional
        self.timeout = timeout

    @abstractmethod
    def status_commands(self, release: ReleaseEnv) -> list[str]:
        """Read-only commands whose outputs :meth:`parse` reads (run in one round trip)."""

    @abstractmethod
    def parse(self, outputs: list[str]) -> MigrationState:
        """The state from each status command's stdout."""

    @abstractmethod
    def up_command(self, release: ReleaseEnv) -> str:
        """The command applying every pending migration."""

    @abstractmethod
    def down_commands(self, release: ReleaseEnv, state: MigrationState,
                      targets: Sequence[str]) -> list[str]:
        """Commands un-applying ``targets`` (the newest applied migrations, newest last)."""

    def state_script(self, release: ReleaseEnv) -> str:
        """Every status command, outputs separated, then the first failing exit code."""
        parts = [f"{release.run(cmd)} || dk_rc=$?\necho {_SEP}"
                 for cmd in self.status_commands(release)]
        return "dk_rc=0\n" + "\n".join(parts) + f"\necho {_RC}$dk_rc"

    def state(self, conn: Connection, release: ReleaseEnv) -> MigrationState:
        res = conn.run(self.state_script(release), write=False, check=False, env=release.env,
                       task=self.name)
        out, _, rc = res.stdout.rpartition(_RC)
        outputs = out.split(f"{_SEP}\n")[:-1] if out else []
        if rc.strip() != "0" or len(outputs) != len(self.status_commands(release)):
            detail = tail(res.stderr or res.stdout, 1500)
            raise TaskError(f"{self.name}: reading the migration status failed "
                            f"({'; '.join(self.status_commands(release))})"
                            + (f":\n{detail}" if detail else ""), host=conn.name,
                            task=f"migrate {self.name}")
        return self.parse(outputs)

    def migrate(self, release: ReleaseEnv) -> Task:
        return HostMigrateTask(self, release)

    def rollback(self, release: ReleaseEnv, steps: int) -> Task:
        return HostRollbackTask(self, release, _steps(steps))

    def targets_of(self, state: MigrationState, steps: int) -> list[str]:
        """The newest ``steps`` applied migrations (oldest first)."""
        if steps > len(state.applied):
            raise TaskError(f"cannot roll back {steps} migration(s): only "
                            f"{len(state.applied)} applied")
        return list(state.applied[len(state.applied) - steps:])


class _HostStep(Task):
    """A migrate/rollback step of a :class:`HostTool` in one release."""

    def __init__(self, tool: HostTool, release: ReleaseEnv) -> None:
        super().__init__()
        self.tool = tool
        self.release = release

    def target(self) -> str:
        return f"{self.tool.name} {self.release.path}"

    @property
    def secrets(self) -> Sequence[Secret]:
        return [v for v in self.release.env.values() if isinstance(v, Secret)]

    def probe_script(self) -> str:
        return ":"  # probed alone: the release env (secrets) travels with the command

    def parse(self, output: str) -> Facts:
        return {}

    def probe(self, conn: Connection) -> Facts:
        return {"state": self.tool.state(conn, self.release)}

    def exec(self, conn: Connection, command: str, facts: Facts) -> None:
        """Run one write command in the release; its output tail goes to the result."""
        res = conn.run(self.release.run(command), check=False, env=self.release.env,
                       timeout=self.tool.timeout, task=self.name)
        facts.setdefault("outputs", []).append(tail(res.stdout + res.stderr))
        if res.failed:
            raise TaskError(f"{command} exited with code {res.exit_code}:\n"
                            f"{tail(res.stderr or res.stdout, 1500)}",
                            host=conn.name, task=self.name)

    def reread(self, conn: Connection, facts: Facts) -> None:
        """Read the state after a change (kept in ``facts["after"]``), quietly on failure."""
        try:
            facts["after"] = self.tool.state(conn, self.release)
        except DeployError:
            facts.pop("after", None)

    def report(self, result: Result, facts: Facts, *, up: bool) -> Result:
        """``data``: tool, before/after applied lists, pending, ran (what changed)."""
        before: MigrationState | None = facts.get("state")
        after: MigrationState | None = facts.get("after")
        data: dict[str, Any] = {"tool": self.tool.name, "transactional": self.tool.transactional}
        if before is not None:
            data.update(pending=list(before.pending), before=list(before.applied))
        if before is not None and after is not None:
            data["after"] = list(after.applied)
            data["ran"] = [m for m in after.applied if m not in before.applied] if up else \
                [m for m in reversed(before.applied) if m not in after.applied]
        else:
            data["ran"] = []
        data["output"] = "\n".join(facts.get("outputs", []))
        result.data.update(data)
        return result


class HostMigrateTask(_HostStep):
    """Apply every pending migration (see :meth:`MigrationTool.migrate`)."""

    kind: ClassVar[str] = "migrate"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        for m in facts["state"].pending:
            plan.add(m, "pending", "applied")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        tool, release, before = self.tool, self.release, facts["state"]

        def revert(c: Connection) -> None:
            after = facts.get("after")
            if facts.get("failed") and not tool.transactional:
                raise RollbackError(
                    f"{tool.name} is not transactional here and a migration failed midway: "
                    f"the database may hold part of it; restore the pre-deploy backup",
                    host=c.name, task=f"undo {self.name}")
            now = after if after is not None else tool.state(c, release)
            ran = [m for m in now.applied if m not in before.applied]
            for command in tool.down_commands(release, now, ran) if ran else []:
                c.run(release.run(command), env=release.env, timeout=tool.timeout,
                      task=f"undo {self.name}")

        undo.push(f"roll back what {self.name} applied", revert)
        try:
            self.exec(conn, tool.up_command(release), facts)
        except TaskError as exc:
            facts["failed"] = True
            self.reread(conn, facts)
            after = facts.get("after")
            ran = [m for m in after.applied if m not in before.applied] if after else None
            note = (f"applied before the failure: {', '.join(ran)}" if ran else
                    "none of them was applied" if ran is not None else
                    "the status could not be read again")
            if not tool.transactional:
                note += ("; the tool is not transactional here: the failing migration may be "
                         "half-applied, restore the pre-deploy backup")
            raise TaskError(f"{exc.message}\n({note})", host=conn.name, task=self.name) from None
        self.reread(conn, facts)

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        after = facts.get("after")
        if after is None:
            raise TaskError("the migration status could not be read after the migration",
                            host=conn.name, task=self.name)
        return self.plan(conn, {"state": after})

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """The task contract; ``data`` says what ran, and ``needs_restore`` on a failure the
        tool could not roll back itself."""
        state: Facts = dict(facts) if facts and "state" in facts else {}
        if not state:
            try:
                state = self.probe(conn)
            except DeployError as exc:
                return self.report(Result(host=conn.name, task=self.name, status=Status.FAILED,
                                          message=exc.message, check=check), state, up=True)
        result = self.report(super().run(conn, check=check, facts=state, undo=undo), state,
                             up=True)
        result.data["needs_restore"] = bool(result.failed and state.get("failed")
                                            and not self.tool.transactional)
        return result


class HostRollbackTask(_HostStep):
    """Roll back the newest N migrations (see :meth:`MigrationTool.rollback`)."""

    kind: ClassVar[str] = "migrate.rollback"

    def __init__(self, tool: HostTool, release: ReleaseEnv, steps: int) -> None:
        super().__init__(tool, release)
        self.steps = steps

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        try:
            targets = self.tool.targets_of(facts["state"], self.steps)
        except TaskError as exc:
            raise TaskError(exc.message, host=conn.name, task=self.name) from None
        facts["targets"] = targets
        plan = Plan()
        for m in reversed(targets):
            plan.add(m, "applied", "rolled back")
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        release, tool = self.release, self.tool

        def reapply(c: Connection) -> None:
            c.run(release.run(tool.up_command(release)), env=release.env, timeout=tool.timeout,
                  task=f"undo {self.name}")

        undo.push(f"re-apply what {self.name} rolled back", reapply)
        for command in tool.down_commands(release, facts["state"], facts["targets"]):
            self.exec(conn, command, facts)
        self.reread(conn, facts)

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        after: MigrationState | None = facts.get("after")
        plan = Plan()
        for m in facts["targets"]:
            if after is None or m in after.applied:
                plan.add(m, "applied", "rolled back")
        return plan

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """The task contract; ``data["ran"]`` lists what was rolled back, newest first."""
        state: Facts = {}
        try:
            state = self.probe(conn)
        except DeployError as exc:
            return self.report(Result(host=conn.name, task=self.name, status=Status.FAILED,
                                      message=exc.message, check=check), state, up=False)
        return self.report(super().run(conn, check=check, facts=state, undo=undo), state,
                           up=False)


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
        return RollbackTask(self.folder(release), steps=_steps(steps), database=self.database,
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
