"""Assertions every task test makes: check mode writes nothing, a second run is a no-op.

For your own tasks' tests too::

    from deploykit.testing.idempotence import assert_check_mode, assert_idempotent

    def test_my_task(lab_connection):
        conn = lab_connection("web-1")
        assert_check_mode(conn, my_task)      # would change, sends no write
        assert_idempotent(conn, my_task)      # changed (with a write), then ok (with none)

"Write" is what :attr:`deploykit.connection.Connection.log` marks as one:
shell commands, and the SQL/Redis commands that tasks log there.
"""

from __future__ import annotations

from deploykit.connection import Connection
from deploykit.result import Result, Status
from deploykit.task import Task, UndoStack


def writes(conn: Connection, since: int = 0) -> list[str]:
    """Write commands sent on ``conn`` since log position ``since`` (secrets redacted)."""
    return [entry.command for entry in conn.log[since:] if entry.write]


def assert_check_mode(conn: Connection, task: Task) -> Result:
    """Run ``task`` in check mode: it reports a change and sends no write command."""
    mark = len(conn.log)
    result = task.run(conn, check=True)
    assert result.status is Status.CHANGED, result.message
    assert result.check and result.message == "would change (check mode)", result.message
    assert writes(conn, mark) == []
    return result


def assert_idempotent(conn: Connection, task: Task, undo: UndoStack | None = None) -> Result:
    """Apply ``task`` twice: ``changed`` with a write sent, then ``ok`` with an empty diff
    and no write sent. Returns the first result."""
    mark = len(conn.log)
    first = task.run(conn, undo=undo)
    assert first.status is Status.CHANGED, first.message
    assert writes(conn, mark), "a change must show as a write in the connection's log"
    mark = len(conn.log)
    second = task.run(conn)
    assert second.status is Status.OK, second.message
    assert second.diff == "", second.diff
    assert writes(conn, mark) == []
    return first
