"""Remove what deploys leave behind: ``invoke prune [--keep N] [--yes]``.

What goes (:func:`find`, read-only: the list is shown first):

* on each web host, releases beyond the newest ``keep`` good ones, by
  :func:`deploykit.tasks.releases.removable` with no failed release kept: never
  the ``current`` release, never one a colour link points at, never the rollback
  target (the newest good release before ``current``); failed releases go first;
* on the db host, the ``<db>_old_<time>`` (and ``<db>_undone_<time>``) databases a
  restore with swap kept;
* on the db host, backups ``<db>-*.dump`` beyond the configured retention
  (``database.backup_keep_last``/``backup_keep_days``); the pre-deploy backup of
  the newest successful deploy (what ``rollback --db`` restores) always stays.

:func:`remove` (``--yes``) takes the deploy lock on the hosts involved (all or
nothing: a running deploy is never pruned under), removes, and writes a
``prune`` entry (what was removed, what failed) in each host's history as the
lock is released.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from deploykit import journal, pg
from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, LockHeldError
from deploykit.shell import quote
from deploykit.tasks import postgres, releases
from deploykit.tasks.releases import AppReleases, CleanupTask

__all__ = ["EVENT", "PruneItem", "PruneSettings", "find", "order_releases", "remove"]

EVENT = "prune"
"""The ``event`` of the history entries written here."""


@dataclass(frozen=True)
class PruneSettings:
    """What to keep: ``keep`` good releases per web host; the database ``database`` (None:
    no database work) and its backups' retention."""

    app: str
    keep: int = 5
    database: str | None = None
    backup_keep_last: int | None = 10
    backup_keep_days: float | None = None
    lock_ttl: float = journal.DEFAULT_LOCK_TTL

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigError(f"--keep must be an integer of at least 1, not {self.keep!r}")


@dataclass(frozen=True)
class PruneItem:
    """One thing to remove: a ``release``, ``database`` or ``backup`` on ``host``."""

    host: str
    kind: str
    name: str
    detail: str = ""
    path: str = ""


@dataclass
class PrunePlan:
    """Everything :func:`find` found, and the cleanup task of each web host."""

    items: list[PruneItem] = field(default_factory=list)
    cleanups: dict[str, CleanupTask] = field(default_factory=dict)

    def on(self, host: str) -> list[PruneItem]:
        """The items of one host."""
        return [i for i in self.items if i.host == host]

    @property
    def hosts(self) -> list[str]:
        """The hosts with something to remove, in order of appearance."""
        return list(dict.fromkeys(i.host for i in self.items))


def order_releases(state: AppReleases, keep: int) -> list[releases.ReleaseInfo]:
    """The releases to remove (``removable`` with no failed one kept), failed ones first,
    then the oldest."""
    doomed = releases.removable(state, keep, keep_failed=0)
    return sorted(doomed, key=lambda r: (not r.failed, r.created, r.release_id))


def _releases(conn: Connection, s: PruneSettings, plan: PrunePlan) -> list[PruneItem]:
    task = releases.cleanup(s.app, keep=s.keep, keep_failed=0,
                            name=f"prune releases of {s.app} (keep {s.keep})")
    plan.cleanups[conn.name] = task
    state: AppReleases = task.probe(conn)["app"]
    return [PruneItem(conn.name, "release", r.release_id,
                      r.state + (f": {r.reason}" if r.failed and r.reason else "")
                      + f", created {r.created_iso}", r.path)
            for r in order_releases(state, s.keep)]


def _old_databases(conn: Connection, database: str) -> list[PruneItem]:
    pattern = re.compile(re.escape(database) + r"_(old|undone)_[A-Za-z0-9_]+")
    with pg.connect(conn, "postgres") as session:
        rows = session.execute("SELECT datname, pg_database_size(oid) FROM pg_database "
                               "WHERE starts_with(datname, %s) ORDER BY datname",
                               [database + "_"]).fetchall()
    return [PruneItem(conn.name, "database", str(name), f"{float(str(size)) / 1e6:.1f} MB")
            for name, size in rows if pattern.fullmatch(str(name))]


def _kept_backup(conn: Connection, s: PruneSettings) -> str | None:
    """The file name of the pre-deploy backup of the newest successful deploy."""
    assert s.database is not None
    records = journal.summarize_history(journal.history(conn, s.app, limit=400))
    done = [r for r in records if r.kind == "deploy" and r.result == "succeeded"]
    if not done:
        return None
    return postgres.backup_path(s.app, s.database, done[-1].id).rsplit("/", 1)[-1]


def _backups(conn: Connection, s: PruneSettings) -> list[PruneItem]:
    assert s.database is not None
    directory = postgres.backup_path(s.app, s.database, "x").rsplit("/", 1)[0]
    out = conn.run(f'echo "now $(date +%s)"; if [ -d {quote(directory)} ]; then '
                   f"find {quote(directory)} -maxdepth 1 -type f "
                   f"-name {quote(s.database + '-*.dump')} -printf 'f %T@ %s %f\\n'; fi",
                   write=False, task="prune: list backups").stdout
    now = time.time()
    entries: dict[str, tuple[float, int]] = {}
    for line in out.splitlines():
        parts = line.split(" ", 3)
        try:
            if parts[0] == "now":
                now = float(parts[1])
            elif parts[0] == "f" and len(parts) == 4:
                entries[parts[3]] = (float(parts[1]), int(parts[2]))
        except ValueError:
            continue
    kept = [k for k in [_kept_backup(conn, s)] if k]
    doomed = postgres.retention.expired([(n, m) for n, (m, _) in entries.items()],
                                keep_last=s.backup_keep_last, keep_days=s.backup_keep_days,
                                now=now, keep=kept)
    return [PruneItem(conn.name, "backup", name,
                      f"{entries[name][1] / 1e6:.1f} MB, {(now - entries[name][0]) / 3600:.1f} h"
                      " old", f"{directory}/{name}")
            for name in sorted(doomed, key=lambda n: entries[n][0])]


def find(conns: Mapping[str, Connection], web: Sequence[str], db: str | None,
         settings: PruneSettings) -> PrunePlan:
    """What would be removed (read-only), per host: ``web`` names the web hosts, ``db``
    the db host (None: no database work)."""
    plan = PrunePlan()

    def one(name: str) -> list[PruneItem]:
        conn = conns[name]
        found: list[PruneItem] = []
        if name in web:
            found += _releases(conn, settings, plan)
        if name == db and settings.database:
            found += _old_databases(conn, settings.database)
            found += _backups(conn, settings)
        return found

    names = [n for n in conns if n in web or n == db]
    with ThreadPoolExecutor(max_workers=max(1, min(10, len(names)))) as pool:
        for items in pool.map(one, names):
            plan.items += items
    return plan


def _remove_on(conn: Connection, plan: PrunePlan, settings: PruneSettings
               ) -> tuple[list[str], list[str]]:
    """Remove this host's items; ``(removed, problems)``."""
    removed: list[str] = []
    problems: list[str] = []
    items = plan.on(conn.name)
    listed = {i.name for i in items if i.kind == "release"}
    if listed:
        task = plan.cleanups[conn.name]
        state: AppReleases = task.probe(conn)["app"]
        now = {r.release_id for r in order_releases(state, settings.keep)}
        if now != listed:  # something changed since the listing: remove nothing, say so
            problems.append(f"releases changed since they were listed (now: "
                            f"{', '.join(sorted(now)) or 'none'}); run prune again")
        else:
            result = task.run(conn)
            if result.failed:
                problems.append(f"releases: {result.message}")
            else:
                removed += [f"release {n}" for n in sorted(listed)]
    for item in items:
        if item.kind == "database":
            result = postgres.database(item.name, state="absent", force=True,
                                       name=f"drop {item.name}").run(conn)
            if result.failed:
                problems.append(f"database {item.name}: {result.message}")
            else:
                removed.append(f"database {item.name}")
        elif item.kind == "backup":
            try:
                conn.run(["rm", "-f", "--", item.path, item.path + ".sha256"],
                         task="prune: remove backup")
                removed.append(f"backup {item.name}")
            except DeployError as exc:
                problems.append(f"backup {item.name}: {exc.message}")
    return removed, problems


def remove(conns: Mapping[str, Connection], plan: PrunePlan, settings: PruneSettings, *,
           op_id: str) -> dict[str, tuple[list[str], list[str]]]:
    """Remove what ``plan`` lists, under the deploy lock of every host involved, and
    record it in their histories. Returns ``host -> (removed, problems)``. Raises
    :class:`LockHeldError` (nothing removed) when a host is locked."""
    hosts = plan.hosts
    if not hosts:
        return {}
    holder = journal.LockHolder.for_this_process(op_id, settings.app)
    attempts: dict[str, journal.LockAttempt | DeployError] = {}

    def take(name: str) -> None:
        try:
            attempts[name] = journal.acquire_lock(conns[name], settings.app, holder,
                                                  ttl=settings.lock_ttl)
        except DeployError as exc:
            attempts[name] = exc

    with ThreadPoolExecutor(max_workers=min(10, len(hosts))) as pool:
        list(pool.map(take, hosts))
    taken = [n for n, a in attempts.items() if isinstance(a, journal.LockAttempt) and a.acquired]
    if len(taken) < len(hosts):
        for name in taken:
            journal.release_lock(conns[name], settings.app, holder)
        problems = [a.held_by.describe() if isinstance(a, journal.LockAttempt) and a.held_by
                    else str(a) for a in attempts.values()
                    if not (isinstance(a, journal.LockAttempt) and a.acquired)]
        raise LockHeldError("prune: nothing removed: " + "; ".join(problems))
    outcome: dict[str, tuple[list[str], list[str]]] = {}

    def work(name: str) -> None:
        conn = conns[name]
        removed: list[str] = []
        problems: list[str] = []
        try:
            removed, problems = _remove_on(conn, plan, settings)
        except DeployError as exc:
            problems.append(exc.message)
        finally:
            outcome[name] = (removed, problems)
            entry = journal.HistoryEntry(
                event=EVENT, id=op_id, app=settings.app, kind=EVENT, who=holder.who,
                host=name, time=holder.started,
                result="failed" if problems else "succeeded",
                message="; ".join([f"removed {', '.join(removed) or 'nothing'}", *problems]),
                data={"removed": removed, "keep": settings.keep})
            journal.release_lock(conn, settings.app, holder, entries=[entry])

    with ThreadPoolExecutor(max_workers=min(10, len(hosts))) as pool:
        list(pool.map(work, hosts))
    return {n: outcome[n] for n in hosts}
