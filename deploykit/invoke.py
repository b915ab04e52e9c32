"""The deploy pipeline as invoke tasks: deploy, rollback, status, history, backup, ...

Add the tasks to a project's ``tasks.py`` (they read ``deploykit.yml``, see
:mod:`deploykit.config`; ``$DEPLOYKIT_CONFIG`` or the invoke setting
``deploykit.config`` names another file)::

    from invoke.collection import Collection
    from deploykit.invoke import add_tasks

    ns = Collection()
    add_tasks(ns)          # invoke deploy, rollback, status, history, backup, restore, ...

A deploy (:func:`deploy`, also usable from Python) goes, in order: build the
artifact (unless already built), a new deploy id, one SSH connection per host,
**pre-flight** (every check, each failure listed; ``--skip-check`` is explicit
and recorded), the **fleet lock** on the web hosts and the db host (with the
``start`` history entry), the ``start`` notification, a **backup** of the
app's database (its name holds the deploy id), the **strategy** (blue/green:
database, prepare, switch, verify, finish), the journal's ``end`` entry
(``succeeded``, ``failed``, ``rolled_back`` or ``aborted``), the lock released,
the final notification (never blocking), the run report and log in
``.deploykit/runs/``, and a summary. A failure exits non-zero with one
``error:`` line.

**Interrupts.** During a deploy, SIGINT (Ctrl-C) or SIGTERM asks it to stop:
the running phase finishes (with its own undo if it fails), no further phase
starts; a second signal stops at the next step of every host. Either way
traffic is put back on the colour that served before the deploy (when the
switch already happened), the lock is released, the history says
``aborted`` and the exit code is 130.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json as _json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import psycopg
import yaml
from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task as InvokeTask
from invoke.tasks import task
from rich.console import Console
from rich.table import Table

from deploykit import artifacts, journal, pg, retry
from deploykit import verify as suites
from deploykit.artifacts import Artifact
from deploykit.cli import reports_errors
from deploykit.config import (
    AppEnv,
    DeployConfig,
    RenderedEnvCheck,
    describe_keys,
    effective_config,
    load_config,
)
from deploykit.config import render_env as _render_env
from deploykit.connection import Connection, connect_all
from deploykit.errors import ConfigError, ConnectError, DeployError, LockHeldError, TaskError
from deploykit.hooks import HookContext, HookError, Hooks, after_points
from deploykit.inventory import Host, Inventory
from deploykit.pg import PgSettings
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Runner, Step, step
from deploykit.secrets import Secret, redact
from deploykit.strategies import bluegreen
from deploykit.strategies.bluegreen import BlueGreen
from deploykit.task import Task
from deploykit.tasks import checks, http, migrations, nginx, notify, postgres, releases, services
from deploykit.tasks.checks import CONTROLLER, PreflightReport
from deploykit.tasks.maintenance import maintenance_status
from deploykit.tasks.releases import AppReleases, ReleaseInfo

__all__ = [
    "CONFIG_ENV",
    "DeployOptions",
    "DeploySummary",
    "Output",
    "Project",
    "add_tasks",
    "deploy",
    "deploy_collection",
    "fleet_status",
    "history_records",
    "preflight",
    "rollback",
]

log = logging.getLogger("deploykit.invoke")

CONFIG_ENV = "DEPLOYKIT_CONFIG"
"""Environment variable naming the deploykit.yml to use (default: ./deploykit.yml)."""
LOG_LEVEL_ENV = "DEPLOYKIT_LOG_LEVEL"
"""``debug`` shows every log record (every remote command) on stderr and in the run log."""
_LOGGED_SECRETS: set[Secret] = set()
"""Every secret an :class:`Output` knows: redacted from log lines on stderr too."""
STRATEGIES = ("bluegreen", "rolling", "canary")
EXIT_ABORTED = 130
_T = TypeVar("_T")


# == output ===================================================================================


class Output:
    """What the commands print: plain lines (coloured on a terminal), secrets redacted.

    Every line also goes to the ``deploykit.invoke`` logger (hence to an open
    run log). Safe to call from the runner's worker threads.
    """

    def __init__(self, console: Console | None = None, secrets: Sequence[Secret] = ()) -> None:
        self.console = console or Console(soft_wrap=True, highlight=False,
                                          width=None if sys.stdout.isatty() else 120)
        self.secrets: list[Secret] = list(secrets)
        self._lock = threading.Lock()
        _LOGGED_SECRETS.update(self.secrets)

    def add_secrets(self, secrets: Sequence[Secret]) -> None:
        """Redact these values too from now on."""
        self.secrets.extend(secrets)
        _LOGGED_SECRETS.update(secrets)

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print one line (redacted), and log it."""
        clean = redact(text, self.secrets)
        if clean.strip():
            log.info("%s", clean.strip())
        with self._lock:
            self.console.print(clean, style=style, markup=False, highlight=False)
            self.console.file.flush()

    def title(self, text: str) -> None:
        """A section title."""
        self.line()
        self.line(f"== {text}", style="bold")

    def table(self, table: Table) -> None:
        """Print a rich table."""
        with self._lock:
            self.console.print(table)


_STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "skipped": "cyan"}


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


# == interrupts ===============================================================================


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by SIGINT or SIGTERM (see :class:`StopSignals`)."""


class StopSignals:
    """While active, SIGINT/SIGTERM ask the run to stop instead of killing it.

    The first signal sets :attr:`requested`: :meth:`checkpoint` (called between
    phases) then raises :class:`Interrupted`. A second signal raises at once in
    the main thread, and :meth:`checkpoint` with ``hard_only`` (called before
    every step) raises too. While :attr:`cleaning`, signals only print a note.
    Installed only in the main thread (signal handlers live there).
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.hard = False
        self.cleaning = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.cleaning:
            sys.stderr.write(f"\n{name}: cleaning up (traffic, lock, journal); please wait\n")
            return
        if self.requested is None:
            self.requested = name
            sys.stderr.write(f"\n{name}: stopping after the running phase; traffic will stay "
                             f"on the last good colour. {name} again stops at the next step.\n")
            return
        self.hard = True
        raise Interrupted(name)

    def checkpoint(self, *, hard_only: bool = False) -> None:
        """Raise :class:`Interrupted` when a stop was asked for (and not cleaning up)."""
        if self.cleaning:
            return
        if self.hard or (self.requested and not hard_only):
            raise Interrupted(self.requested or "interrupt")


# == showing runs =============================================================================


SWITCH_PHASE = "switch traffic and verify it"
"""The blue/green phase that moves traffic (pre_switch and post_switch hooks run around it)."""


def _phase_title(steps: Sequence[str]) -> str:
    """A name for a blue/green phase from its step names (presentation only)."""
    text = " | ".join(steps)
    for needle, title in (("postgres.database", "database: create, check, migrate"),
                          ("health gate:", "prepare the idle colour"),
                          ("verify:", SWITCH_PHASE),
                          ("releases.cleanup", "finish: current release, old releases pruned"),
                          ("releases.mark", "mark the release failed, stop its colour"),
                          ("nginx: traffic to", "re-assert the live colour"),
                          ("nginx.switch", "plan (check mode)")):
        if needle in text:
            return title
    if all(s.startswith("stop ") for s in steps):
        return "stop the old colour"
    return steps[0] if steps else "run"


class PhaseReporter:
    """A :class:`~deploykit.report.Reporter` for multi-phase runs: a title per phase,
    one line per finished step, the undo lines; no per-phase recap. It is also
    where a stop asked for by :class:`StopSignals` takes effect."""

    def __init__(self, out: Output, signals: StopSignals | None = None) -> None:
        self.out = out
        self.signals = signals
        self.title: str | None = None
        self.phase = ""
        self._width = 6
        self._check = False
        self.on_phase: Callable[[str, str, RunReport | None], None] | None = None
        """Called with ``("start", title, None)`` as a phase starts and ``("end", title,
        report)`` as it ends (hooks at the switch); may raise to stop the run."""

    def run_started(self, hosts: Sequence[str], steps: Sequence[str], check: bool) -> None:
        """Stop here when asked to (a phase boundary); else print the phase's title."""
        if self.signals is not None:
            self.signals.checkpoint()
        self.phase = self.title or _phase_title(steps)
        self.title = None
        self._check = check
        self._width = max([len(h) for h in hosts] + [6])
        self.out.line(f"-- {self.phase} ({', '.join(hosts)})", style="bold")
        if self.on_phase is not None:
            self.on_phase("start", self.phase, None)

    def step_started(self, host: str, step: str) -> None:
        """Stop here after a second interrupt."""
        if self.signals is not None:
            self.signals.checkpoint(hard_only=True)

    def step_finished(self, result: Result) -> None:
        """``  web-1   changed  releases.install sampleapp v2  7.1 s`` (+ message or diff)."""
        status = result.status.value
        self.out.line(f"   {result.host:<{self._width}}  {status:<7}  {result.task}  "
                      f"{result.duration:.1f} s", style=_STYLE.get(status))
        if result.status in (Status.FAILED, Status.SKIPPED) and result.message:
            for text in _short(result.message, 1200).splitlines():
                self.out.line(f"      {text}")
        elif self._check and result.changed and result.diff:
            for text in result.diff.splitlines()[:40]:
                self.out.line(f"      {text}")

    def host_failed(self, host: str, message: str) -> None:
        """``  web-1   unreachable  message``."""
        self.out.line(f"   {host:<{self._width}}  unreachable  {message}", style="bold red")

    def run_finished(self, report: RunReport) -> None:
        """What was undone, if anything."""
        for name, host in report.hosts.items():
            for item in host.undone:
                self.out.line(f"   {name:<{self._width}}  undone   {item}", style="yellow")
            for item in host.undo_failed:
                self.out.line(f"   {name:<{self._width}}  NOT undone  {item}", style="bold red")
        if self.on_phase is not None:
            self.on_phase("end", self.phase, report)


# == the project ==============================================================================


def config_path(c: Context | None = None) -> Path:
    """``$DEPLOYKIT_CONFIG``, else the invoke setting ``deploykit.config``, else
    ``deploykit.yml`` in the current directory."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    if c is not None:
        section = c.config.get("deploykit") or {}
        if isinstance(section, Mapping) and section.get("config"):
            return Path(str(section["config"]))
    return Path("deploykit.yml")


@dataclass
class Project:
    """The configuration, its inventory and the hosts a command acts on."""

    config: DeployConfig
    inventory: Inventory
    web: list[Host]
    db: Host | None
    _env: AppEnv | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str] = "deploykit.yml", *, host: str | None = None,
             group: str | None = None) -> Project:
        """Load ``deploykit.yml`` and its inventory; ``host``/``group`` narrow the web hosts
        (they must be among the configured ones)."""
        config = load_config(path)
        inventory = Inventory.load(config.inventory)
        web = inventory.select(config.web)
        if host and group:
            raise ConfigError("give --host or --group, not both")
        chosen = host or group
        if chosen:
            picked = inventory.select(chosen)
            strangers = [h.name for h in picked if h not in web]
            if strangers:
                raise ConfigError(f"{', '.join(strangers)}: not among the web hosts of "
                                  f"{config.app} (web: {config.web} = "
                                  f"{', '.join(h.name for h in web)})")
            web = picked
        db = None
        if config.db:
            found = inventory.select(config.db)
            if len(found) != 1:
                raise ConfigError(f"db: {config.db!r} must select exactly one host, it selects "
                                  f"{', '.join(h.name for h in found)}")
            db = found[0]
        return cls(config, inventory, web, db)

    @property
    def app(self) -> str:
        """The app's name."""
        return self.config.app

    @property
    def hosts(self) -> list[Host]:
        """Every host a deploy locks: the web hosts, then the db host."""
        return self.web + ([self.db] if self.db is not None and self.db not in self.web else [])

    @property
    def database(self) -> str | None:
        """The app's database name, when it has one on a db host."""
        return self.config.database.name if self.db is not None else None

    def env(self) -> AppEnv:
        """The rendered .env (references resolved once)."""
        if self._env is None:
            self._env = _render_env(self.config, self.db)
        return self._env

    def secrets(self) -> list[Secret]:
        """Every secret value of the project: the .env's (the db password among them),
        host passwords (a ConfigError when a reference cannot be resolved)."""
        env = self.env()
        return [*env.secrets, env.text, *(h.password for h in self.hosts if h.password)]

    def known_secrets(self) -> list[Secret]:
        """The secrets that can be resolved now, for read-only commands (which must work
        without, say, ``${env:...}`` variables set): :meth:`secrets` when the .env
        renders, else the inventory's (host passwords, the database password)."""
        try:
            return self.secrets()
        except ConfigError:
            pass
        found = [h.password for h in self.hosts if h.password is not None]
        if self.db is not None:
            password = PgSettings.from_host(self.db).password
            if password is not None:
                found += [password, Secret(urllib.parse.quote(password.reveal(), safe=""))]
        return found

    def plan(self, artifact: Artifact, *, database: bool = True) -> BlueGreen:
        """The blue/green plan for ``artifact`` with the configured settings."""
        c = self.config
        return BlueGreen(
            c.app, artifact, self.env().text, database=self.database if database else None,
            ports=c.ports, command=tuple(c.command), app_user=c.app_user,
            server_name=c.server_name, health_path=c.health_path, version_path=c.version_path,
            health_retries=c.health_retries, health_interval=c.health_interval,
            latency_budget_ms=c.latency_budget_ms, verify_requests=c.verify_requests,
            grace_seconds=c.grace_seconds, keep_releases=c.keep_releases,
            verify_suite=str(c.verify_suite) if c.verify_suite else None,
            verify_report_dir=str(c.runs))

    def notifier(self) -> notify.Notifier | None:
        """The configured webhooks, or None."""
        n = self.config.notify
        events: Any = tuple(n.events)
        hooks: list[notify.Webhook] = []
        url = self.config.url(n.webhook_url, "notify.webhook_url")
        if url is not None:
            hooks.append(notify.webhook(url, events=events))
        slack = self.config.secret(n.slack_webhook_url, "notify.slack_webhook_url")
        if slack is not None:
            hooks.append(notify.slack(slack, events=events))
        return notify.Notifier(hooks, timeout=n.timeout, secrets=self.secrets()) if hooks \
            else None


@contextmanager
def connected(hosts: Sequence[Host], secrets: Sequence[Secret] = (),
              report: RunReport | None = None) -> Iterator[dict[str, Connection]]:
    """One open connection per host (in parallel), closed at the end; a host that cannot
    be reached is a :class:`ConnectError` naming every such host (each marked
    unreachable in ``report``, when given)."""
    opened = connect_all(hosts)
    conns = {n: c for n, c in opened.items() if isinstance(c, Connection)}
    try:
        failed = [f"{n}: {e}" for n, e in opened.items() if isinstance(e, ConnectError)]
        for n, e in opened.items():
            if report is not None and isinstance(e, ConnectError):
                report.mark_unreachable(n, str(e))
        if failed:
            raise ConnectError("cannot reach " + "; ".join(failed))
        for conn in conns.values():
            conn.secrets.update(secrets)
        yield conns
    finally:
        for conn in conns.values():
            conn.close()


def _parallel(items: Sequence[Any], work: Callable[[Any], _T]) -> list[_T]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(10, len(items))) as pool:
        return list(pool.map(work, items))


def _who() -> str:
    """``user@controller`` as the journal writes it in lock holders."""
    return journal.LockHolder.for_this_process("x", "x").who


# == what the hosts run =======================================================================


@dataclass
class HostView:
    """What one host runs: the active colour and the releases (read-only)."""

    name: str
    color: str | None
    releases: list[ReleaseInfo]

    def linked(self, link: str) -> ReleaseInfo | None:
        """The release ``link`` (``current``, ``blue``, ``green``) points at."""
        return next((r for r in self.releases if link in r.links), None)

    @property
    def live(self) -> ReleaseInfo | None:
        """The release the active colour serves."""
        return self.linked(self.color) if self.color else None

    @property
    def version(self) -> str | None:
        """The version the host serves."""
        live = self.live
        return live.version if live is not None else None


def host_view(conn: Connection, app: str) -> HostView:
    """Two read-only round trips: the active colour and the releases."""
    return HostView(conn.name, nginx.active_color(conn, app), releases.list_releases(conn, app))


def fleet_views(conns: Mapping[str, Connection], hosts: Sequence[Host],
                app: str) -> dict[str, HostView]:
    """:func:`host_view` of every host, in parallel."""
    views = _parallel(list(hosts), lambda h: host_view(conns[h.name], app))
    return {v.name: v for v in views}


def common_color(views: Mapping[str, HostView]) -> str | None:
    """The colour every host serves (None when none serves or they differ)."""
    colors = {v.color for v in views.values()}
    return colors.pop() if len(colors) == 1 else None


# == building the artifact ====================================================================


def ensure_artifact(config: DeployConfig, version: str, out: Output | None = None) -> Artifact:
    """``<artifacts>/<app>-<version>.tar.gz``: the one already built, else built now from
    ``source``."""
    path = config.artifacts / f"{config.app}-{artifacts.check_name('version', version)}.tar.gz"
    if path.exists():
        return Artifact.from_file(path, app=config.app, version=version)
    started = time.monotonic()
    built = artifacts.build(config.source, app=config.app, version=version,
                            out_dir=config.artifacts, wheelhouse=config.wheelhouse)
    if out is not None:
        out.line(f"built {built.path.name} ({built.size / 1e6:.1f} MB, sha256 "
                 f"{built.sha256[:12]}) in {time.monotonic() - started:.1f} s")
    return built


def installed_artifact(config: DeployConfig, release: ReleaseInfo) -> Artifact:
    """An already installed release as an artifact (install is then a no-op: nothing is
    uploaded, the SHA-256 matches the release's record)."""
    if not release.good or release.sha256 is None or release.version is None:
        raise ConfigError(f"release {release.release_id} is not a complete, good release")
    if release.version != release.release_id:
        raise ConfigError(f"release {release.release_id} holds version {release.version}: "
                          f"only releases named after their version can be switched to")
    path = config.artifacts / f"{config.app}-{release.version}.tar.gz"
    return Artifact(config.app, release.version, path, release.sha256, 0)


def check_strategy(name: str) -> str:
    """``bluegreen``; the others are a ConfigError saying what is missing."""
    if name == "bluegreen":
        return name
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}: one of {', '.join(STRATEGIES)}")
    if importlib.util.find_spec(f"deploykit.strategies.{name}") is None:
        raise ConfigError(f"strategy {name!r} is not available yet (deploykit/strategies/ has "
                          f"bluegreen only); use --strategy bluegreen")
    raise ConfigError(f"strategy {name!r} exists (deploykit/strategies/{name}.py) but invoke "
                      f"deploy drives bluegreen only so far; use --strategy bluegreen")


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
    for endpoint in pre.reachable:
        selector, _, port = endpoint.rpartition(":")
        for h in project.inventory.select(selector):
            controller.append(checks.reachable(int(port), address=h.address,
                                               name=f"reachable {h.name}:{port}"))
    if pre.required_secrets:
        controller.append(RenderedEnvCheck(project.env(), pre.required_secrets,
                                           min_length=pre.min_secret_length, name="secrets"))
    return {"web": web, "db": db if project.db is not None else [], "controller": controller}


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


def show_preflight(out: Output, report: PreflightReport) -> None:
    """One line per check that passed (or was skipped) everywhere, naming its hosts; one
    line per host where a check failed, with why; then the summary."""
    by_check: dict[str, list[Result]] = {}
    for r in report.results:
        by_check.setdefault(r.task, []).append(r)
    for name, results in by_check.items():
        for status in (Status.OK, Status.SKIPPED):
            hosts = [r.host for r in results if r.status is status]
            if hosts:
                why = results[0].message if len(results) == 1 else ""
                if status is Status.SKIPPED:
                    why = "on request"
                where = "" if hosts == [CONTROLLER] else f" ({', '.join(hosts)})"
                out.line(f"   {status.value:<7}  {name}{where}"
                         + (f": {_short(why, 160)}" if why else ""),
                         style=_STYLE.get(status.value))
        for r in results:
            if r.failed:
                where = "" if r.host == CONTROLLER else f" ({r.host})"
                out.line(f"   failed   {name}{where}: {_short(r.message)}",
                         style=_STYLE["failed"])
    out.line(f"   {report.summary()}")


# == notifications ============================================================================


def _notify(project: Project, out: Output, report: RunReport, event: notify.DeployEvent
            ) -> list[notify.NotifyResult]:
    """Send ``event`` (never raises, bounded by the configured timeout); the results go
    into the run report and failures are printed as warnings."""
    notifier = project.notifier()
    if notifier is None:
        return []
    sent = notifier.send(event)
    for outcome in sent:
        report.add(outcome.to_result())
        if not outcome.ok:
            out.line(f"warning: {outcome.target} notification ({event.event}) not delivered: "
                     f"{outcome.message}", style="yellow")
    return sent


# == deploy ===================================================================================


@dataclass
class DeployOptions:
    """What ``invoke deploy`` was asked for."""

    version: str | None = None
    strategy: str | None = None
    check: bool = False
    skip_checks: Sequence[str] = ()
    break_lock: bool = False
    json_path: str | None = None
    lock_wait: float = 0.0
    """Seconds to wait for a held lock (0: fail at once)."""


@dataclass
class DeploySummary:
    """What a deploy (or rollback) did, as told at the end."""

    deploy_id: str
    kind: str
    result: str  # succeeded | failed | rolled_back | aborted | checked
    version: str | None
    message: str
    color: str | None = None
    previous: str | None = None
    hosts: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    report_path: Path | None = None
    log_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when it succeeded (or only checked)."""
        return self.result in ("succeeded", "checked")

    def to_data(self) -> dict[str, Any]:
        """For the run report (the ``(controller)`` result's data)."""
        return {"kind": self.kind, "result": self.result, "version": self.version,
                "color": self.color, "previous": self.previous, "hosts": self.hosts,
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "notes": self.notes}


RESULT_OF: dict[str, journal.DeployResult] = {
    "deployed": "succeeded", "unchanged": "succeeded", "failed": "failed",
    "rolled_back": "rolled_back"}
JOURNAL_RESULT: dict[str, journal.DeployResult] = {
    "succeeded": "succeeded", "failed": "failed", "rolled_back": "rolled_back",
    "aborted": "aborted", "checked": "succeeded"}
EVENT_OF: dict[str, notify.Event] = {
    "succeeded": "success", "failed": "failure", "rolled_back": "rollback",
    "aborted": "failure"}


class _Run:
    """The shared frame of deploy and rollback: output, report, run files, signals."""

    def __init__(self, project: Project, out: Output, kind: str, check: bool = False,
                 secrets: Sequence[Secret] | None = None) -> None:
        self.project = project
        self.out = out
        self.kind = kind
        self.started = time.monotonic()
        self.deploy_id = journal.new_deploy_id(project.config.root)
        if kind != "deploy":
            self.deploy_id = f"{self.deploy_id}-{kind}"
        self.files = journal.run_files(self.deploy_id, project.config.runs)
        self.secrets = list(secrets) if secrets is not None else project.secrets()
        out.add_secrets(self.secrets)
        self.report = RunReport(run_id=self.deploy_id, check=check, secrets=list(self.secrets))
        self.signals = StopSignals()
        self.reporter = PhaseReporter(out, self.signals)
        self.notes: list[str] = []
        self.version: str | None = None
        cfg = project.config
        self.hooks = Hooks(cfg.hooks_dir, cfg.root, cfg.hook_timeout, echo=out.line,
                           secrets=self.secrets, record=self.report.add,
                           enabled=kind in ("deploy", "rollback") and not check)
        self.reporter.on_phase = self._at_phase
        if self.deploy_id == journal.outer_deploy_id():  # started by a hook, same second
            self.deploy_id += "-nested"
            self.files = journal.run_files(self.deploy_id, project.config.runs)
            self.report.run_id = self.deploy_id

    def hook(self, point: str, summary: DeploySummary | None = None) -> list[Result]:
        """Run the hooks of ``point`` with this run's context (see :mod:`deploykit.hooks`)."""
        return self.hooks.run(HookContext(
            point, self.deploy_id, self.project.app, kind=self.kind, version=self.version,
            hosts=tuple(h.name for h in self.project.web),
            result=summary.result if summary else None,
            message=redact(summary.message, self.secrets) if summary else "",
            config=self.project.config.path))

    def _at_phase(self, event: str, title: str, report: RunReport | None) -> None:
        if title != SWITCH_PHASE or self.signals.cleaning:
            return
        if event == "start":
            self.hook("pre_switch")
        elif report is not None and not report.failed:
            self.hook("post_switch")

    def after_hooks(self, summary: DeploySummary) -> None:
        """post_deploy, on_failure, on_rollback as they apply (the lock still held); a
        failing one is a note, never the run's outcome."""
        for point in after_points(self.kind, summary.result):
            try:
                failed = [r for r in self.hook(point, summary) if r.failed]
            except DeployError as exc:  # a hook file that cannot run
                failed = [Result(CONTROLLER, f"hook {point}", Status.FAILED, message=str(exc))]
            if failed:
                self.notes.append(f"hook {point} failed: {failed[0].message.splitlines()[0]}")

    def lock_options(self, wait: float) -> dict[str, Any]:
        """``wait``/``on_wait`` for :func:`journal.fleet_lock` (``--lock-wait``)."""
        if not wait:
            return {}
        return {"wait": wait, "on_wait": retry.LockWaitReporter(
            wait, self.out.line, self.signals.checkpoint)}

    @contextmanager
    def connect(self, hosts: Sequence[Host], failed: DeploySummary,
                json_path: str | None = None) -> Iterator[dict[str, Connection]]:
        """pre_connect hooks, then :func:`connected`; when either fails, the run report
        says so (``failed``, unreachable hosts marked) before the error goes on."""
        entered = False
        try:
            self.hook("pre_connect")
            with connected(hosts, self.secrets, report=self.report) as conns:
                entered = True
                yield conns
        except (ConnectError, HookError) as exc:
            if not entered:
                failed.message = f"{exc}; nothing was changed"
                self.finish(failed, json_path)
            raise

    def runner(self, steps: Sequence[Task | Step], title: str, **options: Any) -> Runner:
        """A runner for one phase of ours, titled ``title``."""
        self.reporter.title = title
        return Runner(steps, reporter=self.reporter, run_id=self.deploy_id, **options)

    def run_phase(self, steps: Sequence[Task | Step], title: str, hosts: Sequence[Host],
                  conns: Mapping[str, Connection], **options: Any) -> RunReport:
        """Run one phase of ours over ``hosts`` and merge its report."""
        part = self.runner(steps, title, **options).run(hosts, connections=conns)
        self.report.merge(part)
        return part

    def finish(self, summary: DeploySummary, json_path: str | None = None) -> DeploySummary:
        """Record the summary in the run report and write it (and ``json_path``)."""
        summary.duration = time.monotonic() - self.started
        summary.notes = self.notes
        status = Status.CHANGED if summary.result == "succeeded" else (
            Status.OK if summary.result == "checked" else Status.FAILED)
        self.report.add(Result(CONTROLLER, self.kind, status, message=summary.message,
                               duration=summary.duration, data=summary.to_data()))
        self.report.finish()
        summary.report_path = journal.write_run_report(self.report, self.deploy_id,
                                                       self.project.config.runs)
        summary.log_path = self.files.log
        if json_path:
            self.report.write_json(json_path)
        return summary


def _backup(run: _Run, conns: Mapping[str, Connection]) -> str | None:
    """Back the app's database up (named after the deploy id); None when there is nothing
    to back up yet. Raises TaskError when the backup fails."""
    project, cfg = run.project, run.project.config
    if project.db is None or project.database is None or not cfg.database.backup:
        return None
    conn = conns[project.db.name]
    if not _database_exists(conn, project.database):
        run.notes.append(f"no backup: database {project.database} does not exist yet")
        run.out.line(f"-- backup: database {project.database} does not exist yet (first "
                     f"deploy): nothing to back up", style="bold")
        return None
    task = postgres.backup(project.database, app=cfg.app, deploy_id=run.deploy_id,
                           keep_last=cfg.database.backup_keep_last,
                           keep_days=cfg.database.backup_keep_days, compress=1,
                           name=f"backup {project.database}")
    part = run.run_phase([task], f"backup of database {project.database}", [project.db], conns)
    if part.failed:
        failed = [r for h in part.hosts.values() for r in h.results if r.failed]
        raise TaskError(failed[0].message if failed else "backup failed", host=conn.name,
                        task=task.name)
    path = postgres.backup_path(cfg.app, project.database, run.deploy_id)
    run.notes.append(f"backup: {path} on {project.db.name}")
    return path


def _database_exists(conn: Connection, name: str) -> bool:
    with pg.connect(conn, "postgres") as session:
        row = session.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return row is not None


def restore_traffic(run: _Run, conns: Mapping[str, Connection],
                    before: Mapping[str, HostView]) -> str:
    """After an interrupt: traffic back on the colour that served before (its program
    started, ``current`` back on its release), verified through nginx. Says what it did."""
    project, cfg = run.project, run.project.config
    color = common_color(before)
    if color is None:
        return "no colour served before this deploy: nothing to switch back to"
    first = next(iter(before.values()))
    live = first.live
    steps: list[Task | Step] = [services.service(f"{cfg.app}-{color}", "started",
                                          name=f"start {cfg.app}-{color}")]
    if live is not None and live.good:
        steps.append(releases.switch(cfg.app, live.release_id))
    steps += [nginx.switch(cfg.app, color, colors=cfg.ports, name=f"nginx: traffic to {color}"),
              http.wait_for_task(f"http://{{address}}{cfg.health_path}",
                                 json_expect={"status": "ok"}, retries=10, interval=0.3,
                                 name="verify: health through nginx")]
    idle = f"{cfg.app}-{bluegreen.other(color)}"
    started = {h.name for h in project.web
               if services.status(conns[h.name], idle).state not in ("STOPPED", "ABSENT")}
    steps.append(step(services.service(idle, "stopped", name=f"stop {idle}"),
                      when=lambda v: v["inventory_hostname"] in started))
    part = run.run_phase(steps, f"restore: traffic back to {color}", project.web, conns,
                         undo="none")
    if part.failed:
        return (f"traffic could NOT be put back on {color} everywhere; see the report and "
                f"run `invoke status`")
    version = f" ({live.version})" if live is not None else ""
    return f"traffic is on {color}{version}, as before the deploy"


def deploy(project: Project, options: DeployOptions, out: Output | None = None
           ) -> DeploySummary:
    """Run the whole deploy pipeline (see the module docstring); returns the summary.

    Raises :class:`PreflightError` when a pre-flight check fails (nothing was
    changed), :class:`LockHeldError` when another deploy holds the lock; a
    failed deploy returns a summary with ``ok`` False (the caller exits non-zero).
    """
    out = out or Output()
    cfg = project.config
    version = options.version or cfg.version
    if not version:
        raise ConfigError(f"no version to deploy: pass --version or set version in "
                          f"{cfg.path.name}")
    strategy = check_strategy(options.strategy or cfg.strategy)
    project.env()  # resolve every reference before anything happens
    check_skips(preflight_checks(project), options.skip_checks)
    artifact = ensure_artifact(cfg, version, out)
    run = _Run(project, out, "deploy", check=options.check)
    run.version = version
    run.hooks.check()
    names = [h.name for h in project.web]
    out.line(f"deploy {run.deploy_id}: {cfg.app} {version} to {', '.join(names)}"
             + (f" (database {project.database} on {project.db.name})"
                if project.db is not None and project.database else "")
             + (" -- check mode: nothing will change" if options.check else ""))
    with journal.RunLog(run.files.log, secrets=run.secrets), run.signals, run.connect(
            project.hosts, DeploySummary(run.deploy_id, "deploy", "failed", version, "",
                                         hosts=names), options.json_path) as conns:
        out.title("pre-flight checks")
        pre = preflight(project, conns, skip=options.skip_checks)
        for r in pre.results:
            run.report.add(r)
        show_preflight(out, pre)
        skipped = sorted({r.task for r in pre.skipped})
        if skipped:
            run.notes.append(f"pre-flight checks skipped on request: {', '.join(skipped)}")
        if not pre.ok:
            run.finish(DeploySummary(run.deploy_id, "deploy", "failed", version,
                                     "pre-flight failed: nothing was changed", hosts=names),
                       options.json_path)
            pre.raise_for_failures()
        before = fleet_views(conns, project.web, cfg.app)
        plan = project.plan(artifact)
        if run.signals.requested:
            return run.finish(DeploySummary(run.deploy_id, "deploy", "aborted", version,
                                            f"interrupted ({run.signals.requested}) before "
                                            f"anything changed", hosts=names),
                              options.json_path)
        if options.check:
            out.title(f"{strategy}: what would change")
            outcome = bluegreen.deploy(plan, project.web, project.db, deploy_id=run.deploy_id,
                                       check=True, reporter=run.reporter)
            run.report.merge(outcome.report)
            return run.finish(DeploySummary(
                run.deploy_id, "deploy", "checked", version, outcome.message,
                color=outcome.color, previous=outcome.previous, hosts=names,
                phases=outcome.phases), options.json_path)
        return _deploy_locked(run, conns, before, plan, strategy, options)


def _deploy_locked(run: _Run, conns: Mapping[str, Connection], before: Mapping[str, HostView],
                   plan: BlueGreen, strategy: str, options: DeployOptions) -> DeploySummary:
    project, cfg, out = run.project, run.project.config, run.out
    version = plan.artifact.version
    names = [h.name for h in project.web]
    lock_conns = [conns[h.name] for h in project.hosts]
    version_from = _versions_from(project, before)
    summary = DeploySummary(run.deploy_id, "deploy", "failed", version, "", hosts=names,
                            previous=common_color(before))
    out.title("lock")
    with journal.fleet_lock(lock_conns, cfg.app, run.deploy_id, ttl=cfg.lock_ttl,
                            break_lock=options.break_lock, version_from=version_from,
                            version_to=version, strategy=strategy,
                            **run.lock_options(options.lock_wait)) as lock:
        for broken in lock.broken:
            out.line(f"   broke a stale lock: {broken.describe()}", style="yellow")
            run.notes.append(f"broke a stale lock: {broken.describe()}")
        out.line(f"   {cfg.app} locked on {', '.join(lock.hosts)} for deploy {run.deploy_id}")
        _notify(project, out, run.report, notify.DeployEvent(
            "start", run.deploy_id, cfg.app, version=version, hosts=names,
            who=lock.holder.who))
        try:
            run.hook("pre_deploy")
            out.title("backup")
            _backup(run, conns)
            run.signals.checkpoint()
            out.title(f"{strategy}: {cfg.app} {version}")
            outcome = bluegreen.deploy(plan, project.web, project.db, deploy_id=run.deploy_id,
                                       reporter=run.reporter)
            run.report.merge(outcome.report)
            summary.result = RESULT_OF[outcome.result]
            summary.message = outcome.message
            summary.color, summary.phases = outcome.color, outcome.phases
        except KeyboardInterrupt as exc:
            summary.result = "aborted"
            summary.message = _abort(run, conns, before, exc)
        except HookError as exc:  # pre_deploy: nothing changed; pre_switch: idle colour ready
            summary.message = exc.describe(restore_traffic(run, conns, before)
                                           if exc.point == "pre_switch" else
                                           "nothing was changed")
        except DeployError as exc:
            summary.message = f"{exc}; traffic was not moved"
        finally:
            run.after_hooks(summary)
            lock.end(JOURNAL_RESULT[summary.result], steps=run.report,
                     message=_journal_message(summary, run.notes), version_to=version)
    out.line(f"   lock released on {', '.join(lock.hosts)}"
             + (f" (NOT on {', '.join(lock.release_errors)})" if lock.release_errors else ""))
    _notify(project, out, run.report, notify.DeployEvent(
        EVENT_OF[summary.result], run.deploy_id, cfg.app, version=version,
        result=summary.result, hosts=names, duration=time.monotonic() - run.started,
        message=summary.message, who=lock.holder.who))
    return run.finish(summary, options.json_path)


def _abort(run: _Run, conns: Mapping[str, Connection], before: Mapping[str, HostView],
           exc: BaseException) -> str:
    """After an interrupt: restore traffic (signals only print a note meanwhile)."""
    run.signals.cleaning = True
    why = run.signals.requested or "interrupt"
    phase = run.reporter.phase or "start"
    run.out.title(f"{why}: deploy aborted during {phase!r}")
    try:
        where = restore_traffic(run, conns, before)
    except DeployError as error:
        where = f"traffic could not be checked: {error}"
    return f"interrupted ({why}) during {phase!r}; {where}"


def _versions_from(project: Project, views: Mapping[str, HostView]) -> dict[str, str]:
    """Each web host's version; the db host gets the fleet's, when the hosts agree."""
    found = {n: v.version for n, v in views.items() if v.version}
    if project.db is not None and len(set(found.values())) == 1:
        found[project.db.name] = next(iter(found.values()))
    return found


def _journal_message(summary: DeploySummary, notes: Sequence[str]) -> str:
    return "; ".join([summary.message, *notes]).strip("; ")


def show_summary(out: Output, summary: DeploySummary) -> None:
    """The end of a deploy or rollback, for people."""
    verb = {"succeeded": "succeeded", "failed": "FAILED", "rolled_back": "ROLLED BACK",
            "aborted": "ABORTED", "checked": "checked (nothing changed)"}[summary.result]
    style = "bold green" if summary.ok else "bold red"
    out.title(f"{summary.kind} {summary.deploy_id}: {verb} in {summary.duration:.1f} s")
    out.line(f"   {summary.message}", style=style)
    if summary.phases:
        out.line("   phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary.phases.items()))
    for note in summary.notes:
        out.line(f"   {note}")
    if summary.report_path is not None:
        out.line(f"   report: {_rel(summary.report_path)}   log: {_rel(summary.log_path)}")


def _rel(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _exit_for(summary: DeploySummary) -> None:
    """Exit non-zero for a deploy that did not succeed (one ``error:`` line)."""
    if summary.ok:
        return
    text = (f"{summary.kind} {summary.deploy_id} {summary.result.replace('_', ' ')}: "
            f"{summary.message}")
    if summary.result == "aborted":
        print(f"error: {text}", file=sys.stderr)
        raise Exit(code=EXIT_ABORTED)
    raise TaskError(text)


# == rollback =================================================================================


def _rollback_target(app: str, views: Mapping[str, HostView], to: str | None) -> ReleaseInfo:
    """The release to go back to, the same on every host: ``to``, else the newest good
    release older than the live one."""
    chosen: dict[str, ReleaseInfo] = {}
    for name, view in views.items():
        by_id = {r.release_id: r for r in view.releases}
        state = AppReleases(app, releases.DEFAULT_ROOT, by_id)
        if to is not None:
            target = by_id.get(to)
            if target is None or not target.good:
                raise ConfigError(f"release {to} is not a good release on {name} "
                                  f"(releases: {state.describe()})")
        else:
            live = view.live
            if live is None:
                raise ConfigError(f"{name} serves no release: nothing to roll back")
            found = state.previous_good(live.release_id)
            if found is None:
                raise ConfigError(f"no good release before {live.release_id} on {name} "
                                  f"(releases: {state.describe()})")
            target = found
        chosen[name] = target
    ids = {(r.release_id, r.sha256) for r in chosen.values()}
    if len(ids) != 1:
        shown = ", ".join(f"{n} {r.release_id}" for n, r in chosen.items())
        raise ConfigError(f"the hosts would roll back to different releases ({shown}); "
                          f"name one with --to")
    return next(iter(chosen.values()))


def _last_backup(project: Project, conn: Connection) -> tuple[str, journal.DeployRecord]:
    """The pre-deploy backup of the newest successful deploy (it must exist)."""
    assert project.database is not None
    records = journal.summarize_history(journal.history(conn, project.app, limit=400))
    deploys = [r for r in records if r.kind == "deploy" and r.result == "succeeded"]
    if not deploys:
        raise ConfigError(f"no successful deploy in the history of {conn.name}: no "
                          f"pre-deploy backup to restore (use invoke restore --backup PATH)")
    last = deploys[-1]
    path = postgres.backup_path(project.app, project.database, last.id)
    result = postgres.verify_backup(path).run(conn)
    if result.failed:
        raise ConfigError(f"the pre-deploy backup of deploy {last.id} ({last.version_from} -> "
                          f"{last.version_to}) cannot be used: {result.message}")
    return path, last


def rollback(project: Project, *, to: str | None = None, app: bool = True, db: bool = False,
             migrations_steps: int = 0, out: Output | None = None,
             json_path: str | None = None) -> DeploySummary:
    """Roll back, under the lock, in this order: the app (blue/green to the previous good
    release, or ``to``; the database's schema is left as it is), ``migrations_steps``
    migrations (down files of the release left), the database (``db``: the pre-deploy
    backup of the newest successful deploy, restored with swap; the current database is
    kept as ``<db>_old_<time>``)."""
    out = out or Output()
    cfg = project.config
    if not (app or db or migrations_steps):
        raise ConfigError("nothing to roll back: drop --no-app, or add --db or --migrations N")
    if (db or migrations_steps) and project.database is None:
        raise ConfigError(f"--db and --migrations need database.name and a db host in "
                          f"{cfg.path.name}")
    run = _Run(project, out, "rollback")
    run.hooks.check()
    names = [h.name for h in project.web]
    with journal.RunLog(run.files.log, secrets=run.secrets), run.signals, run.connect(
            project.hosts, DeploySummary(run.deploy_id, "rollback", "failed", None, "",
                                         hosts=names), json_path) as conns:
        views = fleet_views(conns, project.web, cfg.app)
        live = {v.version for v in views.values()}
        left = next(iter(live)) if len(live) == 1 else None
        target = _rollback_target(cfg.app, views, to) if app else None
        backup = _last_backup(project, conns[project.db.name]) if db and project.db else None
        version_to = target.version if target is not None else left
        run.version = version_to
        parts = [f"app {left} -> {target.version}" if target is not None else "",
                 f"the newest {migrations_steps} migration(s)" if migrations_steps else "",
                 f"database from {backup[0]}" if backup else ""]
        out.line(f"rollback {run.deploy_id}: {cfg.app}: " + ", ".join(p for p in parts if p))
        summary = DeploySummary(run.deploy_id, "rollback", "failed", version_to, "",
                                hosts=names, previous=common_color(views))
        lock_conns = [conns[h.name] for h in project.hosts]
        with journal.fleet_lock(lock_conns, cfg.app, run.deploy_id, ttl=cfg.lock_ttl,
                                kind="rollback",
                                version_from=_versions_from(project, views),
                                version_to=version_to, strategy="bluegreen") as lock:
            _notify(project, out, run.report, notify.DeployEvent(
                "start", run.deploy_id, cfg.app, version=version_to, hosts=names,
                who=lock.holder.who, message="rollback started"))
            try:
                summary.result, summary.message = _rollback_steps(
                    run, conns, target, left, migrations_steps, backup, summary)
            except KeyboardInterrupt:
                summary.result = "aborted"
                summary.message = "interrupted; run invoke status to see where things are"
            except DeployError as exc:
                summary.message = str(exc)
            finally:
                run.after_hooks(summary)
                lock.end(JOURNAL_RESULT[summary.result], steps=run.report,
                         message=_journal_message(
                    summary, run.notes), version_to=version_to)
        _notify(project, out, run.report, notify.DeployEvent(
            "rollback" if summary.result == "succeeded" else "failure", run.deploy_id,
            cfg.app, version=version_to, result=summary.result, hosts=names,
            duration=time.monotonic() - run.started, message=summary.message,
            who=lock.holder.who))
        out.line(f"   lock released on {', '.join(lock.hosts)}")
    return run.finish(summary, json_path)


def _rollback_steps(run: _Run, conns: Mapping[str, Connection], target: ReleaseInfo | None,
                    left: str | None, steps: int, backup: tuple[str, Any] | None,
                    summary: DeploySummary) -> tuple[str, str]:
    project, cfg, out = run.project, run.project.config, run.out
    done: list[str] = []
    if target is not None:
        out.title(f"app: back to {target.release_id}")
        plan = project.plan(installed_artifact(cfg, target), database=False)
        outcome = bluegreen.deploy(plan, project.web, None, deploy_id=run.deploy_id,
                                   reporter=run.reporter)
        run.report.merge(outcome.report)
        summary.color, summary.phases = outcome.color, outcome.phases
        if not outcome.ok:
            return RESULT_OF[outcome.result], f"app rollback failed: {outcome.message}"
        done.append(outcome.message)
    if steps:
        assert project.db is not None and project.database is not None
        source = _migrations_source(project, conns[project.db.name], steps) or left
        if source is None:
            raise ConfigError("cannot tell whose down files to use: the journal does not say "
                              "which deploy applied the newest migration and the web hosts "
                              "do not serve one version")
        out.title(f"migrations: the newest {steps} down, with the down files of {source}")
        artifact = ensure_artifact(cfg, source, out)
        with _temporary_dir() as tmp:
            directory = artifacts.unpack_migrations(artifact, tmp)
            task = migrations.rollback(directory, database=project.database,
                                       steps=steps, deploy_id=run.deploy_id)
            part = run.run_phase([task], f"roll back {steps} migration(s) of {source}",
                                 [project.db], conns)
        if part.failed:
            return "failed", "; ".join([*done, "migration rollback failed (see above)"])
        done.append(f"{steps} migration(s) rolled back with {source}'s down files")
    if backup is not None:
        path, record = backup
        out.title(f"database: restore the backup taken before deploy {record.id}")
        restore = postgres.restore(project.database or "", path, name="restore database")
        assert project.db is not None
        part = run.run_phase([restore], f"restore {project.database} from {path}",
                             [project.db], conns)
        if part.failed:
            return "failed", "; ".join([*done, "database restore failed: "
                                        f"{project.database} is untouched"])
        kept = _data_of(part, "previous")
        done.append(f"database {project.database} restored from {path} (the previous one "
                    f"is kept as {kept})")
    run.signals.checkpoint()
    return "succeeded", "; ".join(done)


def _migrations_source(project: Project, conn: Connection, steps: int) -> str | None:
    """The version whose artifact holds the newest ``steps`` applied migrations: the one
    deployed by the deploy that applied the newest of them (its id is on the migration's
    row, its version in the journal); None when the journal does not say."""
    assert project.database is not None
    try:
        with pg.connect(conn, project.database) as session:
            rows = session.execute("SELECT deploy_id FROM schema_migrations ORDER BY version "
                                   "DESC LIMIT %s", [steps]).fetchall()
    except (DeployError, psycopg.Error) as exc:
        log.info("no migration rows to read: %s", exc)
        return None
    versions = {r.id: r.version_to for r in journal.summarize_history(
        journal.history(conn, project.app, limit=400)) if r.kind == "deploy"}
    return versions.get(str(rows[0][0])) if rows else None


@contextmanager
def _temporary_dir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deploykit-") as tmp:
        yield tmp


def _data_of(report: RunReport, key: str) -> Any:
    for host in report.hosts.values():
        for r in host.results:
            if key in r.data:
                return r.data[key]
    return None


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
    """Every host's colour, releases, programs, lock and last deploy (read-only)."""
    with connected(project.hosts, project.known_secrets()) as conns:
        return _parallel(project.hosts, lambda h: _host_status(project, conns[h.name]))


def history_records(project: Project, limit: int = 20) -> list[dict[str, Any]]:
    """The last ``limit`` deploys, rollbacks and lock events over every host, merged by
    id (oldest first); each record lists its hosts and their results."""
    with connected(project.hosts, project.known_secrets()) as conns:
        per_host = _parallel(project.hosts, lambda h: journal.history(
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


def _write_json(data: Any, target: str) -> None:
    text = _json.dumps(data, indent=2, sort_keys=True, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")


# == locks ====================================================================================


def take_lock(project: Project, out: Output) -> str:
    """``invoke lock``: hold the deploy lock on every host until ``invoke unlock``."""
    lock_id = f"lock-{journal.new_deploy_id(project.config.root)}"
    holder = journal.LockHolder.for_this_process(lock_id, project.app)
    with connected(project.hosts, project.known_secrets()) as conns:
        entry = journal.HistoryEntry(event="lock", id=lock_id, app=project.app, who=holder.who,
                                     time=holder.started, message="invoke lock")
        attempts: dict[str, journal.LockAttempt | DeployError] = {}

        def take(h: Host) -> None:
            try:
                attempts[h.name] = journal.acquire_lock(
                    conns[h.name], project.app, holder, ttl=project.config.lock_ttl,
                    entries=[dataclasses.replace(entry, host=h.name)])
            except DeployError as exc:
                attempts[h.name] = exc

        _parallel(project.hosts, take)
        taken = [n for n, a in attempts.items()
                 if isinstance(a, journal.LockAttempt) and a.acquired]
        if len(taken) < len(project.hosts):
            for name in taken:
                journal.release_lock(conns[name], project.app, holder)
            problems = [a.held_by.describe() if isinstance(a, journal.LockAttempt)
                        and a.held_by else str(a) for a in attempts.values()
                        if not (isinstance(a, journal.LockAttempt) and a.acquired)]
            raise LockHeldError("; ".join(problems))
    out.line(f"{project.app} locked on {', '.join(h.name for h in project.hosts)} as "
             f"{lock_id}; deploys are refused until `invoke unlock`")
    return lock_id


def release_locks(project: Project, out: Output, *, force: bool = False) -> None:
    """``invoke unlock``: remove your own ``invoke lock`` or a lock your crashed deploy
    left on this controller; ``force`` removes any lock (recorded in the history)."""
    me = _who()
    journal_log = logging.getLogger("deploykit.journal")
    level = journal_log.level
    journal_log.setLevel(logging.ERROR)  # "lock removed by": we say so ourselves
    try:
        with connected(project.hosts, project.known_secrets()) as conns:
            results = _unlock_each(project, conns, me, force)
    finally:
        journal_log.setLevel(level)
    for line in results:
        out.line(line)


def _unlock_each(project: Project, conns: Mapping[str, Connection], me: str,
                 force: bool) -> list[str]:
    def one(h: Host) -> str:
        conn = conns[h.name]
        info = journal.lock_status(conn, project.app, ttl=project.config.lock_ttl)
        if info is None:
            return f"{h.name}: not locked"
        holder = info.holder
        ours = holder is not None and holder.who == me and (
            holder.deploy_id.startswith("lock-") or not _pid_alive(holder.pid))
        if not (force or ours):
            raise LockHeldError(f"{info.describe()}; not yours: `invoke unlock --force` "
                                f"breaks it (recorded in the history)", host=h.name)
        removed = journal.unlock(conn, project.app, force=force,
                                 deploy_id=holder.deploy_id if holder else None,
                                 ttl=project.config.lock_ttl)
        return f"{h.name}: removed {removed.describe()}" if removed else \
            f"{h.name}: not locked"

    return _parallel(project.hosts, one)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# == backup, restore, verify ==================================================================


def backup_now(project: Project, out: Output) -> str:
    """``invoke backup``: a verified backup of the app's database now."""
    if project.db is None or project.database is None:
        raise ConfigError(f"no database: set db and database.name in "
                          f"{project.config.path.name}")
    backup_id = f"manual-{journal.new_deploy_id(project.config.root)}"
    cfg = project.config
    task = postgres.backup(project.database, app=cfg.app, deploy_id=backup_id,
                           keep_last=cfg.database.backup_keep_last,
                           keep_days=cfg.database.backup_keep_days, compress=1,
                           name=f"backup {project.database}")
    with connected([project.db], project.known_secrets()) as conns:
        result = task.run(conns[project.db.name])
    if result.failed:
        raise TaskError(result.message, host=project.db.name, task=task.name)
    size = result.data.get("size")
    out.line(f"backup of {project.database} on {project.db.name}: {task.path}"
             + (f" ({size} bytes)" if size else "") + ", checksum verified")
    return task.path


def restore_backup(project: Project, out: Output, source: str | None = None) -> DeploySummary:
    """``invoke restore``: restore a backup (default: the newest) with swap, under the lock."""
    if project.db is None or project.database is None:
        raise ConfigError(f"no database: set db and database.name in "
                          f"{project.config.path.name}")
    cfg, db = project.config, project.db
    run = _Run(project, out, "restore", secrets=project.known_secrets())
    with journal.RunLog(run.files.log, secrets=run.secrets), run.signals, \
            connected(project.hosts, run.secrets) as conns:
        if source is None:
            latest = postgres.latest_backup(project.database, app=cfg.app).run(conns[db.name])
            if latest.failed:
                raise ConfigError(latest.message)
            source = str(latest.data["path"])
        summary = DeploySummary(run.deploy_id, "restore", "failed", None, "", hosts=[db.name])
        with journal.fleet_lock([conns[h.name] for h in project.hosts], cfg.app,
                                run.deploy_id, ttl=cfg.lock_ttl, kind="rollback",
                                strategy="restore") as lock:
            try:
                part = run.run_phase([postgres.restore(project.database, source,
                                                       name="restore database")],
                                     f"restore {project.database} from {source}", [db], conns)
                if part.failed:
                    summary.message = f"restore failed: {project.database} is untouched"
                else:
                    summary.result = "succeeded"
                    summary.message = (f"{project.database} restored from {source}; the "
                                       f"previous database is kept as "
                                       f"{_data_of(part, 'previous')}")
            finally:
                lock.end(JOURNAL_RESULT[summary.result], steps=run.report,
                         message=summary.message)
    return run.finish(summary)


def verify_fleet(project: Project, out: Output) -> bool:
    """``invoke verify``: health and version of every web host, through nginx."""
    cfg = project.config
    with connected(project.web, project.known_secrets()) as conns:
        views = fleet_views(conns, project.web, cfg.app)
    good = True
    for h in project.web:
        expected = views[h.name].version
        health = http.request(f"http://{h.address}{cfg.health_path}")
        version = http.request(f"http://{h.address}{cfg.version_path}")
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


def verify_suite(project: Project, out: Output, suite: str, *,
                 marker: str | None = None) -> bool:
    """``invoke verify --suite``: the testinfra ``suite`` on the web hosts, in parallel
    (bounded); a table per host; JUnit XML, JSON results and the run report in the runs
    directory. True when every host passed."""
    run_id = f"verify-{journal.new_deploy_id(project.config.root)}"
    result = suites.verify_hosts(project.web, suite, marker=marker,
                                 context=suites.DeployContext(app=project.app),
                                 report_dir=project.config.runs, run_id=run_id)
    out.table(result.table())
    out.line(f"JUnit XML: {result.junit_path}; results: {result.json_path}")
    return result.ok


# == the invoke tasks =========================================================================


def _project(c: Context, host: str | None = None, group: str | None = None) -> Project:
    _cli_logging()
    return Project.load(config_path(c), host=host, group=group)


class _Warnings(logging.Handler):
    """deploykit's warnings (with ``$DEPLOYKIT_LOG_LEVEL=debug``: every record) on stderr
    as ``warning: ...``/``debug: ...``, secrets redacted (not this module's own lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != log.name:
            label = "warning" if record.levelno >= logging.WARNING else \
                record.levelname.lower()
            text = redact(record.getMessage(), _LOGGED_SECRETS)
            sys.stderr.write(f"{label}: {text}\n")


def _cli_logging() -> None:
    root = logging.getLogger("deploykit")
    level = journal.log_level()
    if not any(isinstance(h, _Warnings) for h in root.handlers):
        root.addHandler(_Warnings(min(level, logging.WARNING)))
    if level < logging.WARNING:
        root.setLevel(level)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{question}: confirmation needed and stdin is not a terminal; "
                          f"pass --yes")
    answer = input(f"{question}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise ConfigError("cancelled: nothing was changed")


@task(name="deploy", iterable=["skip_check"], help={
    "host": "deploy to these hosts only (a selector: web-1 or web-1,web-2)",
    "group": "deploy to this group (default: web from deploykit.yml)",
    "version": "the version to deploy (default: version from deploykit.yml)",
    "strategy": "bluegreen (default; the only strategy invoke deploy drives so far)",
    "check": "show what would change; change nothing (no lock, no backup)",
    "yes": "do not ask for confirmation",
    "json": "also write the run report (JSON) to this path",
    "skip_check": "skip this pre-flight check (repeatable); recorded in the report",
    "break_lock": "break a STALE lock (older than lock_ttl_minutes) first; recorded",
    "lock_wait": "wait this long for a held lock (90s, 5m, 1h) instead of failing",
    "retry_failed": "re-run the last deploy on the hosts that failed or were unreachable "
                    "(from its run report in .deploykit/runs/)"})
@reports_errors
def deploy_task(c: Context, host: str | None = None, group: str | None = None,
                version: str | None = None, strategy: str | None = None, check: bool = False,
                yes: bool = False, json: str | None = None, skip_check: list[str] | None = None,
                break_lock: bool = False, lock_wait: str | None = None,
                retry_failed: bool = False) -> None:
    """Deploy a version: pre-flight, lock, backup, blue/green, journal, notify."""
    project = _project(c, host, group)
    wait = retry.parse_duration(lock_wait)
    if retry_failed:
        project, version = _retry_project(c, project, host, group, version)
    wanted = version or project.config.version
    if not wanted:
        raise ConfigError(f"no version to deploy: pass --version or set version in "
                          f"{project.config.path.name}")
    if not check:
        _confirm(f"deploy {project.app} {wanted} to "
                 f"{', '.join(h.name for h in project.web)}", yes)
    out = Output()
    summary = deploy(project, DeployOptions(version=version, strategy=strategy, check=check,
                                            skip_checks=skip_check or (),
                                            break_lock=break_lock, json_path=json,
                                            lock_wait=wait), out)
    show_summary(out, summary)
    _exit_for(summary)


def _retry_project(c: Context, project: Project, host: str | None, group: str | None,
                   version: str | None) -> tuple[Project, str | None]:
    """``--retry-failed``: the project narrowed to the last deploy's failed hosts, and
    that deploy's version (unless ``version`` is given)."""
    if host or group:
        raise ConfigError("--retry-failed picks the hosts itself: drop --host/--group")
    plan = retry.retry_plan(project.config.runs, [h.name for h in project.web],
                            project.db.name if project.db else None)
    for name, why in plan.reasons.items():
        print(f"retry of deploy {plan.deploy_id}: {name} {why}")
    return _project(c, ",".join(plan.hosts)), version or plan.version


@task(name="rollback", help={
    "to": "the release to go back to (default: the previous good one)",
    "app": "roll the app back (default; --no-app to leave it)",
    "db": "also restore the database from the last deploy's pre-deploy backup (swap; the "
          "current one is kept)",
    "migrations": "also roll back this many migrations (their down files)",
    "yes": "do not ask for confirmation",
    "json": "also write the run report (JSON) to this path"})
@reports_errors
def rollback_task(c: Context, to: str | None = None, app: bool = True, db: bool = False,
                  migrations: int = 0, yes: bool = False, json: str | None = None) -> None:
    """Roll back the app (blue/green), migrations and/or the database."""
    project = _project(c)
    what = ", ".join(x for x in ("app" if app else "", "database" if db else "",
                                 f"{migrations} migration(s)" if migrations else "") if x)
    _confirm(f"roll back {project.app} ({what})", yes)
    out = Output()
    summary = rollback(project, to=to, app=app, db=db, migrations_steps=migrations, out=out,
                       json_path=json)
    show_summary(out, summary)
    _exit_for(summary)


@task(name="status", help={"json": "write the status as JSON to this path ('-': stdout)"})
@reports_errors
def status_task(c: Context, json: str | None = None) -> None:
    """Per host: active colour, releases, programs, lock holder, last deploy."""
    project = _project(c)
    rows = fleet_status(project)
    if json:
        _write_json([r.to_data() for r in rows], json)
        return
    show_status(Output(secrets=project.known_secrets()), rows)


def show_status(out: Output, rows: Sequence[HostStatus]) -> None:
    """The status as a table."""
    table = Table(title="deploykit status", title_justify="left")
    for column in ("host", "colour", "serves", "current", "programs", "maintenance", "lock",
                   "last deploy"):
        table.add_column(column)
    for r in rows:
        programs = ", ".join(f"{p.rsplit('-', 1)[-1]} {s.lower()}" for p, s in r.services.items())
        last = "-"
        if r.last is not None:
            change = f"{r.last.version_from or '-'} -> {r.last.version_to or '-'}"
            result = (r.last.result or "RUNNING or CRASHED").replace("_", " ")
            last = f"{r.last.kind} {change} {result} ({r.last.id})"
        table.add_row(r.name, r.color or "-", r.version or "-", r.current or "-",
                      programs or "-",
                      "ON" if r.maintenance else ("off" if r.maintenance is False else "-"),
                      r.lock or ("ERROR " + r.error if r.error else "free"),
                      last)
    out.table(table)


@task(name="history", help={"limit": "how many deploys/rollbacks to show (default 20)",
                            "json": "write the history as JSON to this path ('-': stdout)"})
@reports_errors
def history_task(c: Context, limit: int = 20, json: str | None = None) -> None:
    """Deploys, rollbacks and lock events, from every host's journal, oldest first."""
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    project = _project(c)
    rows = history_records(project, limit)
    if json:
        _write_json(rows, json)
        return
    show_history(Output(secrets=project.known_secrets()), rows)


def show_history(out: Output, rows: Sequence[Mapping[str, Any]]) -> None:
    """The history as a table."""
    table = Table(title="deploykit history (oldest first)", title_justify="left")
    for column in ("id (UTC time-commit)", "what", "by", "change", "result", "took", "outcome"):
        table.add_column(column, no_wrap=column != "outcome")
    for r in rows:
        before = sorted(set(r["version_from"].values()))
        change = f"{'/'.join(before) or '-'} -> {r['version_to'] or '-'}"
        took = f"{r['duration']:.0f} s" if r["duration"] else "-"
        if r["strategy"] == "restore":
            change = "database"
        table.add_row(r["id"], r["kind"], r["who"], change
                      if r["kind"] in ("deploy", "rollback") else "-",
                      r["result"].replace("_", " "), took,
                      _short(r["message"].split("; ")[0], 100))
    if not rows:
        out.line("no deploys yet")
        return
    out.table(table)


@task(name="backup")
@reports_errors
def backup_task(c: Context) -> None:
    """Back the app's database up now (verified, with a checksum sidecar)."""
    project = _project(c)
    backup_now(project, Output(secrets=project.known_secrets()))


@task(name="restore", help={"backup": "the dump on the db host (default: the newest backup)",
                            "yes": "do not ask for confirmation"})
@reports_errors
def restore_task(c: Context, backup: str | None = None, yes: bool = False) -> None:
    """Restore the app's database from a backup with swap (the current one is kept)."""
    project = _project(c)
    _confirm(f"replace database {project.database} by "
             f"{backup or 'its newest backup'} (the current one is kept)", yes)
    out = Output(secrets=project.known_secrets())
    summary = restore_backup(project, out, backup)
    show_summary(out, summary)
    _exit_for(summary)


@task(name="verify", help={
    "host": "verify these hosts only (a selector: web-1 or web-1,web-2)",
    "group": "verify this group (default: web from deploykit.yml)",
    "suite": "run this testinfra suite (a directory or file) on the hosts instead: a table "
             "per host, JUnit XML and JSON in the runs directory",
    "marker": "with --suite: only the tests this pytest -m expression selects "
              "(pre_switch, post_switch)"})
@reports_errors
def verify_task(c: Context, host: str | None = None, group: str | None = None,
                suite: str | None = None, marker: str | None = None) -> None:
    """Health and version of every web host through nginx, or a testinfra suite (--suite)."""
    project = _project(c, host, group)
    out = Output(secrets=project.known_secrets())
    if suite is not None:
        if not verify_suite(project, out, suite, marker=marker):
            raise TaskError("verification failed (see above)")
        return
    if marker is not None:
        raise ConfigError("--marker selects tests of a --suite")
    if not verify_fleet(project, out):
        raise TaskError("verification failed (see above)")


@task(name="lock")
@reports_errors
def lock_task(c: Context) -> None:
    """Hold the deploy lock on every host (deploys are refused until invoke unlock)."""
    project = _project(c)
    take_lock(project, Output(secrets=project.known_secrets()))


@task(name="unlock", help={"force": "break any lock, whoever holds it (recorded)"})
@reports_errors
def unlock_task(c: Context, force: bool = False) -> None:
    """Remove your invoke lock (or your crashed deploy's lock); --force: any lock."""
    project = _project(c)
    release_locks(project, Output(secrets=project.known_secrets()), force=force)


@task(name="config", help={"show": "print the effective configuration (defaults filled in, "
                                    "references resolved, secrets redacted) and the "
                                    "inventory's hosts; non-zero when a secret is missing"})
@reports_errors
def config_task(c: Context, show: bool = False) -> None:
    """Every deploykit.yml key with its default and meaning, then this project's values."""
    if show:
        project = _project(c)
        data, problems = effective_config(project.config, project.db,
                                          list(project.inventory.hosts.values()))
        print(f"# {project.config.path} (effective; secrets redacted)")
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
        if problems:
            raise ConfigError(f"{len(problems)} secret(s) cannot be resolved: "
                              + "; ".join(problems))
        return
    print(f"deploykit.yml keys (file: {config_path(c)}; ${CONFIG_ENV} names another):\n")
    print(describe_keys())
    path = config_path(c)
    if not path.exists():
        print(f"\n{path}: not found")
        return
    cfg = load_config(path)
    print(f"\n{cfg.path}:")
    for key, value in dataclasses.asdict(cfg).items():
        if key != "path":
            print(f"  {key}: {value}")


TASKS: tuple[InvokeTask[Any], ...] = (
    deploy_task, rollback_task, status_task, history_task, backup_task, restore_task,
    verify_task, lock_task, unlock_task, config_task)
"""Every task, for :func:`add_tasks`."""


def add_tasks(ns: Collection) -> Collection:
    """Add every deploy task to ``ns`` at its top level (``invoke deploy``, ...)."""
    for t in TASKS:
        ns.add_task(t)
    return ns


deploy_collection = Collection(*TASKS)
"""The tasks as a collection (``ns.add_collection(deploy_collection, "app")`` namespaces
them: ``invoke app.deploy``)."""
