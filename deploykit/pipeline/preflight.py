"""Pre-flight: every configured read-only check, before anything changes."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

from deploykit.config import RenderedEnvCheck
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.inventory import Host
from deploykit.pipeline.project import Project
from deploykit.result import Result
from deploykit.shell import quote
from deploykit.task import Facts
from deploykit.tasks import checks, postgres
from deploykit.tasks.checks import PreflightReport

log = logging.getLogger("deploykit.pipeline.preflight")

# == pre-flight ===============================================================================


def preflight_checks(project: Project) -> dict[str, list[checks.Check]]:
    """The configured checks: ``web`` (on each web host), ``db`` (on the db host) and
    ``controller`` (once)."""
    cfg, pre = project.config, project.config.preflight
    resources = checks.resources(pre.disk_paths, min_free_mb=pre.min_disk_mb,
                                 min_memory_mb=pre.min_memory_mb, name="resources")
    web: list[checks.Check] = [resources]
    if pre.ports_listening or pre.ports_free:
        web.append(checks.ports(listening=pre.ports_listening, free=pre.ports_free,
                                name="ports"))
    db: list[checks.Check] = [resources]
    if pre.backup_max_age_hours is not None and project.database:
        db.append(checks.backup(f"{postgres.BACKUP_ROOT}/{cfg.app}",
                                max_age_hours=pre.backup_max_age_hours,
                                pattern=f"{project.database}-*.dump", name="backup"))
    controller: list[checks.Check] = []
    if pre.ci_status_url:
        url = cfg.url(pre.ci_status_url, "preflight.ci_status_url")
        assert url is not None
        controller.append(checks.ci_status(url, token=cfg.secret(pre.ci_token,
                                                                 "preflight.ci_token"),
                                           repo_dir=str(cfg.root), name="ci"))
    if pre.git_clean:
        controller.append(checks.git_clean(str(cfg.root), name="git-clean"))
    for endpoint in pre.reachable:  # from the web hosts: they are the ones that connect
        selector, _, port = endpoint.rpartition(":")
        for h in project.inventory.select(selector):
            web.append(ReachableFromHost(h.address, int(port),
                                         name=f"reachable {h.name}:{port}"))
    if pre.required_secrets:
        controller.append(RenderedEnvCheck(project.env(), pre.required_secrets,
                                           min_length=pre.min_secret_length, name="secrets"))
    return {"web": web, "db": db if project.db is not None else [], "controller": controller}


class ReachableFromHost(checks.CommandCheck):
    """A TCP connection from each target host to ``address:port`` succeeds within
    ``timeout`` (the web hosts reach the database; the controller need not)."""

    kind: ClassVar[str] = "reachable"

    def __init__(self, address: str, port: int, *, timeout: float = 3.0,
                 name: str | None = None) -> None:
        self.address, self.port = address, port
        probe = f"exec 3<>/dev/tcp/{address}/{int(port)}"
        super().__init__(f"timeout {timeout:g} bash -c {quote(probe)}", name=name)

    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def evaluate(self, host: Host | None, facts: Facts) -> checks.Verdict:
        if facts["rc"] != 0:
            why = (facts["output"].splitlines() or ["timed out"])[-1][:200]
            return checks.Verdict([f"{self.target()} is not reachable from this host: {why}"],
                                  data={"exit_code": facts["rc"]})
        return checks.Verdict([], f"{self.target()} reachable", {"exit_code": 0})


def check_skips(groups: Mapping[str, Sequence[checks.Check]], skip: Sequence[str]) -> None:
    """A ConfigError for a ``--skip-check`` name that names no check (a typo must not
    silently skip nothing)."""
    known = {c.name for cs in groups.values() for c in cs} | \
            {c.kind for cs in groups.values() for c in cs}
    unknown = sorted(set(skip) - known)
    if unknown:
        raise ConfigError(f"--skip-check: unknown check(s) {', '.join(unknown)}; checks: "
                          f"{', '.join(sorted(known))}")


def preflight(project: Project, conns: Mapping[str, Connection], *,
              skip: Sequence[str] = ()) -> PreflightReport:
    """Run every configured check (read-only); never raises for a failing check.

    ``skip`` names checks (``resources``, ``ports``, ``backup``, ``ci``, ``git-clean``,
    ``reachable``, ``secrets``, or a full name such as ``reachable db-1:5432``); an
    unknown name is a ConfigError.
    """
    groups = preflight_checks(project)
    check_skips(groups, skip)

    def skips(cs: Sequence[checks.Check]) -> list[str]:
        names = {c.name for c in cs} | {c.kind for c in cs}
        return [s for s in skip if s in names]

    started = time.monotonic()
    web = [conns[h.name] for h in project.web]
    runs = [(web, groups["web"] + groups["controller"])]
    if project.db is not None and groups["db"]:
        runs.append(([conns[project.db.name]], groups["db"]))
    results: list[Result] = []
    for targets, cs in runs:
        results += checks.run_preflight(targets, cs, skip=skips(cs)).results
    return PreflightReport(results, time.monotonic() - started)


