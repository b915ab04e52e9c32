"""The frame every run shares: options, summary, run files, report, hooks, signals, notify."""

from __future__ import annotations

import logging
import secrets as secrets_module
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit import journal, pg, retry
from deploykit.artifacts import Artifact, unpack_migrations
from deploykit.connection import Connection
from deploykit.errors import ConnectError, DeployError, TaskError
from deploykit.hooks import HookContext, HookError, Hooks, after_points
from deploykit.inventory import Host
from deploykit.pipeline.events import (
    Display,
    Event,
    EventBus,
    LockTaken,
    Phase,
    PhaseEvents,
    RunEnded,
)
from deploykit.pipeline.fleet import connected
from deploykit.pipeline.project import Project
from deploykit.pipeline.signals import StopSignals
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Runner, Step
from deploykit.secrets import Secret, redact
from deploykit.strategies.base import EventKind, PhaseEvent
from deploykit.task import Task
from deploykit.tasks import migrations, notify, postgres
from deploykit.tasks.checks import CONTROLLER

log = logging.getLogger("deploykit.pipeline.run")

# == notifications ============================================================================


def notify_event(project: Project, out: Display, report: RunReport, event: notify.DeployEvent
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
    problems: list[str] = field(default_factory=list)
    """What went wrong after the outcome (a lock that could not be released): the command
    then exits non-zero even when the deploy itself succeeded."""

    @property
    def ok(self) -> bool:
        """True when it succeeded (or only checked)."""
        return self.result in ("succeeded", "checked")

    def to_data(self) -> dict[str, Any]:
        """For the run report (the ``(controller)`` result's data)."""
        return {"kind": self.kind, "result": self.result, "version": self.version,
                "color": self.color, "previous": self.previous, "hosts": self.hosts,
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "notes": self.notes, "problems": self.problems}


RESULT_OF: dict[str, journal.DeployResult] = {
    "deployed": "succeeded", "unchanged": "succeeded", "failed": "failed",
    "rolled_back": "rolled_back", "aborted": "aborted", "checked": "succeeded"}
JOURNAL_RESULT: dict[str, journal.DeployResult] = {
    "succeeded": "succeeded", "failed": "failed", "rolled_back": "rolled_back",
    "aborted": "aborted", "checked": "succeeded"}
EVENT_OF: dict[str, notify.Event] = {
    "succeeded": "success", "failed": "failure", "rolled_back": "rollback",
    "aborted": "failure"}


class Run:
    """The shared frame of deploy and rollback: output, report, run files, signals."""

    def __init__(self, project: Project, out: Display, kind: str, check: bool = False,
                 secrets: Sequence[Secret] | None = None) -> None:
        self.project = project
        self.out = out
        self.kind = kind
        self.started = time.monotonic()
        self.deploy_id = journal.new_deploy_id(project.config.root)
        if kind != "deploy":
            self.deploy_id = f"{self.deploy_id}-{kind}"
        self.files = journal.run_files(self.deploy_id, project.config.runs)
        self.nest_token = secrets_module.token_hex(16)
        """Given to this run's hooks only: runs they start prove with it that they are
        nested in this one (and enter its lock)."""
        self.secrets = [*(list(secrets) if secrets is not None else project.secrets()),
                        Secret(self.nest_token)]
        out.add_secrets(self.secrets)
        self.report = RunReport(run_id=self.deploy_id, check=check, secrets=list(self.secrets))
        self.signals = StopSignals()
        self.events = EventBus()
        self.events.subscribe(out.show)
        self.reporter = PhaseEvents(self.events, self.signals)
        self.notes: list[str] = []
        self.version: str | None = None
        cfg = project.config
        self.hooks = Hooks(cfg.hooks_dir, cfg.root, cfg.hook_timeout, echo=out.line,
                           secrets=self.secrets, record=self.report.add,
                           enabled=kind in ("deploy", "rollback") and not check)
        self.lock: journal.FleetLock | None = None
        if kind in ("deploy", "rollback") and not check:
            self.events.subscribe(self._notify_on, LockTaken, RunEnded)
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
            config=self.project.config.path, nest_token=self.nest_token))

    def strategy_event(self, event: PhaseEvent) -> None:
        """A strategy's typed phase event: the screen's next title, and the pre_switch /
        post_switch hooks around the phase that moves traffic (a failing pre_switch hook
        stops the run before the switch)."""
        self.reporter.strategy_event(event)
        if self.signals.cleaning or event.phase is not Phase.SWITCH:
            return
        if event.kind is EventKind.STARTED:
            self.hook("pre_switch")
        elif event.kind is EventKind.FINISHED:
            self.hook("post_switch")

    def checkpoint(self) -> None:
        """Between phases: stop when interrupted, or when the lock is no longer ours."""
        self.signals.checkpoint()
        if self.lock is not None and not self.signals.cleaning:
            self.lock.check()

    def _notify_on(self, event: Event) -> None:
        """The ``start`` notification once locked; the outcome's at the end."""
        app = self.project.app
        if isinstance(event, LockTaken):
            message = "rollback started" if self.kind == "rollback" else ""
            sent = notify.DeployEvent("start", self.deploy_id, app, version=self.version,
                                      hosts=self.web_names, who=event.who, message=message)
        elif isinstance(event, RunEnded):
            name: notify.Event = EVENT_OF[event.result]
            if self.kind == "rollback":
                name = "rollback" if event.result == "succeeded" else "failure"
            sent = notify.DeployEvent(name, self.deploy_id, app, version=event.version,
                                      result=event.result, hosts=self.web_names,
                                      duration=event.duration, message=event.message,
                                      who=event.who)
        else:
            return
        notify_event(self.project, self.out, self.report, sent)

    @property
    def web_names(self) -> list[str]:
        """The web hosts' names."""
        return [h.name for h in self.project.web]

    def locked(self, lock: journal.FleetLock) -> None:
        """Announce the lock (the start notification follows it); from now on every phase
        first checks that the lock is still ours."""
        self.lock = lock
        self.events.emit(LockTaken(self.deploy_id, tuple(lock.hosts), lock.holder.who,
                                   tuple(b.describe() for b in lock.broken)))

    def ended(self, summary: DeploySummary, lock: journal.FleetLock) -> None:
        """Say where the lock could not be released (loudly), then announce the outcome."""
        for host, why in sorted(lock.release_errors.items()):
            summary.problems.append(f"{host}: {why}")
        who = lock.holder.who
        self.events.emit(RunEnded(self.kind, self.deploy_id, summary.result, summary.message,
                                  summary.version, tuple(summary.hosts),
                                  time.monotonic() - self.started, who))

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

    def lock_options(self, wait: float = 0.0) -> dict[str, Any]:
        """Options for :func:`journal.fleet_lock`: this run's nest token (for its hooks'
        runs), and ``wait``/``on_wait`` (``--lock-wait``)."""
        options: dict[str, Any] = {"nest_token": self.nest_token}
        if wait:
            options.update(wait=wait, on_wait=retry.LockWaitReporter(
                wait, self.out.line, self.signals.checkpoint))
        return options

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

    def runner(self, steps: Sequence[Task | Step], title: str, phase: Phase = Phase.STEP,
               **options: Any) -> Runner:
        """A runner for one phase of ours, titled ``title``."""
        self.reporter.title = title
        self.reporter.next_phase = phase
        return Runner(steps, reporter=self.reporter, run_id=self.deploy_id, **options)

    def run_phase(self, steps: Sequence[Task | Step], title: str, hosts: Sequence[Host],
                  conns: Mapping[str, Connection], phase: Phase = Phase.STEP,
                  **options: Any) -> RunReport:
        """Run one phase of ours over ``hosts`` and merge its report."""
        part = self.runner(steps, title, phase, **options).run(hosts, connections=conns)
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


def backup_before(run: Run, conns: Mapping[str, Connection]) -> str | None:
    """Back the app's database up (named after the deploy id); None when there is nothing
    to back up yet. Raises TaskError when the backup fails."""
    project, cfg = run.project, run.project.config
    if project.db is None or project.database is None or not cfg.database.backup:
        return None
    conn = conns[project.db.name]
    if not database_exists(conn, project.database):
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


def database_exists(conn: Connection, name: str) -> bool:
    with pg.connect(conn, "postgres") as session:
        row = session.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return row is not None


def journal_message(summary: DeploySummary, notes: Sequence[str]) -> str:
    return "; ".join([summary.message, *notes]).strip("; ")


def data_of(report: RunReport, key: str) -> Any:
    for host in report.hosts.values():
        for r in host.results:
            if key in r.data:
                return r.data[key]
    return None


@contextmanager
def temporary_dir() -> Iterator[str]:
    """A private temporary directory on the controller, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="deploykit-") as tmp:
        yield tmp


def pending_migrations(run: Run, conns: Mapping[str, Connection], artifact: Artifact) -> None:
    """Check mode: the migrations ``artifact`` would apply to the app's database, listed
    from the database itself (nothing is applied; nothing is kept on the controller)."""
    project = run.project
    if project.db is None or project.database is None:
        return
    with temporary_dir() as tmp:
        directory = unpack_migrations(artifact, tmp)
        found = migrations.load_migrations(directory)
        if not found:
            return
        if not database_exists(conns[project.db.name], project.database):
            names = ", ".join(m.id for m in found)
            run.notes.append(f"database {project.database} does not exist yet: it would be "
                             f"created and {len(found)} migration(s) applied: {names}")
            return
        part = run.run_phase([migrations.migrate(directory, database=project.database,
                                                 name=f"migrations of {project.database}")],
                             f"database: pending migrations of {project.database}",
                             [project.db], conns, check=True)
    todo = [r.diff for h in part.hosts.values() for r in h.results if r.changed]
    pending = [line.split(":")[0] for d in todo for line in d.splitlines() if line.strip()]
    run.notes.append(f"{len(pending)} pending migration(s)" + (f": {', '.join(pending)}"
                                                             if pending else ""))
