"""SQLite backups on the host: list them (``details``, ``prune``) and remove those beyond
retention by the same rule as PostgreSQL's (:func:`deploykit.tasks.retention.plan`)::

    sqlite.list_backups("/srv/app/data/app.db").run(conn).data["backups"]
    sqlite.cleanup_backups("/srv/app/data/app.db", app="shop", keep_last=5).run(conn)

Backups are ``<backup_dir>/<db name>.<deploy id>.bak`` with a ``.sha256`` sidecar
(:func:`deploykit.tasks.sqlite.backup`). The pre-deploy backup of the newest
successful deploy in the host's history and the newest verified backup always stay;
manual backups (``manual-*`` ids) count apart.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any, ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.shell import join
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks import retention
from deploykit.tasks.sqlite import BACKUP_DIR, SqliteTask, backup_path

__all__ = ["CleanupBackupsTask", "ListBackupsTask", "cleanup_backups", "list_backups"]


def _id_of(db: str) -> Callable[[str], str | None]:
    base = re.escape(posixpath.basename(db))

    def ident(name: str) -> str | None:
        match = re.fullmatch(base + r"\.([A-Za-z0-9][A-Za-z0-9._-]*)\.bak", name)
        return match[1] if match else None
    return ident


class _BackupsTask(SqliteTask):
    """Reads the backups of one database (and, for retention, the host's history)."""

    def __init__(self, db: str, *, backup_dir: str = BACKUP_DIR, app: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(db, name=name)
        self.directory = backup_path(self.db, "x", backup_dir).rsplit("/", 1)[0]
        self.app = app

    def probe_script(self) -> str:
        glob = posixpath.basename(self.db).replace("[", "[[]").replace("*", "[*]") \
            .replace("?", "[?]") + ".*.bak"
        lines = ['echo "now $(date +%s)"',
                 retention.listing_script(self.directory, self.db, pattern=glob)]
        if self.app is not None:
            lines.append(retention.history_script(self.app))
        return "\n".join(lines)

    def parse(self, output: str) -> Facts:
        lines = output.splitlines()
        now = float(lines[0].split()[1]) if lines and lines[0].startswith("now ") else 0.0
        ident = _id_of(self.db)
        files = [b for b in retention.parse_listing(lines) if ident(b.name) is not None]
        return {"now": now, "files": files, "lines": lines, "data": {}}

    def describe(self, facts: Facts) -> list[dict[str, Any]]:
        """The backups as JSON data, newest first."""
        ident = _id_of(self.db)
        return [{"name": b.name, "path": f"{self.directory}/{b.name}",
                 "deploy_id": ident(b.name), "size": b.size,
                 "age": round(max(0.0, facts["now"] - b.mtime), 1), "verified": b.verified}
                for b in sorted(facts["files"], key=lambda b: (-b.mtime, b.name))]


class ListBackupsTask(_BackupsTask):
    """See :func:`list_backups`."""

    kind: ClassVar[str] = "sqlite.list_backups"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        facts["data"].update(database=self.db, directory=self.directory,
                             backups=self.describe(facts))
        return Plan()

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self.error(conn, "listing never changes the host")  # pragma: no cover


def list_backups(db: str, *, backup_dir: str = BACKUP_DIR,
                 name: str | None = None) -> ListBackupsTask:
    """List the backups of the SQLite database ``db`` (read-only, always ``ok``).

    ``Result.data["backups"]``: newest first, each ``name``, ``path``,
    ``deploy_id``, ``size``, ``age`` (seconds), ``verified`` (has its sidecar).
    """
    return ListBackupsTask(db, backup_dir=backup_dir, name=name)


class CleanupBackupsTask(_BackupsTask):
    """See :func:`cleanup_backups`."""

    kind: ClassVar[str] = "sqlite.cleanup_backups"

    def __init__(self, db: str, *, app: str, keep_last: int | None = None,
                 keep_days: float | None = None, backup_dir: str = BACKUP_DIR,
                 name: str | None = None) -> None:
        super().__init__(db, backup_dir=backup_dir, app=app, name=name)
        if keep_last is not None and keep_last < 1:
            raise ConfigError("keep_last must be at least 1")
        if keep_days is not None and keep_days < 0:
            raise ConfigError("keep_days must not be negative")
        self.keep_last = keep_last
        self.keep_days = keep_days

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        rule = retention.plan(facts["files"], retention.parse_history_lines(facts["lines"]),
                              db=self.db, keep_last=self.keep_last, keep_days=self.keep_days,
                              now=facts["now"], id_of=_id_of(self.db))
        facts["delete"] = rule.delete
        facts["data"].update(database=self.db, kept=rule.keep, removed=rule.delete)
        plan = Plan()
        if rule.delete:
            plan.add("remove", ", ".join(rule.delete), None)
        return plan

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        # No undo: removing old backups is what was asked; the rule keeps what matters.
        paths = [f"{self.directory}/{n}" for n in facts["delete"]]
        conn.run(join(["rm", "-f", "--", *paths, *(p + ".sha256" for p in paths)]),
                 task=self.name)


def cleanup_backups(db: str, *, app: str, keep_last: int | None = None,
                    keep_days: float | None = None, backup_dir: str = BACKUP_DIR,
                    name: str | None = None) -> CleanupBackupsTask:
    """Remove the backups of the SQLite database ``db`` beyond retention.

    The rule is :func:`deploykit.tasks.retention.plan`'s, reading ``app``'s
    history on the host: never the pre-deploy backup of the newest successful
    deploy, nor the newest verified backup; ``keep_last`` newest deploy backups
    and, apart, manual ones; anything younger than ``keep_days``; no rule: nothing
    goes. Plan: ``remove: a.bak, b.bak -> (none)``; ``Result.data["kept"]`` says
    what stays and why. Idempotent; no undo.
    """
    return CleanupBackupsTask(db, app=app, keep_last=keep_last, keep_days=keep_days,
                              backup_dir=backup_dir, name=name)
