"""Which backups to keep: one rule for the deploy's cleanup and ``invoke prune``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def expired(entries: Sequence[tuple[str, float]], *, keep_last: int | None,
              keep_days: float | None, now: float, keep: Iterable[str] = ()) -> list[str]:
    """Names of backups to remove: those neither among the ``keep_last`` newest nor
    younger than ``keep_days`` (nor in ``keep``). Without a rule nothing goes."""
    if keep_last is None and keep_days is None:
        return []
    kept = set(keep)
    if keep_last is not None:
        newest = sorted(entries, key=lambda e: (-e[1], e[0]))
        kept.update(name for name, _ in newest[:keep_last])
    if keep_days is not None:
        kept.update(name for name, mtime in entries if mtime >= now - keep_days * 86400)
    return sorted(name for name, _ in entries if name not in kept)
