"""Any migration tool with a status command: :func:`command_migrate`."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, RollbackError, TaskError
from deploykit.secrets import Secret
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.migrations.hosttool import Cmd, ToolTask, check_command, shell_code, tail


class CommandMigrateTask(ToolTask):
    """Any migration tool with a status command. See :func:`command_migrate`."""

    kind: ClassVar[str] = "migrate.command"

    def __init__(self, status: Cmd, apply: Cmd, *, pending: str | Callable[[str], bool] | None,
                 current: str | None, rollback: Cmd | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for what, cmd in (("status", status), ("apply", apply), ("rollback", rollback)):
            check_command("command_migrate", f"the {what} command", cmd)
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
        return shell_code(self.apply_cmd)

    def status_command(self) -> str:
        return shell_code(self.status_cmd)

    def read(self, lines: list[str]) -> Facts:
        return {"status": "\n".join(lines)}

    def describe(self, facts: Facts) -> Any:
        status: str = facts["status"]
        if self.current_re is None:
            return tail(status, 500)
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
            plan.add("migrations", "unknown (no pending test)", f"run {shell_code(self.apply_cmd)}")
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
            self.push_undo(undo, f"{self.name}: roll back with {shell_code(self.rollback_cmd)}",
                           shell_code(self.rollback_cmd), moved)
        try:
            self.act(conn, shell_code(self.apply_cmd), facts)
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
