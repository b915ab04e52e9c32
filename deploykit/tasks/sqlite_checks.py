"""Row counts of a SQLite database's tables before and after a change (``checks.counts``).

Read on the host by a few lines of Python (``python3 -c``, read-only URI), compared
with the rule every engine shares (:mod:`deploykit.tasks.counts`)::

    before = sqlite.snapshot_counts("/srv/app/data/app.db", ["items"]).run(conn)
    ...  # migrate
    sqlite.compare_counts("/srv/app/data/app.db", before.data["counts"], tolerance=0.01)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.shell import join
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.counts import judge, validate_tolerance
from deploykit.tasks.sqlite import SqliteTask

__all__ = ["COUNTS", "CompareCountsTask", "SnapshotCountsTask", "compare_counts",
           "snapshot_counts"]

_TABLE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*")
COUNTS = r'''
import os, sqlite3, sys, urllib.parse
db, tables = sys.argv[1], sys.argv[2:]
if not os.path.isfile(db):
    print("absent")
    sys.exit(0)
con = sqlite3.connect("file:" + urllib.parse.quote(os.path.abspath(db)) + "?mode=ro", uri=True)
def q(s):
    return '"' + s.replace('"', '""') + '"'
for t in tables:
    schema, _, name = t.rpartition(".")
    master = (q(schema) + ".sqlite_master") if schema else "sqlite_master"
    if not con.execute("SELECT 1 FROM %s WHERE type IN ('table', 'view') AND name = ?"
                       % master, (name,)).fetchone():
        print("missing " + t)
        continue
    n = con.execute("SELECT count(*) FROM %s" % ((q(schema) + ".") if schema else "")
                    + q(name)).fetchone()[0]
    print("count %d %s" % (n, t))
'''
"""The host-side program: ``python3 -c COUNTS DB TABLE...``."""


def _tables(tables: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(tables)
    if not names:
        raise ConfigError(f"{what}: name at least one table")
    for t in names:
        if not isinstance(t, str) or not _TABLE.fullmatch(t):
            raise ConfigError(f"table {t!r}: give 'table' or 'schema.table' (letters, digits, _)")
    return names


class _CountsTask(SqliteTask):
    """Reads row counts; ``ok`` or ``failed``, never changes anything."""

    tables: tuple[str, ...] = ()

    def probe_script(self) -> str:
        return join(["python3", "-c", COUNTS, self.db, *self.tables])

    def parse(self, output: str) -> Facts:
        counts: dict[str, int] = {}
        missing: list[str] = []
        for line in output.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "count":
                number, _, table = rest.partition(" ")
                counts[table] = int(number)
            elif kind == "missing":
                missing.append(rest)
        return {"absent": output.strip() == "absent", "counts": counts, "missing": missing,
                "answered": bool(output.strip()), "data": {}}

    def read(self, conn: Connection, facts: Facts) -> dict[str, int]:
        """The counts; a missing database or (``strict``) table is an error."""
        if facts["absent"]:
            raise self.error(conn, f"SQLite database {self.db} does not exist")
        if not facts["answered"]:
            raise self.error(conn, f"could not count rows in {self.db} (python3 on the host?)")
        counts: dict[str, int] = facts["counts"]
        return counts

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self.error(conn, "a check never changes the host")  # pragma: no cover


class SnapshotCountsTask(_CountsTask):
    """Record exact row counts. See :func:`snapshot_counts`."""

    kind: ClassVar[str] = "sqlite.snapshot_counts"

    def __init__(self, db: str, tables: Sequence[str], *, name: str | None = None) -> None:
        super().__init__(db, name=name)
        self.tables = _tables(tables, "snapshot_counts")

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        counts = self.read(conn, facts)
        if facts["missing"]:
            raise self.error(conn, f"table(s) {', '.join(facts['missing'])} do not exist in "
                                   f"SQLite database {self.db}")
        facts["data"].update(database=self.db, counts=counts)
        return Plan()


def snapshot_counts(db: str, tables: Sequence[str], *,
                    name: str | None = None) -> SnapshotCountsTask:
    """Count the rows of ``tables`` in the SQLite database ``db`` (read-only).

    Always ``ok``; ``Result.data``: ``{"database": db, "counts": {table: rows}}``, the
    baseline for :func:`compare_counts`. A missing database or table fails, naming it.
    """
    return SnapshotCountsTask(db, tables, name=name)


class CompareCountsTask(_CountsTask):
    """Compare row counts with a baseline. See :func:`compare_counts`."""

    kind: ClassVar[str] = "sqlite.compare_counts"

    def __init__(self, db: str, baseline: Mapping[str, int], *, tolerance: float = 0.0,
                 absolute: int = 0, name: str | None = None) -> None:
        super().__init__(db, name=name)
        self.baseline = {str(t): int(n) for t, n in baseline.items()}
        self.tables = _tables(list(self.baseline), "compare_counts: the baseline")
        validate_tolerance(tolerance, absolute)
        self.tolerance = tolerance
        self.absolute = absolute

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        data, failure = judge(self.baseline, self.read(conn, facts), tolerance=self.tolerance,
                              absolute=self.absolute, where=f"SQLite database {self.db}")
        facts["data"].update(database=self.db, **data)
        if failure:
            raise self.error(conn, failure)
        return Plan()


def compare_counts(db: str, baseline: Mapping[str, int], *, tolerance: float = 0.0,
                   absolute: int = 0, name: str | None = None) -> CompareCountsTask:
    """Fail when a table's row count in the SQLite database ``db`` moved away from
    ``baseline`` by more than ``max(absolute, tolerance * baseline)`` rows (a table
    that is gone counts as moved). Same rule and message as
    :func:`deploykit.tasks.postgres.compare_counts`; ``Result.data`` holds the counts,
    the baseline and the differences either way."""
    return CompareCountsTask(db, baseline, tolerance=tolerance, absolute=absolute, name=name)
