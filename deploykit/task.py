"""The task contract: probe -> plan -> apply -> re-probe -> Result.

Every task is idempotent and does three things, in this order:

1. **probe**: read the current state on the host, with no side effect. A task
   gives its read as a shell snippet (:meth:`Task.probe_script`) and turns the
   snippet's output into facts (:meth:`Task.parse`), so that the runner can
   batch the probes of many steps into one round trip.
2. **plan**: compare the facts with the desired state (:meth:`Task.plan`). An
   empty :class:`Plan` means ``ok`` and nothing is run. A plan carries a human
   diff: a unified diff for contents, ``a -> b`` for attributes.
3. **apply**: only for a non-empty plan (:meth:`Task.apply`); then the task is
   probed again (facts are never trusted after a change) and must plan empty,
   else the result is ``failed``.

Check mode stops after plan and reports what would change. A task that changes
something a later failure may need to undo pushes an undo action on the
:class:`UndoStack` it is given.

A task object is a plain value: build it with a task function
(``files.directory("/srv/app", mode=0o755)``) and run it on a connection
directly (``task.run(conn)``) or hand it to :class:`deploykit.runner.Runner`.
"""

from __future__ import annotations

import secrets as _random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from deploykit.connection import CommandResult, Connection
from deploykit.errors import DeployError, unexpected
from deploykit.facts import FactRequest
from deploykit.result import Result, Status
from deploykit.secrets import Secret

if TYPE_CHECKING:
    from deploykit.inventory import Host

Facts = dict[str, Any]

AFTER_APPLY = "__probed_after_apply__"
"""Key in a task's facts holding its probe's output read right after apply, in the same
round trip as the change (:meth:`Task.run_then_probe`); :meth:`Task.changed_after_apply`
parses it instead of probing again."""


@dataclass(frozen=True)
class Change:
    """One difference between the host and the desired state.

    ``attribute`` names what differs (``content``, ``mode``, ``state``, ...);
    ``before``/``after`` are short human forms; ``diff`` is a unified diff for
    contents (empty for attributes).
    """

    attribute: str
    before: str | None
    after: str | None
    diff: str = ""

    def render(self) -> str:
        """``attribute: before -> after``, followed by the diff when there is one."""
        line = f"{self.attribute}: {self.before if self.before is not None else '(none)'}" \
               f" -> {self.after if self.after is not None else '(none)'}"
        return f"{line}\n{self.diff}".rstrip("\n") if self.diff else line


@dataclass
class Plan:
    """What a task would change; empty means the host is already as desired."""

    changes: list[Change] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def add(self, attribute: str, before: object, after: object, diff: str = "") -> None:
        """Record one difference."""
        self.changes.append(Change(attribute, None if before is None else str(before),
                                   None if after is None else str(after), diff))

    def has(self, attribute: str) -> bool:
        """True when the plan changes ``attribute``."""
        return any(c.attribute == attribute for c in self.changes)

    def render(self) -> str:
        """The human diff of the whole plan."""
        return "\n".join(c.render() for c in self.changes)


@dataclass(frozen=True)
class UndoAction:
    """A way back: ``run(conn)`` restores what a task changed."""

    description: str
    run: Callable[[Connection], None]


@dataclass
class UndoStack:
    """Undo actions pushed by tasks on one host, run last-in first-out on failure."""

    actions: list[UndoAction] = field(default_factory=list)

    def push(self, description: str, action: Callable[[Connection], None]) -> None:
        """Register how to undo a change that was just made."""
        self.actions.append(UndoAction(description, action))

    def unwind(self, conn: Connection) -> tuple[list[str], list[str]]:
        """Run every action in reverse; return ``(undone, not_undone_with_reason)``."""
        undone: list[str] = []
        failed: list[str] = []
        while self.actions:
            action = self.actions.pop()
            try:
                action.run(conn)
                undone.append(action.description)
            except DeployError as exc:
                failed.append(f"{action.description}: {exc.message}")
            except Exception as exc:  # an undo's bug must not stop the other undos
                failed.append(f"{action.description}: {unexpected(exc)[0]}")
        return undone, failed


class Task(ABC):
    """Base of every task: subclasses say how to probe, plan and apply."""

    kind: ClassVar[str] = "task"

    def __init__(self, *, name: str | None = None) -> None:
        self._name = name

    @property
    def name(self) -> str:
        """What reports call this step: the given name, else ``kind target``."""
        return self._name or f"{self.kind} {self.target()}".strip()

    def target(self) -> str:
        """Short description of what the task acts on (a path, a user name)."""
        return ""

    @property
    def secrets(self) -> Sequence[Secret]:
        """Secrets this task handles, to be redacted in every output."""
        return ()

    @abstractmethod
    def probe_script(self) -> str:
        """A read-only shell snippet whose stdout :meth:`parse` understands.

        It runs in a subshell, possibly batched with other tasks' probes, so it
        must not rely on its exit code and must print nothing it doesn't own.
        """

    @abstractmethod
    def parse(self, output: str) -> Facts:
        """Turn the probe snippet's stdout into facts."""

    def for_host(self, host: Host) -> Task:
        """This task as it runs on ``host``: itself, unless its arguments differ per
        host (:func:`deploykit.hostargs.per_host`)."""
        return self

    def probe_requests(self) -> Sequence[FactRequest] | None:
        """The probe as file-fact requests, when it is only that (its
        :meth:`probe_script` must then be ``facts.request_script(requests)``): the
        runner answers the requests of many steps with one process on the host.
        None (the default): only the shell snippet."""
        return None

    def touches(self) -> Sequence[str] | None:
        """The paths a change by this task may alter (each exactly that path, not what
        is under it), so that the runner keeps the facts it read about other paths.
        None (the default): unknown, and every fact read before the change is dropped."""
        return None

    @abstractmethod
    def plan(self, conn: Connection, facts: Facts) -> Plan:
        """Compare facts with the desired state. May read more (e.g. old content for a
        diff) through ``conn`` with ``write=False``; must never write."""

    @abstractmethod
    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        """Make the host match the plan; push undo actions for what can be undone."""

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """Re-probe after apply; the plan must now be empty. Override for tasks whose
        effect cannot be re-probed (e.g. running a command). Uses the probe read in
        the apply's own round trip when :meth:`run_then_probe` made it."""
        output = facts.pop(AFTER_APPLY, None)
        fresh = self.parse(output) if output is not None else self.probe(conn)
        return self.plan(conn, fresh)

    def run_then_probe(self, conn: Connection, command: str, facts: Facts,
                       **options: Any) -> CommandResult:
        """Run an apply ``command`` (a ready shell string, values quoted) and, in the
        same round trip once it succeeded, this task's probe, keeping the probe's
        output for :meth:`changed_after_apply`: a change plus its check costs one
        round trip instead of two. ``options`` go to :meth:`Connection.run`."""
        marker = f"__deploykit_probe_{_random.token_hex(8)}__"
        # not "( ... ) || exit": a tested subshell ignores the set -e in it
        script = (f"( {command}\n)\n__dk_rc=$?\n[ $__dk_rc -eq 0 ] || exit $__dk_rc\n"
                  f"printf '\\n%s\\n' {marker}\n( {self.probe_script()}\n)")
        result = conn.run(script, task=self.name, **options)
        before, found, after = result.stdout.rpartition(f"\n{marker}\n")
        if found:
            facts[AFTER_APPLY] = after
            result.stdout = before
        return result

    def probe(self, conn: Connection) -> Facts:
        """Run this task's probe alone (one round trip) and parse it."""
        result = conn.run(self.probe_script(), write=False, check=False, task=self.name)
        return self.parse(result.stdout)

    def run(
        self,
        conn: Connection,
        *,
        check: bool = False,
        facts: Facts | None = None,
        undo: UndoStack | None = None,
    ) -> Result:
        """Probe (unless ``facts`` are given), plan, and apply unless ``check``.

        Never raises for a failure on the host: a :class:`DeployError` becomes a
        ``failed`` Result naming the reason, and any other exception (a bug, a
        library's error) a ``failed`` Result with the traceback (also in
        ``data["traceback"]``), so that the runner still undoes what was changed.
        """
        started = time.monotonic()
        conn.secrets.update(self.secrets)

        def result(status: Status, diff: str = "", message: str = "") -> Result:
            return Result(host=conn.name, task=self.name, status=status, diff=diff,
                          message=message, duration=time.monotonic() - started, check=check)

        try:
            current = facts if facts is not None else self.probe(conn)
            plan = self.plan(conn, current)
            if not plan:
                return result(Status.OK)
            if check:
                return result(Status.CHANGED, plan.render(), "would change (check mode)")
            self.apply(conn, current, plan, undo if undo is not None else UndoStack())
            remaining = self.changed_after_apply(conn, current)
            if remaining:
                return result(Status.FAILED, plan.render(),
                              f"still differs after apply: {remaining.render()}")
            return result(Status.CHANGED, plan.render())
        except DeployError as exc:
            return result(Status.FAILED, message=exc.message)
        except Exception as exc:
            return failed_unexpectedly(result(Status.FAILED), exc)


def failed_unexpectedly(result: Result, exc: Exception) -> Result:
    """Turn ``result`` into the failure an unexpected exception causes: message and
    traceback (also in ``data["traceback"]``)."""
    message, trace = unexpected(exc)
    result.status = Status.FAILED
    result.message = message
    result.data["traceback"] = trace
    return result


class Observation(Task):
    """A step that reads and judges but never changes anything, and does its work in
    :meth:`run` (an HTTP check, a log read, a testinfra suite): no shell probe for the
    runner to batch, an empty plan, nothing to apply."""

    def probe_script(self) -> str:
        return ":"

    def parse(self, output: str) -> Facts:
        return {}

    def probe(self, conn: Connection) -> Facts:
        """Nothing to read ahead: :meth:`run` reads what it judges."""
        return {}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise AssertionError(f"{self.name} observes only: it has nothing to apply")

    @abstractmethod
    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """Read and judge: ``ok`` or ``failed`` (with what was read in ``data``)."""

