"""Remove what deploys leave behind: ``invoke prune [--keep N] [--yes]``.

What goes (:func:`find`, read-only: the list is shown first):

* on each web host, releases beyond the newest ``keep`` good ones, by
  :func:`deploykit.tasks.releases.removable` with no failed release kept: never
  the ``current`` release, never one a colour link points at, never the rollback
  target (the newest good release before ``current``); failed releases go first;
* on the db host, the ``<db>_old_<time>`` (and ``<db>_undone_<time>``) databases a
  restore with swap kept, except the newest of each kind (after ``rollback --db``
  the newest ``_old_`` one is the only copy of what was written after the backup)
  and any younger than ``old_database_keep_days``
  (:func:`deploykit.tasks.postgres.retention.old_databases`);
* on the db host, backups ``<db>-*.dump`` beyond the configured retention
  (``database.backup_keep_last``/``backup_keep_days``), by the same rule as the
  deploy's own cleanup (:func:`deploykit.tasks.postgres.retention.plan`): the
  pre-deploy backup of the newest successful deploy (what ``rollback --db``
  restores) and the newest verified backup always stay; manual backups count apart.

What stays and why is listed too (:attr:`PrunePlan.kept`).

:func:`remove` (``--yes``) takes the deploy lock on the hosts involved through the
one lock API (:func:`deploykit.journal.fleet_lock`: all or nothing, a running deploy
is never pruned under, a live holder's lock is never broken), removes, and writes a
``prune`` entry (what was removed, what failed) in each host's history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from deploykit import humanize, journal, pg
from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.tasks import postgres, releases, retention
from deploykit.tasks.releases import AppReleases, CleanupTask

__all__ = ["EVENT", "PruneItem", "PruneSettings", "find", "order_releases", "remove"]

EVENT = "prune"
"""The ``event`` of the history entries written here."""


@dataclass(frozen=True)
class PruneSettings:
    """What to keep: ``keep`` good releases per web host; the database ``database`` (None:
    no database work), its backups' retention, and how long databases a restore set
    aside (``<db>_old_*``) stay beyond the newest one (``old_database_keep_days``)."""

    app: str
    keep: int = 5
    database: str | None = None
    backup_keep_last: int | None = 10
    backup_keep_days: float | None = None
    old_database_keep_days: float | None = 7.0
    lock_ttl: float = journal.DEFAULT_LOCK_TTL

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigError(f"--keep must be an integer of at least 1, not {self.keep!r}")
        if self.old_database_keep_days is not None and self.old_database_keep_days < 0:
            raise ConfigError(f"old_database_keep_days must not be negative, not "
                              f"{self.old_database_keep_days!r}")


@dataclass(frozen=True)
class PruneItem:
    """One thing to remove (or, in :attr:`PrunePlan.kept`, kept: ``detail`` says why): a
    ``release``, ``database`` or ``backup`` on ``host``."""

    host: str
    kind: str
    name: str
    detail: str = ""
    path: str = ""


@dataclass
class PrunePlan:
    """Everything :func:`find` found, what it keeps on purpose (databases and backups,
    with the reasons), and the cleanup task of each web host."""

    items: list[PruneItem] = field(default_factory=list)
    kept: list[PruneItem] = field(default_factory=list)
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


def _old_databases(conn: Connection, s: PruneSettings) -> tuple[list[PruneItem],
                                                                list[PruneItem]]:
    """The set-aside databases to drop, and those kept (with why)."""
    assert s.database is not None
    with pg.connect(conn, "postgres") as session:
        rows = session.execute("SELECT datname, pg_database_size(oid), "
                               "extract(epoch FROM now())::float8 FROM pg_database "
                               "WHERE starts_with(datname, %s) ORDER BY datname",
                               [s.database + "_"]).fetchall()
    if not rows:
        return [], []
    sizes = {str(name): f"{float(str(size)) / 1e6:.1f} MB" for name, size, _ in rows}
    rule = retention.old_databases(list(sizes), db=s.database, now=float(str(rows[0][2])),
                                   keep_days=s.old_database_keep_days)
    return ([PruneItem(conn.name, "database", n, sizes[n]) for n in rule.delete],
            [PruneItem(conn.name, "database", n, f"{sizes[n]}; {'; '.join(why)}")
             for n, why in rule.keep.items()])


def _backups(conn: Connection, s: PruneSettings) -> tuple[list[PruneItem], list[PruneItem]]:
    """The backups to remove, and those kept (with why): :func:`retention.plan`."""
    assert s.database is not None
    directory = postgres.backup_path(s.app, s.database, "x").rsplit("/", 1)[0]
    out = conn.run('echo "now $(date +%s)"\n' + retention.listing_script(directory, s.database)
                   + "\n" + retention.history_script(s.app),
                   write=False, task="prune: list backups").stdout
    lines = out.splitlines()
    now = float(lines[0].split()[1]) if lines and lines[0].startswith("now ") else 0.0
    files = {b.name: b for b in retention.parse_listing(lines)}
    rule = retention.plan(list(files.values()), retention.parse_history_lines(lines),
                          db=s.database, keep_last=s.backup_keep_last,
                          keep_days=s.backup_keep_days, now=now)

    def detail(name: str) -> str:
        b = files[name]
        return f"{humanize.size(b.size)}, {humanize.age(now - b.mtime)} old"

    return ([PruneItem(conn.name, "backup", n, detail(n), f"{directory}/{n}")
             for n in rule.delete],
            [PruneItem(conn.name, "backup", n, f"{detail(n)}; {'; '.join(why)}",
                       f"{directory}/{n}") for n, why in rule.keep.items()])


def find(conns: Mapping[str, Connection], web: Sequence[str], db: str | None,
         settings: PruneSettings) -> PrunePlan:
    """What would be removed (read-only), per host: ``web`` names the web hosts, ``db``
    the db host (None: no database work)."""
    plan = PrunePlan()

    def one(name: str) -> tuple[list[PruneItem], list[PruneItem]]:
        conn = conns[name]
        found: list[PruneItem] = []
        kept: list[PruneItem] = []
        if name in web:
            found += _releases(conn, settings, plan)
        if name == db and settings.database:
            for doomed, stays in (_old_databases(conn, settings), _backups(conn, settings)):
                found += doomed
                kept += stays
        return found, kept

    names = [n for n in conns if n in web or n == db]
    with ThreadPoolExecutor(max_workers=max(1, min(10, len(names)))) as pool:
        for items, kept in pool.map(one, names):
            plan.items += items
            plan.kept += kept
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
    outcome: dict[str, tuple[list[str], list[str]]] = {}
    # the one lock API: all or nothing, heartbeat, a live holder's lock never broken
    with journal.fleet_lock([conns[n] for n in hosts], settings.app, op_id,
                            ttl=settings.lock_ttl, kind="prune", record=False) as lock:
        who = lock.holder.who

        def work(name: str) -> None:
            conn = conns[name]
            removed: list[str] = []
            problems: list[str] = []
            try:
                removed, problems = _remove_on(conn, plan, settings)
            except DeployError as exc:
                problems.append(exc.message)
            outcome[name] = (removed, problems)
            entry = journal.HistoryEntry(
                event=EVENT, id=op_id, app=settings.app, kind=EVENT, who=who, host=name,
                time=lock.holder.started, result="failed" if problems else "succeeded",
                message="; ".join([f"removed {', '.join(removed) or 'nothing'}", *problems]),
                data={"removed": removed, "keep": settings.keep})
            journal.append_history(conn, settings.app, [entry])

        with ThreadPoolExecutor(max_workers=min(10, len(hosts))) as pool:
            list(pool.map(work, hosts))
    return {n: outcome[n] for n in hosts}
