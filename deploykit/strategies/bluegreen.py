"""Blue/green deploys with automatic switch-back (runbook 000, on releases).

Each web host runs the app twice, as colours: ``<app>-blue`` and ``<app>-green``
supervisor programs on their own ports, each from its own release directory;
nginx sends all traffic to the active colour (``nginx.switch``). A deploy:

1. **inspect** (read-only): every web host's active colour and releases; the
   colours must agree across the fleet. When the active colour already runs
   this artifact, the deploy only re-asserts that state (``unchanged``).
2. **database** (db host, when ``database`` is set): the database exists,
   ``SELECT 1``, Redis ``PING``, then the artifact's SQL migrations.
   Migrations must be backward compatible (expand first): the old colour keeps
   serving on the new schema until the switch, and after a switch-back.
3. **prepare** the idle colour on every web host: shared ``.env``, install the
   release (bundled wheels, no network), point the colour's link at it, (re)start
   its program, and health-gate it directly (HTTP JSON ``status: ok``, which the
   app derives from its db, redis and disk checks). Any failure here and
   **traffic never moves**: the idle colour is put back as it was, fleet-wide
   (its program, its link, and the new release directory removed).
4. **switch** nginx to the idle colour on every host (``nginx -t`` and reload,
   never restart; the site is written first when the upstream exists already,
   so a site nginx rejects fails before any traffic moves), then **verify
   through nginx**: health, the new version, and the p95 latency budget. Any
   failure here and every host is **switched back automatically** (the runner's
   fleet-wide undo); the release is marked failed.
5. **finish**: ``current`` points at the new release, old releases are pruned;
   after ``grace_seconds`` the old colour's program is stopped.

**Suite gates** (``verify_suite``: a testinfra suite, see :mod:`deploykit.verify`):
its ``pre_switch`` tests run against the idle colour at the end of **prepare**
(after the health gate): a failure there is a failed health gate, traffic never
moves. Its ``post_switch`` tests run at the end of **switch** (after the checks
through nginx, with ``current`` already on the new release): a failure there is a
failed verification, every host is switched back. Canary and rolling deploys get
the same gates from :class:`_Deploy`. Each gate's JUnit XML and JSON results go to
``verify_report_dir`` as ``<deploy id>.<marker>.junit.xml`` / ``.json``.

Every phase is a :class:`~deploykit.runner.Runner` run over one SSH connection
per host; :class:`DeployOutcome` merges their reports (per-step timings) and
says what happened and where traffic is.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deploykit.artifacts import Artifact, unpack_migrations
from deploykit.connection import Connection, LoggedCommand, connect_all
from deploykit.errors import ConfigError, DeployError
from deploykit.inventory import Host
from deploykit.journal import RUNS_DIR
from deploykit.report import NullReporter, Reporter
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Runner, step
from deploykit.secrets import Secret
from deploykit.task import Task
from deploykit.tasks import files, http, migrations, nginx, postgres, redis, releases, services
from deploykit.verify import DeployContext, SuiteTask, Verification, suite_task

log = logging.getLogger(__name__)
COLORS = ("blue", "green")
WAITS = ("health gate", "verify")
"""Steps whose names start so wait on the app (health gates, verification)."""
Outcome = Literal["deployed", "unchanged", "failed", "rolled_back", "checked"]


@dataclass(frozen=True)
class BlueGreen:
    """What to deploy and how (every field but the first three has a default).

    ``command`` runs in the release directory; a relative first element is
    taken from the release (``venv/bin/gunicorn``). The colour's port reaches
    the program as ``PORT`` in its environment. The shared ``.env`` gets
    ``env_mode`` (0600), group ``app_user`` and owner ``env_owner`` (None: the
    app user, who alone reads it). ``verify_suite`` (a testinfra suite directory or
    file) gates the switch with its ``pre_switch`` and ``post_switch`` tests (see the
    module docstring).
    """

    app: str
    artifact: Artifact
    env: str | Secret
    database: str | None = None
    ports: Mapping[str, int] = field(default_factory=lambda: {"blue": 8001, "green": 8002})
    command: Sequence[str] = ("venv/bin/gunicorn", "-c", "gunicorn.conf.py",
                              "sampleapp.web:application")
    app_user: str = "www-data"
    server_name: str = "_"
    health_path: str = "/health"
    version_path: str = "/version"
    health_retries: int = 40
    health_interval: float = 0.25
    latency_budget_ms: float | None = 500.0
    verify_requests: int = 40
    grace_seconds: float = 2.0
    keep_releases: int = 5
    startsecs: int = 2
    startretries: int = 1
    env_mode: int = 0o600
    env_owner: str | None = None
    verify_suite: str | None = None
    verify_timeout: float = 300.0
    verify_report_dir: str = str(RUNS_DIR)

    def __post_init__(self) -> None:
        if sorted(self.ports) != sorted(COLORS):
            raise ConfigError(f"ports must name blue and green, not {sorted(self.ports)}")
        if self.verify_suite is not None and not Path(self.verify_suite).exists():
            raise ConfigError(f"verify_suite {self.verify_suite!r} not found")

    @property
    def release_id(self) -> str:
        """The release this artifact installs as."""
        return self.artifact.release_id

    def program(self, color: str) -> str:
        """The supervisor program of a colour."""
        return f"{self.app}-{color}"


@dataclass
class DeployOutcome:
    """What a blue/green deploy did."""

    result: Outcome
    color: str | None  # the colour serving traffic now
    previous: str | None  # the colour that served before
    report: RunReport
    phases: dict[str, float] = field(default_factory=dict)
    message: str = ""
    logs: dict[str, list[LoggedCommand]] = field(default_factory=dict)
    """Every command sent, per host (secrets redacted): a deploy that finds nothing to
    do sends no write command."""
    waits: dict[str, float] = field(default_factory=dict)
    """Per phase, the seconds its slowest host spent in health gates and verification."""
    verifications: dict[str, Verification] = field(default_factory=dict)
    """Per gate marker (``pre_switch``, ``post_switch``), the suite's results on every host."""

    @property
    def ok(self) -> bool:
        """True when the new release serves (or already served) traffic."""
        return self.result in ("deployed", "unchanged", "checked")

    @property
    def gate_seconds(self) -> float:
        """Wall time spent waiting on health gates and verification (not deploykit's own):
        :attr:`waits` summed over the phases (hosts wait in parallel within a phase)."""
        return sum(self.waits.values())


def other(color: str) -> str:
    """The other colour."""
    return COLORS[1 - COLORS.index(color)]


class _Deploy:
    """One blue/green deploy: the phases share the hosts, connections and report."""

    def __init__(self, plan: BlueGreen, web: Sequence[Host], db: Host | None, *,
                 deploy_id: str, check: bool, reporter: Reporter, forks: int) -> None:
        self.plan = plan
        self.web = list(web)
        self.db = db
        self.check = check
        self.reporter = reporter
        self.forks = forks
        self.report = RunReport(run_id=deploy_id, check=check)
        if isinstance(plan.env, Secret):
            self.report.secrets.append(plan.env)
        self.phases: dict[str, float] = {}
        self.waits: dict[str, float] = {}
        self.conns: dict[str, Connection] = {}
        self.workdir = ""
        self.verifications: dict[str, Verification] = {}

    # -- running phases ----------------------------------------------------------

    def phase(self, name: str, steps: Sequence[Task | object], hosts: Sequence[Host], *,
              undo: Literal["host", "fleet", "none"] = "fleet") -> RunReport:
        """Run one phase's steps over ``hosts`` and merge its report."""
        started = time.monotonic()
        runner = Runner(steps, forks=self.forks, undo=undo, check=self.check,  # type: ignore[arg-type]
                        reporter=self.reporter, run_id=self.report.run_id)
        part = runner.run(hosts, connections=self.conns)
        self.report.merge(part)
        self.record_gates(steps)
        self.phases[name] = time.monotonic() - started
        waited = max((sum(r.duration for r in entry.results if r.task.startswith(WAITS))
                      for entry in part.hosts.values()), default=0.0)
        if waited:
            self.waits[name] = waited
        return part

    def outcome(self, result: Outcome, color: str | None, previous: str | None,
                message: str) -> DeployOutcome:
        self.report.finish()
        logs = {name: list(conn.log) for name, conn in self.conns.items()}
        return DeployOutcome(result, color, previous, self.report, self.phases, message, logs,
                             self.waits, dict(self.verifications))

    # -- suite gates -------------------------------------------------------------

    def suite_step(self, marker: str, color: str | None, port: int) -> SuiteTask | None:
        """The ``marker`` tests of ``verify_suite`` as a step (None without a suite):
        what they verify is this release on ``color`` (None: the single-colour layout)."""
        plan = self.plan
        if plan.verify_suite is None:
            return None
        context = DeployContext(app=plan.app, version=plan.artifact.version,
                                release=plan.release_id, color=color, port=port,
                                program=plan.program(color) if color else plan.app,
                                phase=marker)
        return suite_task(plan.verify_suite, marker=marker, context=context,
                          timeout=plan.verify_timeout,
                          name=f"verify: suite {marker}" + (f" on {color}" if color else ""))

    def record_gates(self, steps: Sequence[object]) -> None:
        """After a phase: add its suite gates' results to :attr:`verifications` and write
        them (JUnit XML, JSON) to ``verify_report_dir``."""
        for task in steps:
            if not isinstance(task, SuiteTask) or task.marker is None:
                continue
            run = task.combined()
            if run is None:
                continue
            task.runs.clear()  # a later phase (rolling's next batch) adds its own hosts
            kept = self.verifications.setdefault(task.marker,
                                                 Verification(task.suite, task.marker))
            kept.merge(run)
            kept.hosts = {h.name: kept.hosts[h.name] for h in self.web if h.name in kept.hosts}
            base = Path(self.plan.verify_report_dir) / f"{self.report.run_id}.{task.marker}"
            try:
                kept.write(f"{base}.junit.xml", f"{base}.json", secrets=self.report.secrets)
            except OSError as exc:
                log.warning("cannot write the %s results to %s: %s", task.marker,
                            self.plan.verify_report_dir, exc)

    def fail_host(self, host: str, message: str) -> None:
        self.report.add(Result(host, "blue/green", Status.FAILED, message=message))

    @staticmethod
    def why(part: RunReport) -> str:
        """``'<step>' failed on web-1, web-2``: a failed phase's first failed step and the
        hosts it failed on (the report has each host's message)."""
        failed = [r for entry in part.hosts.values() for r in entry.results if r.failed]
        if not failed:
            lost = [f"{name}: {entry.error}" for name, entry in part.hosts.items()
                    if entry.error]
            return "; ".join(lost) or "a host failed"
        task = failed[0].task
        hosts = sorted({r.host for r in failed if r.task == task})
        return f"{task!r} failed on {', '.join(hosts)}"

    # -- the deploy --------------------------------------------------------------

    def run(self) -> DeployOutcome:
        plan = self.plan
        workdir = tempfile.TemporaryDirectory(prefix="deploykit-bluegreen-")
        self.workdir = workdir.name
        opened = connect_all(self.web + ([self.db] if self.db else []))
        for name, conn in opened.items():
            if isinstance(conn, DeployError):
                self.report.mark_unreachable(name, str(conn))
            else:
                self.conns[name] = conn
        try:
            if len(self.conns) < len(opened):
                return self.outcome("failed", None, None,
                                    "unreachable hosts; nothing was changed")
            return self._run(plan)
        finally:
            for conn in self.conns.values():
                conn.close()
            workdir.cleanup()

    def _run(self, plan: BlueGreen) -> DeployOutcome:
        started = time.monotonic()
        actives = {h.name: nginx.active_color(self.conns[h.name], plan.app) for h in self.web}
        self.phases["inspect"] = time.monotonic() - started
        if len(set(actives.values())) > 1:
            shown = ", ".join(f"{h} {c or 'none'}" for h, c in actives.items())
            return self.outcome("failed", None, None,
                                f"active colours differ across the fleet ({shown}); switch "
                                f"them to one colour before deploying")
        active = next(iter(actives.values()), None)
        if active is not None and self._already_live(active):
            part = self.phase("re-assert", self.prepare_steps(active, gate=False)
                              + self.switch_steps(active, verify=False), self.web)
            changed = any(r.changed for h in part.hosts.values() for r in h.results)
            if not part.failed and not changed:
                return self.outcome("unchanged", active, active,
                                    f"{plan.release_id} already serves on {active}")
            if part.failed:
                return self.outcome("failed", active, active, "re-asserting the live "
                                    f"release failed: {self.why(part)}")
            return self.outcome("deployed", active, active,
                                f"{plan.release_id} on {active}: drift repaired")
        idle = other(active) if active else COLORS[0]

        if self.check:
            self.phase("prepare (check)", self.check_steps(idle), self.web)
            return self.outcome("checked", active, active,
                                f"would deploy {plan.release_id} to {idle} and switch "
                                f"traffic from {active or 'nothing'} to {idle}")

        if self.db is not None and plan.database:
            part = self.phase("database", self.database_steps(), [self.db], undo="host")
            if part.failed:
                return self.outcome("failed", active, active,
                                    f"database phase failed: {self.why(part)}; traffic was "
                                    "not moved")

        part = self.phase("prepare", self.prepare_steps(idle, gate=True), self.web)
        if part.failed:
            # the fleet-wide undo already put the idle colour back as it was
            return self.outcome("failed", active, active,
                                f"{plan.release_id} failed before the switch on {idle}: "
                                f"{self.why(part)}; traffic stays on {active or 'nothing'}")

        part = self.phase("switch", self.switch_steps(idle, verify=True,
                                                      site_first=active is not None), self.web)
        if part.failed:
            self.after_failure(idle, mark=any(  # blame the release only for its own failure
                r.failed and r.task.startswith("verify:")
                for h in part.hosts.values() for r in h.results))
            return self.outcome("rolled_back", active, active,
                                f"{plan.release_id} failed the switch to {idle}: "
                                f"{self.why(part)}; traffic switched back to "
                                f"{active or 'nothing'}")

        self.phase("finish", self.finish_steps(), self.web)
        if active is not None:
            time.sleep(plan.grace_seconds)
            self.phase("stop old colour", self.stop_steps(active), self.web)
        return self.outcome("deployed", idle, active,
                            f"{plan.release_id} serves on {idle}"
                            + (f"; {active} stopped" if active else ""))

    def finish_steps(self) -> list[object]:
        """After a good switch: ``current`` at the new release, old releases pruned."""
        plan = self.plan
        return [releases.switch(plan.app, plan.release_id),
                releases.cleanup(plan.app, keep=plan.keep_releases)]

    def stop_steps(self, color: str) -> list[object]:
        """After the grace period: the old colour stopped."""
        return [services.service(self.plan.program(color), "stopped", name=f"stop {color}")]

    def _already_live(self, active: str) -> bool:
        """True when every host's ``active`` link points at this artifact's release."""
        for host in self.web:
            infos = releases.list_releases(self.conns[host.name], self.plan.app)
            live = [i for i in infos if active in i.links]
            if not live or live[0].release_id != self.plan.release_id \
                    or live[0].sha256 != self.plan.artifact.sha256 or live[0].failed:
                return False
        return True

    def after_failure(self, idle: str, *, mark: bool) -> None:
        """The switch failed and traffic is back on the old colour: stop ``idle``'s
        program; with ``mark``, the release failed verification: mark it failed (a
        switch refused by the host's nginx is not the release's fault)."""
        steps: list[object] = [services.service(self.plan.program(idle), "stopped",
                                                name=f"stop {idle}")]
        if mark:
            steps.append(releases.mark_failed(self.plan.app, self.plan.release_id,
                                              reason="blue/green deploy failed"))
        self.phase("after failure", steps, self.web, undo="none")

    # -- the steps ----------------------------------------------------------------

    def database_steps(self) -> list[object]:
        plan = self.plan
        assert plan.database is not None
        steps: list[object] = [
            postgres.database(plan.database),
            postgres.query_check(plan.database, "SELECT 1", expect=1,
                                 name="health gate: database SELECT 1"),
            redis.ping(),
        ]
        directory = unpack_migrations(plan.artifact, Path(self.workdir) / "migrations")
        if migrations.load_migrations(directory):
            steps.append(migrations.migrate(directory, database=plan.database,
                                            deploy_id=self.report.run_id))
        return steps

    def env_steps(self) -> list[object]:
        plan = self.plan
        shared = f"{releases.DEFAULT_ROOT}/{plan.app}/shared"
        env = plan.env if isinstance(plan.env, Secret) else Secret(plan.env)
        return [files.directory(shared, mode=0o755, recursive=True),
                files.file(f"{shared}/.env", env, mode=plan.env_mode,
                           owner=plan.env_owner or plan.app_user,
                           group=plan.app_user)]

    def check_steps(self, idle: str) -> list[object]:
        plan = self.plan
        return [*self.env_steps(), releases.install(plan.app, plan.artifact),
                nginx.switch(plan.app, idle, colors=plan.ports)]

    def prepare_steps(self, color: str, *, gate: bool) -> list[object]:
        plan = self.plan
        rdir = releases.release_dir(plan.app, plan.release_id)
        command = list(plan.command)
        if not command[0].startswith("/"):
            command[0] = f"{rdir}/{command[0]}"
        port = plan.ports[color]
        steps: list[object] = [
            *self.env_steps(),
            releases.install(plan.app, plan.artifact),
            releases.switch(plan.app, plan.release_id, link=color),
            services.program(plan.program(color), command, directory=rdir, user=plan.app_user,
                             environment={"PORT": str(port)}, startsecs=plan.startsecs,
                             startretries=plan.startretries,
                             task_name=f"program {plan.program(color)}"),
        ]
        if gate:
            steps.append(http.wait_for_task(
                f"http://127.0.0.1:{port}{plan.health_path}", json_expect={"status": "ok"},
                retries=plan.health_retries, interval=plan.health_interval, via_ssh=True,
                name=f"health gate: {color} {plan.health_path}"))
            suite = self.suite_step("pre_switch", color, port)
            if suite is not None:
                steps.append(suite)
        return steps

    def switch_steps(self, color: str, *, verify: bool, site_first: bool = False) -> list[object]:
        """nginx to ``color`` (and the site), then with ``verify`` the checks through nginx.

        ``site_first`` (the upstream exists already): write the site before moving the
        upstream, so that a site nginx rejects fails while traffic is still where it was.
        """
        plan = self.plan
        switch = nginx.switch(plan.app, color, colors=plan.ports,
                              name=f"nginx: traffic to {color}")
        site = nginx.site(plan.app, plan.server_name, disable_default=True)
        steps: list[object] = [site, switch] if site_first else [switch, site]
        if not verify:
            return steps
        steps += [
            http.wait_for_task(f"http://{{address}}{plan.health_path}",
                               json_expect={"status": "ok"}, retries=10, interval=0.2,
                               name="verify: health through nginx"),
            http.expect_version_task(f"http://{{address}}{plan.version_path}",
                                     plan.artifact.version, retries=5, interval=0.2,
                                     name="verify: version through nginx"),
        ]
        if plan.latency_budget_ms is not None:
            steps.append(step(http.measure_task(
                f"http://{{address}}{plan.version_path}", n=plan.verify_requests, concurrency=4,
                max_error_rate=0.0, max_p95=plan.latency_budget_ms / 1000,
                max_duration=60.0, name="verify: latency through nginx")))
        suite = self.suite_step("post_switch", color, plan.ports[color])
        if suite is not None:  # what it verifies includes current -> the new release
            steps += [releases.switch(plan.app, plan.release_id), suite]
        return steps


def deploy(plan: BlueGreen, web: Sequence[Host], db: Host | None = None, *,
           deploy_id: str, check: bool = False, reporter: Reporter | None = None,
           forks: int = 10) -> DeployOutcome:
    """Deploy ``plan.artifact`` blue/green to the ``web`` hosts (see the module docstring).

    Never raises for a failure on the hosts: the :class:`DeployOutcome` says
    what happened (``deployed``, ``unchanged``, ``failed`` before the switch,
    ``rolled_back`` after it, or ``checked``) and where traffic is.
    """
    return _Deploy(plan, web, db, deploy_id=deploy_id, check=check,
                   reporter=reporter or NullReporter(), forks=forks).run()
