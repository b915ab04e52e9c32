"""Read-only data checks: row counts before/after, and query checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import sql

from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.pg import PgSettings
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.counts import (
    judge,
    validate_tolerance,
)
from deploykit.tasks.postgres.session import Params, PgTask, Session, check_name, one_line


def table_identifier(name: str) -> sql.Identifier:
    """``"orders"`` or ``"shop.orders"`` as an identifier."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigError(f"table {name!r}: give 'table' or 'schema.table'")
    for part in parts:
        check_name("table", part)
    return sql.Identifier(*parts)


def count_rows(s: Session, tables: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Exact row counts of the tables that exist, and the names of those that do not."""
    idents = {t: table_identifier(t) for t in tables}
    if not idents:
        return {}, []
    found = s.rows("SELECT to_regclass(t) IS NOT NULL FROM unnest(%s::text[]) "
                   "WITH ORDINALITY AS u(t, i) ORDER BY i",
                   [[i.as_string(s.pg) for i in idents.values()]])
    present = [t for t, (exists,) in zip(idents, found, strict=True) if exists]
    missing = [t for t in idents if t not in present]
    counts: dict[str, int] = {}
    if present:
        row = s.rows(sql.SQL("SELECT ") + sql.SQL(", ").join(
            sql.SQL("(SELECT count(*) FROM {})").format(idents[t]) for t in present))[0]
        counts = {t: int(n) for t, n in zip(present, row, strict=True)}
    return counts, missing


class _CheckTask(PgTask):
    """A read-only check: ``ok`` (data in Result.data) or ``failed``; never changes."""

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        raise self.error(conn, "a check never changes the host")  # pragma: no cover


class SnapshotCountsTask(_CheckTask):
    """Record exact row counts of tables. See :func:`snapshot_counts`."""

    kind = "postgres.snapshot_counts"

    def __init__(self, db: str, tables: Sequence[str], *, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.db = check_name("database", db)
        self.tables = tuple(tables)
        if not self.tables:
            raise ConfigError("snapshot_counts: name at least one table")
        for t in self.tables:
            table_identifier(t)

    def target(self) -> str:
        return f"{self.db}: {', '.join(self.tables)}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        counts, missing = count_rows(self.scope(facts).sql(self.db), self.tables)
        if missing:
            raise self.error(conn, f"table(s) {', '.join(missing)} do not exist in database "
                                   f"{self.db!r}")
        self.scope(facts).data.update(database=self.db, counts=counts)
        return Plan()


def snapshot_counts(db: str, tables: Sequence[str], *, settings: PgSettings | None = None,
                    name: str | None = None) -> SnapshotCountsTask:
    """Count the rows of ``tables`` (``"t"`` or ``"schema.t"``) in database ``db``.

    Always ``ok`` (never changes anything); ``Result.data`` holds ``{"database":
    db, "counts": {table: rows}}``, so the run report keeps them as a baseline
    for :func:`compare_counts`. A missing table fails the task naming it.
    """
    return SnapshotCountsTask(db, tables, settings=settings, name=name)


class CompareCountsTask(_CheckTask):
    """Compare row counts with a baseline. See :func:`compare_counts`."""

    kind = "postgres.compare_counts"

    def __init__(self, db: str, baseline: Mapping[str, int], *, tolerance: float = 0.0,
                 absolute: int = 0, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.db = check_name("database", db)
        self.baseline = {str(t): int(n) for t, n in baseline.items()}
        if not self.baseline:
            raise ConfigError("compare_counts: the baseline is empty")
        for t in self.baseline:
            table_identifier(t)
        validate_tolerance(tolerance, absolute)
        self.tolerance = tolerance
        self.absolute = absolute

    def target(self) -> str:
        return f"{self.db}: {', '.join(self.baseline)}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        counts, _ = count_rows(self.scope(facts).sql(self.db), list(self.baseline))
        data, failure = judge(self.baseline, counts, tolerance=self.tolerance,
                              absolute=self.absolute, where=f"database {self.db!r}")
        self.scope(facts).data.update(database=self.db, **data)
        if failure:
            raise self.error(conn, failure)
        return Plan()


def compare_counts(db: str, baseline: Mapping[str, int], *, tolerance: float = 0.0,
                   absolute: int = 0, settings: PgSettings | None = None,
                   name: str | None = None) -> CompareCountsTask:
    """Fail when a table's row count moved away from ``baseline`` beyond a tolerance.

    Args:
        baseline: table -> rows, e.g. ``snapshot_result.data["counts"]``.
        tolerance: allowed change as a fraction of the baseline (0.05 = 5 %).
        absolute: allowed change in rows; a table passes when within either.

    ``ok`` when every table is within; else ``failed`` with a table of the
    differences (a vanished table counts as one). ``Result.data`` holds the
    counts, the baseline and the differences either way.
    """
    return CompareCountsTask(db, baseline, tolerance=tolerance, absolute=absolute,
                             settings=settings, name=name)


_ANY: Any = object()


class QueryCheckTask(_CheckTask):
    """Run a read-only query and check its result. See :func:`query_check`."""

    kind = "postgres.query_check"

    def __init__(self, db: str, query: str, *, expect: Any = _ANY,
                 params: Params | None = None,
                 timeout: float = 30.0, settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.db = check_name("database", db)
        if not query.strip():
            raise ConfigError("query_check: the query is empty")
        self.query = query
        self.expect = expect
        self.params = params
        self.timeout = timeout

    def target(self) -> str:
        return f"{self.db}: {one_line(self.query, 60)}"

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        s = self.scope(facts).sql(self.db)
        with s.transaction():
            s.rows("SET TRANSACTION READ ONLY")
            s.rows("SELECT set_config('statement_timeout', %s, true)",
                   [f"{int(self.timeout * 1000)}ms"])
            rows = s.rows(self.query, self.params)
        first = rows[0][0] if rows and rows[0] else None
        self.scope(facts).data.update(database=self.db, rows=len(rows), value=first)
        what = f"query_check on database {self.db!r} ({one_line(self.query, 120)})"
        if self.expect is _ANY:
            return Plan()
        if callable(self.expect):
            if not self.expect(rows):
                raise self.error(conn, f"{what}: the result does not satisfy the "
                                       f"expectation: {one_line(repr(rows), 300)}")
        elif not rows:
            raise self.error(conn, f"{what} returned no row, expected {self.expect!r}")
        elif first != self.expect:
            raise self.error(conn, f"{what} returned {first!r}, expected {self.expect!r}")
        return Plan()


def query_check(db: str, query: str, *, expect: Any = _ANY,
                params: Params | None = None,
                timeout: float = 30.0, settings: PgSettings | None = None,
                name: str | None = None) -> QueryCheckTask:
    """Run ``query`` in database ``db`` in a READ ONLY transaction and check the result.

    Args:
        expect: the value the first column of the first row must equal
            (``query_check("app", "SELECT 1", expect=1)``), or a callable given
            all rows (list of tuples) that returns whether they are right.
            Left out: the query only has to succeed (a health check).
        params: query parameters (``%s`` / ``%(name)s`` placeholders).
        timeout: statement timeout in seconds.

    A query that writes fails (read-only transaction). ``Result.data`` holds the
    row count and the first value.
    """
    return QueryCheckTask(db, query, expect=expect, params=params, timeout=timeout,
                          settings=settings, name=name)
