"""Row counts before and after a change, compared with a tolerance: one rule for every
database engine (PostgreSQL: :func:`deploykit.tasks.postgres.compare_counts`; SQLite:
:func:`deploykit.tasks.sqlite.compare_counts`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploykit.errors import ConfigError

__all__ = ["CountDifference", "count_differences", "judge", "render_differences",
           "validate_tolerance"]


@dataclass(frozen=True)
class CountDifference:
    """A table whose row count moved beyond the tolerance (``now`` None: it is gone)."""

    table: str
    baseline: int
    now: int | None
    allowed: int

    def to_dict(self) -> dict[str, Any]:
        """As JSON data."""
        return {"table": self.table, "baseline": self.baseline, "now": self.now,
                "allowed": self.allowed}


def count_differences(baseline: Mapping[str, int], now: Mapping[str, int], *,
                      tolerance: float = 0.0, absolute: int = 0) -> list[CountDifference]:
    """Tables whose count differs from ``baseline`` by more than
    ``max(absolute, tolerance * baseline)`` rows, or that are gone."""
    out = []
    for table, base in baseline.items():
        allowed = max(int(absolute), math.floor(tolerance * base))
        current = now.get(table)
        if current is None or abs(current - base) > allowed:
            out.append(CountDifference(table, base, current, allowed))
    return out


def render_differences(differences: Sequence[CountDifference]) -> str:
    """A plain-text table of count differences."""
    header = ("table", "baseline", "now", "difference", "allowed")
    rows = []
    for d in differences:
        if d.now is None:
            now, delta = "missing", "-"
        else:
            change = d.now - d.baseline
            pct = f" ({change / d.baseline:+.1%})" if d.baseline else ""
            now, delta = str(d.now), f"{change:+d}{pct}"
        rows.append((d.table, str(d.baseline), now, delta, f"±{d.allowed}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def validate_tolerance(tolerance: float, absolute: int) -> None:
    """Refuse a negative tolerance (ConfigError)."""
    if tolerance < 0 or absolute < 0:
        raise ConfigError("compare_counts: tolerance and absolute must not be negative")


def judge(baseline: Mapping[str, int], now: Mapping[str, int], *, tolerance: float,
          absolute: int, where: str) -> tuple[dict[str, Any], str | None]:
    """The comparison as Result data, and the failure message (None: within tolerance).

    ``where`` names the database (``database 'shop'``, ``SQLite database /srv/app.db``).
    """
    differences = count_differences(baseline, now, tolerance=tolerance, absolute=absolute)
    data = {"counts": dict(now), "baseline": dict(baseline),
            "differences": [d.to_dict() for d in differences]}
    if not differences:
        return data, None
    return data, (f"row counts in {where} differ from the baseline beyond tolerance "
                  f"({tolerance:g} of the baseline, or {absolute} rows):\n"
                  + render_differences(differences))

