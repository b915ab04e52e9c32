"""``invoke lock`` / ``unlock``: hold or remove the deploy lock by hand."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from deploykit import journal
from deploykit.connection import Connection
from deploykit.errors import DeployError, LockHeldError
from deploykit.inventory import Host
from deploykit.pipeline.events import Display
from deploykit.pipeline.fleet import connected, in_parallel, who_am_i
from deploykit.pipeline.project import Project

log = logging.getLogger("deploykit.pipeline.locks")

# == locks ====================================================================================


def take_lock(project: Project, out: Display) -> str:
    """``invoke lock``: hold the deploy lock on every host until ``invoke unlock``."""
    lock_id = f"lock-{journal.new_deploy_id(project.config.root)}"
    holder = journal.LockHolder.for_this_process(lock_id, project.app)
    with connected(project.hosts, project.known_secrets()) as conns:
        entry = journal.HistoryEntry(event="lock", id=lock_id, app=project.app, who=holder.who,
                                     time=holder.started, message="invoke lock")
        attempts: dict[str, journal.LockAttempt | DeployError] = {}

        def take(h: Host) -> None:
            try:
                attempts[h.name] = journal.acquire_lock(
                    conns[h.name], project.app, holder, ttl=project.config.lock_ttl,
                    entries=[dataclasses.replace(entry, host=h.name)])
            except DeployError as exc:
                attempts[h.name] = exc

        in_parallel(project.hosts, take)
        taken = [n for n, a in attempts.items()
                 if isinstance(a, journal.LockAttempt) and a.acquired]
        if len(taken) < len(project.hosts):
            for name in taken:
                journal.release_lock(conns[name], project.app, holder)
            problems = [a.held_by.describe() if isinstance(a, journal.LockAttempt)
                        and a.held_by else str(a) for a in attempts.values()
                        if not (isinstance(a, journal.LockAttempt) and a.acquired)]
            raise LockHeldError("; ".join(problems))
    out.line(f"{project.app} locked on {', '.join(h.name for h in project.hosts)} as "
             f"{lock_id}; deploys are refused until `invoke unlock`")
    return lock_id


def release_locks(project: Project, out: Display, *, force: bool = False) -> None:
    """``invoke unlock``: remove your own ``invoke lock`` or a lock your crashed deploy
    left on this controller; ``force`` removes any lock (recorded in the history)."""
    me = who_am_i()
    journal_log = logging.getLogger("deploykit.journal")
    level = journal_log.level
    journal_log.setLevel(logging.ERROR)  # "lock removed by": we say so ourselves
    try:
        with connected(project.hosts, project.known_secrets()) as conns:
            results = _unlock_each(project, conns, me, force)
    finally:
        journal_log.setLevel(level)
    for line in results:
        out.line(line)


def _unlock_each(project: Project, conns: Mapping[str, Connection], me: str,
                 force: bool) -> list[str]:
    def one(h: Host) -> str:
        conn = conns[h.name]
        info = journal.lock_status(conn, project.app, ttl=project.config.lock_ttl)
        if info is None:
            return f"{h.name}: not locked"
        holder = info.holder
        ours = holder is not None and holder.who == me and (
            holder.deploy_id.startswith("lock-") or not journal.pid_alive(holder.pid))
        if not (force or ours):
            raise LockHeldError(f"{info.describe()}; not yours: `invoke unlock --force` "
                                f"breaks it (recorded in the history)", host=h.name)
        removed = journal.unlock(conn, project.app, force=force,
                                 deploy_id=holder.deploy_id if holder else None,
                                 ttl=project.config.lock_ttl)
        return f"{h.name}: removed {removed.describe()}" if removed else \
            f"{h.name}: not locked"

    return in_parallel(project.hosts, one)
