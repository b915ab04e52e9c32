"""alembic on the host: :func:`alembic_migrate` and :func:`alembic_downgrade`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.secrets import Secret
from deploykit.shell import join
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.migrations.hosttool import (
    Cmd,
    ToolTask,
    cannot_undo,
    check_command,
    shell_code,
)


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


class AlembicTask(ToolTask):
    """``alembic upgrade``/``downgrade`` on the host. See :func:`alembic_migrate`."""

    kind: ClassVar[str] = "alembic"
    tag: ClassVar[str] = "current"

    def __init__(self, command_prefix: Cmd, action: Literal["upgrade", "downgrade"],
                 target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not target or any(c.isspace() for c in target):
            raise ConfigError(f"alembic: target must be a revision, not {target!r}")
        check_command("alembic", "command_prefix", command_prefix)
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
        return f"{shell_code(self.prefix)} {join(args)}"

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
            undo.push(f"{self.name}: back to {','.join(before)}", cannot_undo(
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
