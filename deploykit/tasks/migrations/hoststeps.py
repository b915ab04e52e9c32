"""A migrate tool run on the host over SSH, in a release, with its environment: the
:class:`HostTool` base (status commands, up, down) and its two steps, migrate and roll back
N, which report what ran and, where the tool is not transactional, that a failure needs
the pre-deploy backup."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from deploykit.connection import Connection
from deploykit.errors import DeployError, RollbackError, TaskError
from deploykit.result import Result, Status
from deploykit.secrets import Secret
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tasks.migrations.base import MigrationState, MigrationTool, ReleaseEnv, check_steps
from deploykit.tasks.migrations.hosttool import tail

__all__ = ["HostMigrateTask", "HostRollbackTask", "HostTool"]

_SEP = "--deploykit-migrations-sep--"
_RC = "--deploykit-migrations-rc--"


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
        return HostRollbackTask(self, release, check_steps(steps))

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


