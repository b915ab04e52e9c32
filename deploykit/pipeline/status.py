"""Read-only views of the fleet: status, history, verify."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from deploykit import journal
from deploykit import verify as suites
from deploykit.connection import Connection
from deploykit.errors import DeployError
from deploykit.inventory import Host
from deploykit.pipeline.events import Display
from deploykit.pipeline.fleet import connected, fleet_views, host_view, in_parallel, reachable
from deploykit.pipeline.project import Project
from deploykit.tasks import http, services
from deploykit.tasks.maintenance import maintenance_status
from deploykit.tunnel import Tunnel

log = logging.getLogger("deploykit.pipeline.status")

# == status and history =======================================================================


@dataclass
class HostStatus:
    """One host as ``invoke status`` shows it."""

    name: str
    role: str
    color: str | None = None
    release: str | None = None
    version: str | None = None
    current: str | None = None
    services: dict[str, str] = field(default_factory=dict)
    maintenance: bool | None = None  # None: not a web host, or unknown
    lock: str | None = None
    last: journal.DeployRecord | None = None
    error: str | None = None

    def to_data(self) -> dict[str, Any]:
        """JSON data."""
        data = dataclasses.asdict(self)
        data["last"] = dataclasses.asdict(self.last) if self.last is not None else None
        return data


def _host_status(project: Project, conn: Connection) -> HostStatus:
    cfg = project.config
    web = conn.host in project.web
    status = HostStatus(conn.name, "web" if web else "db")
    try:
        if web:
            view = host_view(conn, cfg.app)
            status.color = view.color
            live = view.live
            status.release = live.release_id if live else None
            status.version = view.version
            current = view.linked("current")
            status.current = current.release_id if current else None
            for color in cfg.ports:
                program = f"{cfg.app}-{color}"
                status.services[program] = services.status(conn, program).state
            status.maintenance = maintenance_status(conn, cfg.app).on
        info = journal.lock_status(conn, cfg.app, ttl=cfg.lock_ttl)
        status.lock = info.describe() if info is not None else None
        records = journal.summarize_history(journal.history(conn, cfg.app, limit=40))
        status.last = records[-1] if records else None
    except DeployError as exc:
        status.error = str(exc)
    return status


def fleet_status(project: Project) -> list[HostStatus]:
    """Every host's colour, releases, programs, lock and last deploy (read-only); a host
    that cannot be reached is a row with its ``error`` (``unreachable: ...``)."""
    with reachable(project.hosts, project.known_secrets()) as (conns, down):
        def one(h: Host) -> HostStatus:
            if h.name in down:
                return HostStatus(h.name, "web" if h in project.web else "db",
                                  error=f"unreachable: {down[h.name]}")
            return _host_status(project, conns[h.name])

        return in_parallel(project.hosts, one)


def history_records(project: Project, limit: int = 20) -> list[dict[str, Any]]:
    """The last ``limit`` deploys, rollbacks and lock events over every host, merged by
    id (oldest first); each record lists its hosts and their results."""
    with connected(project.hosts, project.known_secrets()) as conns:
        per_host = in_parallel(project.hosts, lambda h: journal.history(
            conns[h.name], project.app, limit=limit * 4 + 8))
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for entries in per_host:
        for rec in journal.summarize_history(entries):
            row = merged.setdefault((rec.id, rec.kind), {
                "id": rec.id, "kind": rec.kind, "who": rec.who, "started": rec.started,
                "version_from": {}, "version_to": rec.version_to, "strategy": rec.strategy,
                "results": {}, "duration": rec.duration, "message": rec.message})
            row["results"][rec.host] = rec.result or "running or crashed"
            if rec.version_from:
                row["version_from"][rec.host] = rec.version_from
            row["duration"] = max(row["duration"] or 0, rec.duration or 0) or None
            row["message"] = row["message"] or rec.message
        for e in entries:
            if e.event in ("lock", "unlock", "lock_broken", "maintenance", "prune"):
                row = merged.setdefault((e.id, e.event), {
                    "id": e.id, "kind": e.event, "who": e.who, "started": e.time,
                    "version_from": {}, "version_to": None, "strategy": None, "results": {},
                    "duration": None, "message": e.message})
                row["results"][e.host] = e.result or e.event
    rows = sorted(merged.values(), key=lambda r: (r["started"], r["id"]))
    for row in rows:
        results = set(row["results"].values())
        row["result"] = results.pop() if len(results) == 1 else "mixed"
    return rows[-limit:]


def _get(conn: Connection, path: str) -> http.Response:
    """``GET http://<host>/path`` through nginx: from the controller, or through an SSH
    port forward when the host is reached through a jump host (nothing else reaches it)."""
    address = conn.host.address
    if not conn.needs_proxy:
        return http.request(f"http://{address}{path}")
    with Tunnel(conn, address, 80) as port:
        return http.request(f"http://127.0.0.1:{port}{path}", headers={"Host": address})


def verify_fleet(project: Project, out: Display) -> bool:
    """``invoke verify``: health and version of every web host, through nginx."""
    cfg = project.config
    with connected(project.web, project.known_secrets()) as conns:
        views = fleet_views(conns, project.web, cfg.app)
        answers = {h.name: (_get(conns[h.name], cfg.health_path),
                            _get(conns[h.name], cfg.version_path)) for h in project.web}
    good = True
    for h in project.web:
        expected = views[h.name].version
        health, version = answers[h.name]
        problems = []
        try:
            if health.status != 200 or health.json().get("status") != "ok":
                problems.append(f"health: {health.describe()}")
        except ValueError:
            problems.append(f"health: {health.describe()}")
        try:
            got = version.json().get("version") if version.status == 200 else None
        except ValueError:
            got = None
        if got is None:
            problems.append(f"version: {version.describe()}")
        elif got != expected:
            problems.append(f"version: serves {got}, the active colour holds {expected}")
        good = good and not problems
        text = "; ".join(problems) or f"healthy, {got} ({health.elapsed * 1000:.0f} ms)"
        out.line(f"   {h.name:<8} {'ok' if not problems else 'FAILED':<7} {text}",
                 style="green" if not problems else "bold red")
    return good


def verify_suite(project: Project, suite: str, *, marker: str | None = None) -> Any:
    """``invoke verify --suite``: the testinfra ``suite`` on the web hosts, in parallel
    (bounded); JUnit XML, JSON results and the run report in the runs directory. Returns
    the suite's result (``.ok``, ``.table()``, ``.junit_path``, ``.json_path``)."""
    run_id = f"verify-{journal.new_deploy_id(project.config.root)}"
    return suites.verify_hosts(project.web, suite, marker=marker,
                               context=suites.DeployContext(app=project.app),
                               report_dir=project.config.runs, run_id=run_id)
