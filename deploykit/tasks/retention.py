"""Which backups to keep: one rule for the deploy's cleanup and ``invoke prune``, for
PostgreSQL dumps (``<db>-<id>.dump``) and SQLite backups (``<name>.<id>.bak``) alike.

:func:`plan` decides, from the backup files and the deploy history, what stays
(each with its reasons) and what goes. The rule, in order of strength:

* never the **rollback backup**: the pre-deploy backup of the newest successful
  deploy (what ``rollback --db`` restores);
* never the **newest verified backup** (a ``.sha256`` sidecar: :func:`backup`
  writes it only after ``pg_restore --list`` read the dump);
* never a name the caller protects (the backup just written);
* ``keep_last`` counts deploy backups and manual backups (``<db>-manual-*``)
  **separately**: manual backups never push a deploy's backup out, nor the
  reverse;
* ``keep_days`` keeps anything younger;
* without ``keep_last`` and ``keep_days`` nothing is deleted.

The same module lists the files (:func:`listing_script`, :func:`parse_listing`)
so that the backup task and prune see the same thing.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from deploykit import journal
from deploykit.shell import quote

__all__ = ["HISTORY_LINES", "MANUAL_PREFIX", "BackupFile", "DeployOutcome", "RetentionPlan",
           "deploy_id_of", "expired", "history_script", "listing_script", "old_databases",
           "parse_history_lines", "parse_listing", "plan", "rollback_deploy"]

MANUAL_PREFIX = "manual-"
"""Deploy ids of backups taken by hand (``invoke backup``) start with this."""
HISTORY_LINES = 400
"""How many of the newest history lines the rule reads."""


class DeployOutcome(Protocol):
    """What the rule reads of a deploy record (:class:`deploykit.journal.DeployRecord`)."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def result(self) -> str | None: ...


@dataclass(frozen=True)
class BackupFile:
    """One ``<db>-<id>.dump`` file: its name, mtime (epoch seconds), size, and whether it
    has a ``.sha256`` sidecar."""

    name: str
    mtime: float
    size: int = 0
    verified: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    """The outcome of :func:`plan`: ``keep`` (name -> reasons) and ``delete`` (oldest
    first)."""

    keep: dict[str, list[str]]
    delete: list[str]

    def describe(self) -> list[str]:
        """One line per kept backup: ``name: reason; reason``."""
        return [f"{name}: {'; '.join(reasons)}" for name, reasons in self.keep.items()]


def deploy_id_of(db: str, name: str) -> str | None:
    """The deploy id in ``<db>-<id>.dump`` (None: not a backup of ``db``)."""
    match = re.fullmatch(re.escape(db) + r"-([A-Za-z0-9][A-Za-z0-9._-]*)\.dump", name)
    return match[1] if match else None


def rollback_deploy(history: Sequence[DeployOutcome]) -> str | None:
    """The id of the newest successful deploy in ``history`` (oldest first), if any."""
    done = [r.id for r in history if r.kind == "deploy" and r.result == "succeeded"]
    return done[-1] if done else None


def plan(backups: Sequence[BackupFile], history: Sequence[DeployOutcome], *, db: str,
         keep_last: int | None, keep_days: float | None, now: float,
         protect: Iterable[str] = (),
         id_of: Callable[[str], str | None] | None = None) -> RetentionPlan:
    """Decide which of ``db``'s backups stay and why, and which go.

    Args:
        backups: the files found (other databases' files are ignored).
        history: deploy records, oldest first (``journal.summarize_history``).
        keep_last: how many of the newest deploy backups, and separately of the
            newest manual backups, to keep.
        keep_days: keep every backup younger than this many days.
        now: the host's clock (epoch seconds).
        protect: names always kept (e.g. the backup just written).
        id_of: the deploy id in a file name, None for other files (default:
            PostgreSQL's ``<db>-<id>.dump``, :func:`deploy_id_of`).
    """
    def ident(name: str) -> str | None:
        return id_of(name) if id_of is not None else deploy_id_of(db, name)

    ours = [b for b in backups if ident(b.name) is not None]
    keep: dict[str, list[str]] = {}

    def mark(name: str, reason: str) -> None:
        keep.setdefault(name, []).append(reason)

    rollback_id = rollback_deploy(history)
    for b in ours:
        if rollback_id is not None and ident(b.name) == rollback_id:
            mark(b.name, f"pre-deploy backup of {rollback_id}, the newest successful deploy "
                         f"(rollback --db)")
    verified = sorted((b for b in ours if b.verified), key=lambda b: (b.mtime, b.name))
    if verified:
        mark(verified[-1].name, "newest verified backup")
    for name in protect:
        if any(b.name == name for b in ours):
            mark(name, "just written")
    if keep_last is None and keep_days is None:
        for b in ours:
            keep.setdefault(b.name, ["no retention rule set"])
        return RetentionPlan(_ordered(keep, ours), [])
    if keep_last is not None:
        for manual in (False, True):
            group = [b for b in ours
                     if str(ident(b.name)).startswith(MANUAL_PREFIX) == manual]
            newest = sorted(group, key=lambda b: (-b.mtime, b.name))[:keep_last]
            for b in newest:
                mark(b.name, f"among the {keep_last} newest {'manual' if manual else 'deploy'}"
                             f" backups")
    if keep_days is not None:
        for b in ours:
            if b.mtime >= now - keep_days * 86400:
                mark(b.name, f"younger than {keep_days:g} days")
    delete = [b.name for b in sorted(ours, key=lambda b: (b.mtime, b.name))
              if b.name not in keep]
    return RetentionPlan(_ordered(keep, ours), delete)


def retired_at(name: str) -> float | None:
    """When a ``<db>_old_<UTC stamp>`` / ``<db>_undone_<UTC stamp>`` database was retired
    (epoch seconds), from the 14 digits of its stamp (``20260101120000``,
    ``20260101T120000Z`` and a ``_2`` suffix are read); None when there is no stamp."""
    match = re.search(r"_(?:old|undone)_([0-9TZ]+)(?:_\d+)?$", name)
    digits = re.sub(r"\D", "", match[1]) if match else ""
    if len(digits) != 14:
        return None
    try:
        when = datetime.datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC).timestamp()


def old_databases(names: Sequence[str], *, db: str, now: float,
                  keep_days: float | None) -> RetentionPlan:
    """Which databases a restore kept (``<db>_old_*``) or an undone restore kept
    (``<db>_undone_*``) stay, and why; other names are ignored.

    Always kept: the newest of each kind (after ``rollback --db`` the newest
    ``<db>_old_*`` is the only copy of what was written after the backup), any
    retired less than ``keep_days`` ago, and any whose name carries no readable
    time. The rest go, oldest first.
    """
    pattern = re.compile(re.escape(db) + r"_(old|undone)_[A-Za-z0-9_]+")
    keep: dict[str, list[str]] = {}
    dated: list[tuple[float, str]] = []
    for kind in ("old", "undone"):
        group = [n for n in names if (m := pattern.fullmatch(n)) and m[1] == kind]
        timed = sorted((when, n) for n in group if (when := retired_at(n)) is not None)
        for n in group:
            if retired_at(n) is None:
                keep.setdefault(n, []).append("its name carries no time: kept")
        if timed:
            what = ("the only copy of what was written after the backup it replaced"
                    if kind == "old" else "the restored copy an undo set aside")
            keep.setdefault(timed[-1][1], []).append(f"newest {db}_{kind}_* database ({what})")
        dated += timed
    if keep_days is not None:
        for when, n in dated:
            if when >= now - keep_days * 86400:
                keep.setdefault(n, []).append(
                    f"younger than {keep_days:g} day{'' if keep_days == 1 else 's'}")
    delete = [n for _, n in sorted(dated) if n not in keep]
    return RetentionPlan(keep, delete)


def _ordered(keep: dict[str, list[str]], ours: Sequence[BackupFile]) -> dict[str, list[str]]:
    """``keep`` newest first."""
    order = {b.name: (-b.mtime, b.name) for b in ours}
    return {n: keep[n] for n in sorted(keep, key=lambda n: order.get(n, (0.0, n)))}


def expired(entries: Sequence[tuple[str, float]], *, keep_last: int | None,
            keep_days: float | None, now: float, keep: Iterable[str] = ()) -> list[str]:
    """Names of files to remove by count and age alone: those neither among the
    ``keep_last`` newest nor younger than ``keep_days`` (nor in ``keep``). Without a rule
    nothing goes. (Backups use :func:`plan`, which also protects by history.)"""
    if keep_last is None and keep_days is None:
        return []
    kept = set(keep)
    if keep_last is not None:
        newest = sorted(entries, key=lambda e: (-e[1], e[0]))
        kept.update(name for name, _ in newest[:keep_last])
    if keep_days is not None:
        kept.update(name for name, mtime in entries if mtime >= now - keep_days * 86400)
    return sorted(name for name, _ in entries if name not in kept)


def listing_script(directory: str, db: str, *, pattern: str | None = None) -> str:
    """Shell lines printing ``entry <mtime> <size> <0|1 sidecar> <name>`` for each
    ``<db>-*.dump`` (or files matching the glob ``pattern``) in ``directory``
    (nothing when it does not exist)."""
    d = quote(directory)
    glob = pattern if pattern is not None else db + "-*.dump"
    return (f"if [ -d {d} ]; then find {d} -maxdepth 1 -type f "
            f"-name {quote(glob)} -printf '%T@ %s %f\\n' | "
            "while read -r dk_m dk_s dk_n; do "
            f'if [ -f {d}/"$dk_n.sha256" ]; then dk_v=1; else dk_v=0; fi; '
            'printf "entry %s %s %s %s\\n" "$dk_m" "$dk_s" "$dk_v" "$dk_n"; done; fi')


def parse_listing(lines: Iterable[str]) -> list[BackupFile]:
    """The files :func:`listing_script` printed (other lines are ignored)."""
    found: list[BackupFile] = []
    for line in lines:
        parts = line.split(" ", 4)
        if parts[0] != "entry" or len(parts) != 5:
            continue
        try:
            found.append(BackupFile(parts[4], float(parts[1]), int(parts[2]), parts[3] == "1"))
        except ValueError:
            continue
    return found


def history_script(app: str) -> str:
    """Shell lines printing the host's newest history lines of ``app``, each prefixed
    ``history `` (nothing when there is no history)."""
    path = quote(f"{journal.state_dir(app)}/history.jsonl")
    return (f"if [ -f {path} ]; then tail -n {HISTORY_LINES} -- {path} | "
            "sed 's/^/history /'; fi")


def parse_history_lines(lines: Iterable[str]) -> list[journal.DeployRecord]:
    """The deploy records in what :func:`history_script` printed, oldest first."""
    text = "\n".join(line[len("history "):] for line in lines if line.startswith("history "))
    return journal.summarize_history(journal.parse_history(text))
