"""Maintenance mode on a fleet, recorded in each host's history: ``invoke maintenance on``.

:func:`set_maintenance` runs :func:`deploykit.tasks.maintenance.maintenance` on every
host in parallel and, on each host where it changed something, appends a
``maintenance`` entry to the app's history (``result`` ``on``/``off``, or
``failed`` with the reason; ``data.allow``: the allow-list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from deploykit import journal
from deploykit.connection import Connection
from deploykit.errors import DeployError
from deploykit.result import Result, Status
from deploykit.tasks.maintenance import MaintenanceTask

__all__ = ["EVENT", "set_maintenance"]

EVENT = "maintenance"
"""The ``event`` of the history entries written here."""


def set_maintenance(conns: Mapping[str, Connection], task: MaintenanceTask, *, op_id: str,
                    check: bool = False, forks: int = 10) -> list[Result]:
    """Run ``task`` on every connection's host (``check``: plan only); record every change
    (or failure) in that host's history under ``op_id``. Results in ``conns`` order."""
    holder = journal.LockHolder.for_this_process(op_id, task.app)
    state = "on" if task.on else "off"

    def one(conn: Connection) -> Result:
        result = task.run(conn, check=check)
        if check or result.status not in (Status.CHANGED, Status.FAILED):
            return result
        entry = journal.HistoryEntry(
            event=EVENT, id=op_id, app=task.app, kind=EVENT, who=holder.who, host=conn.name,
            time=holder.started, result=state if result.changed else "failed",
            message=(f"maintenance {state}" + (f" (allowed: {', '.join(task.allow)})"
                                               if task.on and task.allow else "")
                     if result.changed else f"maintenance {state} failed: {result.message}"),
            data={"allow": list(task.allow), "retry_after": task.retry_after} if task.on
            else {})
        try:
            journal.append_history(conn, task.app, [entry])
        except DeployError as exc:
            result.message = (result.message + "; " if result.message else "") + \
                f"not recorded in the history: {exc.message}"
        return result

    items: Sequence[Connection] = list(conns.values())
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(items)))) as pool:
        return list(pool.map(one, items))
