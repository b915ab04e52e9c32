"""What each host holds, in detail: ``invoke details``.

Per host (read-only, a few round trips, hosts in parallel): the app's releases
with their state, the active colour and the release it serves, maintenance mode,
the services and their state (nginx and the app's programs on web hosts,
PostgreSQL and Redis on the db host), the free disk space, the newest backup
and its age (db host), and who holds the deploy lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deploykit import humanize, journal
from deploykit.connection import Connection
from deploykit.errors import DeployError
from deploykit.shell import quote
from deploykit.tasks import nginx, postgres, releases, services
from deploykit.tasks.maintenance import maintenance_status
from deploykit.tasks.releases import ReleaseInfo

__all__ = ["BackupInfo", "DiskInfo", "HostDetails", "gather", "host_details"]

PID_FILES: Mapping[str, str] = {
    "nginx": "/run/nginx.pid",
    "postgres": "/run/postgresql/*.pid /var/lib/postgresql/*/main/postmaster.pid",
    "redis": "/run/redis/*.pid",
}
"""Where each system service keeps its pid (used when the host runs no systemd)."""
ROLE_SERVICES: Mapping[str, tuple[str, ...]] = {"web": ("nginx",), "db": ("postgres", "redis")}
DISK_PATHS: Mapping[str, tuple[str, ...]] = {"web": ("/", releases.DEFAULT_ROOT),
                                             "db": ("/", postgres.BACKUP_ROOT)}


@dataclass(frozen=True)
class DiskInfo:
    """Free space of the file system holding ``path``."""

    path: str
    mount: str
    free: int
    size: int

    @property
    def percent_free(self) -> float:
        """Free space as a percentage of the file system's size."""
        return 100.0 * self.free / self.size if self.size else 0.0


@dataclass(frozen=True)
class BackupInfo:
    """The newest backup file: its path, size in bytes and age in seconds."""

    path: str
    size: int
    age: float


@dataclass
class HostDetails:
    """Everything ``invoke details`` shows about one host."""

    name: str
    role: str
    address: str
    color: str | None = None
    serves: str | None = None
    releases: list[ReleaseInfo] = field(default_factory=list)
    maintenance: bool | None = None
    services: dict[str, str] = field(default_factory=dict)
    disk: list[DiskInfo] = field(default_factory=list)
    backup: BackupInfo | None = None
    backups: int = 0
    lock: str | None = None
    error: str | None = None

    def to_data(self) -> dict[str, Any]:
        """JSON data."""
        data = dataclasses.asdict(self)
        data["releases"] = [{**dataclasses.asdict(r), "state": r.state} for r in self.releases]
        return data




def facts_script(role: str, app: str, database: str | None) -> str:
    """One read-only snippet: ``now``, ``disk`` lines (``df -Pk``), one ``service`` line per
    system service of the role, the ``backup`` lines of the db host."""
    lines = ['echo "now $(date +%s)"',
             "df -Pk -- " + " ".join(quote(p) for p in DISK_PATHS.get(role, ("/",)))
             + " 2>/dev/null | tail -n +2 | while read -r fs size used free pct mnt; do "
             'echo "disk $mnt $free $size"; done']
    for name in ROLE_SERVICES.get(role, ()):
        lines.append(
            f"if [ -d /run/systemd/system ]; then "
            f"s=$(systemctl is-active {quote(name)} 2>/dev/null || :); else s=stopped; "
            f"for f in {PID_FILES[name]}; do [ -f \"$f\" ] || continue; "
            "p=$(head -n 1 -- \"$f\"); case $p in ''|*[!0-9]*) continue ;; esac; "
            "kill -0 \"$p\" 2>/dev/null && s=running; done; fi; "
            f'echo "service {name} ${{s:-unknown}}"')
    if role == "db" and database:
        directory = quote(f"{postgres.BACKUP_ROOT}/{app}")
        lines.append(f"if [ -d {directory} ]; then find {directory} -maxdepth 1 -type f "
                     f"-name {quote(database + '-*.dump')} -printf 'backup %T@ %s %p\\n'; fi")
    return "\n".join(lines) + "\nexit 0"


def parse_facts(details: HostDetails, output: str) -> None:
    """Fill ``details`` from :func:`facts_script` output."""
    now = 0.0
    newest: tuple[float, int, str] | None = None
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        parts = rest.split()
        try:
            if word == "now":
                now = float(parts[0])
            elif word == "disk" and len(parts) == 3:
                mount = parts[0]
                if all(d.mount != mount for d in details.disk):
                    details.disk.append(DiskInfo(mount, mount, int(parts[1]) * 1024,
                                                 int(parts[2]) * 1024))
            elif word == "service" and len(parts) == 2:
                details.services[parts[0]] = parts[1]
            elif word == "backup" and len(parts) >= 3:
                details.backups += 1
                item = (float(parts[0]), int(parts[1]), " ".join(parts[2:]))
                if newest is None or item[0] > newest[0]:
                    newest = item
        except (ValueError, IndexError):
            continue
    if newest is not None:
        details.backup = BackupInfo(newest[2], newest[1], max(0.0, now - newest[0]))


def host_details(conn: Connection, *, role: str, app: str, database: str | None = None,
                 colors: Sequence[str] = ("blue", "green"), lock_ttl: float = 3600.0
                 ) -> HostDetails:
    """Read one host's details (read-only); a failure to read is in ``error``."""
    d = HostDetails(conn.name, role, conn.host.address)
    try:
        out = conn.run(facts_script(role, app, database), write=False, check=False,
                       task="details").stdout
        parse_facts(d, out)
        if role == "web":
            d.color = nginx.active_color(conn, app)
            d.releases = releases.list_releases(conn, app)
            live = next((r for r in d.releases if d.color and d.color in r.links), None)
            d.serves = live.release_id if live is not None else None
            d.maintenance = maintenance_status(conn, app).on
            for color in colors:
                program = f"{app}-{color}"
                d.services[program] = services.status(conn, program).state.lower()
        info = journal.lock_status(conn, app, ttl=lock_ttl)
        d.lock = info.describe() if info is not None else None
    except DeployError as exc:
        d.error = exc.message
    return d


def gather(conns: Mapping[str, Connection], roles: Mapping[str, str], *, app: str,
           database: str | None = None, colors: Sequence[str] = ("blue", "green"),
           lock_ttl: float = 3600.0) -> list[HostDetails]:
    """:func:`host_details` of every connection's host, in parallel, in ``conns`` order;
    ``roles`` maps host names to ``web`` or ``db``."""
    items = list(conns.values())
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(10, len(items))) as pool:
        return list(pool.map(lambda c: host_details(
            c, role=roles.get(c.name, "web"), app=app, database=database, colors=colors,
            lock_ttl=lock_ttl), items))


def describe(d: HostDetails) -> list[str]:
    """The lines ``invoke details`` prints for one host (after its title)."""
    if d.error:
        return [f"ERROR: {d.error}"]
    lines = []
    if d.role == "web":
        lines.append(f"colour:      {d.color or '-'}"
                     + (f", serves release {d.serves}" if d.serves else ""))
        lines.append(f"maintenance: {'ON' if d.maintenance else 'off'}")
        if d.releases:
            lines.append("releases:")
            for r in d.releases:
                links = f" [{', '.join(r.links)}]" if r.links else ""
                why = f": {r.reason}" if r.failed and r.reason else ""
                lines.append(f"   {r.release_id:<20} {r.state:<10} {r.created_iso}{links}{why}")
        else:
            lines.append("releases:    none")
    lines.append("services:    " + (", ".join(f"{k} {v}" for k, v in d.services.items())
                                    or "-"))
    lines.append("disk free:   " + (", ".join(
        f"{x.mount} {humanize.size(x.free)} ({x.percent_free:.0f}%)" for x in d.disk) or "-"))
    if d.role == "db":
        lines.append("last backup: " + (
            f"{d.backup.path} ({humanize.size(d.backup.size)}), {humanize.age(d.backup.age)} old; "
            f"{d.backups} backup(s)" if d.backup else "none"))
    lines.append(f"lock:        {d.lock or 'free'}")
    return lines
