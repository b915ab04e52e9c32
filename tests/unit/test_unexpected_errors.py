"""An unexpected exception (not a DeployError) in a task or an undo action is a failed
result with its traceback, never an exception escaping the run (issue 17 item 1)."""

from __future__ import annotations

import pytest

from deploykit.connection import Connection
from deploykit.inventory import Host
from deploykit.result import Status
from deploykit.task import Facts, Plan, Task, UndoStack


class _BrokenPlan(Task):
    """A task whose plan hits a bug (a KeyError), as a library error would."""

    kind = "test.broken"

    def probe_script(self) -> str:
        return ":"

    def parse(self, output: str) -> Facts:
        return {}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        plan.add("port", facts["port"], 8000)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise AssertionError("never reached")


def _conn() -> Connection:
    return Connection(Host("nowhere", "192.0.2.1"))  # never opened: nothing here connects


def test_an_unexpected_exception_is_a_failed_result_with_its_traceback() -> None:
    result = _BrokenPlan().run(_conn(), facts={})
    assert result.status is Status.FAILED
    assert result.message.startswith("unexpected error KeyError: 'port'")
    assert "Traceback (most recent call last)" in result.message
    assert 'facts["port"]' in result.data["traceback"]


def test_an_undo_action_that_raises_does_not_stop_the_others() -> None:
    ran: list[str] = []
    stack = UndoStack()
    stack.push("first", lambda c: ran.append("first"))
    empty: dict[str, None] = {}
    stack.push("broken", lambda c: empty["missing"])
    stack.push("last", lambda c: ran.append("last"))
    undone, failed = stack.unwind(_conn())
    assert ran == ["last", "first"]
    assert undone == ["last", "first"]
    assert len(failed) == 1 and failed[0].startswith("broken: unexpected error KeyError")


def test_keyboard_interrupt_still_escapes_an_undo() -> None:
    def interrupt(c: Connection) -> None:
        raise KeyboardInterrupt

    stack = UndoStack()
    stack.push("interrupted", interrupt)
    with pytest.raises(KeyboardInterrupt):
        stack.unwind(_conn())
