"""Rolling deploys for the single-colour layout: hosts updated in serial batches.

Each web host runs the app once: the ``current`` link and one supervisor program
(``<app>``) whose config names the release directory it runs, on one ``port``.
A deploy:

1. **inspect** (read-only): what ``current`` points at on every host (the release
   to go back to). When every host already runs this artifact, the steps only
   re-assert it (``unchanged`` when nothing differed).
2. **database** (db host, when ``database`` is set): as for blue/green.
3. **balancer** (optional): a host whose nginx fronts the fleet. Its upstream
   ``<balancer_name>_upstream`` lists every web host's ``address:port`` (each
   deploy starts with all of them in service) and its site proxies to it on
   ``balancer_listen``. Without a balancer nothing is drained: each host is
   updated in place (its own nginx, if any, is left alone) and briefly serves
   nothing while its program restarts.
4. **batches** (``serial``: a count or ``"30%"``), one after the other:

   * **drain** the batch's hosts on the balancer (``nginx.drain``: marked ``down``,
     verified reload; requests in flight finish);
   * **deploy** on the batch's hosts in parallel: shared ``.env``, install the
     release, ``current`` -> it, the program's config -> it (supervisor restarts
     the program on the config change, and nothing restarts when nothing
     changed), **health gate** (HTTP JSON ``status: ok`` on the host's port, then
     the new version, then the ``verify_suite``'s ``pre_switch`` tests); a host
     that fails is put back as it was by its own undo (program, link, release
     directory);
   * **undrain** the hosts that passed, and those a failure put back that pass
     the health gate again on their old release (others stay drained, in the
     report as ``drained``).

   * **verify** (with a ``verify_suite``): its ``post_switch`` tests on the hosts
     back in service; any failure stops the deploy and rolls back as below.

   When the failed hosts exceed ``max_fail_percentage`` of the fleet, the deploy
   **stops**: no further batch starts, and the hosts already updated are **rolled
   back**, batch by batch in reverse order (drained, ``current`` back to the
   release it pointed at before, the new release marked failed, the program back
   on the old release, health-gated, undrained).
5. **finish**: old releases are pruned on the updated hosts.

Every phase is a :class:`~deploykit.runner.Runner` run over one SSH connection
per host (the blue/green deploy's machinery); :class:`RollingOutcome` says which
hosts were updated, failed, rolled back or never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from deploykit.artifacts import Artifact
from deploykit.errors import ConfigError, DeployError
from deploykit.inventory import Host
from deploykit.journal import RUNS_DIR
from deploykit.report import Reporter
from deploykit.result import Result, RunReport, Status
from deploykit.runner import batches
from deploykit.secrets import Secret
from deploykit.strategies.base import (
    ColourState,
    FleetState,
    HostState,
    Outcome,
    Strategy,
    StrategyContext,
)
from deploykit.strategies.bluegreen import BlueGreen, database_hook, open_context
from deploykit.strategies.phases import PhaseRunner, first_failure
from deploykit.task import Task
from deploykit.tasks import files, http, nginx, releases, services

__all__ = ["Rolling", "RollingOutcome", "RollingStrategy", "deploy"]


@dataclass(frozen=True)
class Rolling:
    """What to deploy and how (every field but the first three has a default).

    ``command`` runs in the release directory (a relative first element is taken
    from the release); the program gets ``PORT`` in its environment. ``serial``
    and ``max_fail_percentage`` (of the whole fleet) as for the Runner.
    """

    app: str
    artifact: Artifact
    env: str | Secret
    database: str | None = None
    port: int = 8000
    command: Sequence[str] = ("venv/bin/gunicorn", "-c", "gunicorn.conf.py",
                              "sampleapp.web:application")
    app_user: str = "www-data"
    health_path: str = "/health"
    version_path: str = "/version"
    health_retries: int = 40
    health_interval: float = 0.25
    serial: int | str = 1
    max_fail_percentage: float = 0.0
    balancer_name: str | None = None
    balancer_listen: int | str = 80
    server_name: str = "_"
    keep_releases: int = 5
    startsecs: int = 2
    startretries: int = 1
    env_mode: int = 0o600
    env_owner: str | None = None
    verify_suite: str | None = None
    verify_timeout: float = 300.0
    verify_report_dir: str = str(RUNS_DIR)

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be from 1 to 65535, not {self.port!r}")
        if isinstance(self.max_fail_percentage, bool) \
                or not isinstance(self.max_fail_percentage, int | float) \
                or not 0 <= self.max_fail_percentage <= 100:
            raise ConfigError(f"max_fail_percentage must be from 0 to 100, "
                              f"not {self.max_fail_percentage!r}")
        nginx.check_app(self.balancer)

    @property
    def release_id(self) -> str:
        """The release this artifact installs as."""
        return self.artifact.release_id

    @property
    def program(self) -> str:
        """The supervisor program (the app's name)."""
        return self.app

    @property
    def balancer(self) -> str:
        """The balancer's upstream and site name (default ``<app>-lb``)."""
        return self.balancer_name or f"{self.app}-lb"

    def as_bluegreen(self) -> BlueGreen:
        """The same release as a blue/green plan (whose environment, database and
        phase machinery the rolling deploy reuses)."""
        return BlueGreen(self.app, self.artifact, self.env, database=self.database,
                         ports={"blue": self.port, "green": self.port}, command=self.command,
                         app_user=self.app_user, health_path=self.health_path,
                         version_path=self.version_path, health_retries=self.health_retries,
                         health_interval=self.health_interval,
                         keep_releases=self.keep_releases, startsecs=self.startsecs,
                         startretries=self.startretries, env_mode=self.env_mode,
                         env_owner=self.env_owner, verify_suite=self.verify_suite,
                         verify_timeout=self.verify_timeout,
                         verify_report_dir=self.verify_report_dir)


@dataclass
class RollingOutcome:
    """What a rolling deploy did, host by host.

    ``result``: ``deployed`` (every host, or all but failures within
    ``max_fail_percentage``), ``unchanged``, ``rolled_back`` (stopped; every host
    touched is back on its previous release), ``failed`` (nothing could start, or a
    host could not be put back: see ``message``), ``checked``.
    """

    result: Outcome
    report: RunReport
    batches: list[list[str]]
    updated: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the release serves on every host that did not fail."""
        return self.result in ("deployed", "unchanged", "checked")


class _Rolling:
    """One rolling deploy over the context's connections (web hosts, db, balancer)."""

    def __init__(self, plan: Rolling, ctx: StrategyContext, balancer: Host | None) -> None:
        self.rolling = plan
        self.ctx = ctx
        self.web = list(ctx.web)
        self.db = ctx.db
        self.conns = ctx.connections
        self.check = ctx.check
        self.runner = PhaseRunner(ctx)
        self.report = self.runner.report
        self.balancer = balancer
        self.groups = batches(self.web, plan.serial)
        if balancer is not None and any(len(b) == len(self.web) for b in self.groups):
            raise ConfigError(f"serial={plan.serial!r} puts every web host in one batch: "
                              f"draining it would leave {balancer.name}'s upstream no server; "
                              "use a smaller serial, or no balancer")
        self.previous: dict[str, str | None] = {}
        self.updated: list[str] = []
        self.failed: list[str] = []
        self.rolled_back: list[str] = []
        self.drained: list[str] = []
        self.broken: list[str] = []  # failed hosts their undo could not put back
        self.started: set[str] = set()

    def phase(self, name: str, steps: Sequence[object], hosts: Sequence[Host], *,
              undo: Literal["host", "fleet", "none"] = "fleet") -> RunReport:
        """Run one phase over the context's connections."""
        return self.runner.run(name, list(steps), hosts, undo=undo)  # type: ignore[arg-type]

    def outcome(self, result: Outcome, message: str) -> RollingOutcome:
        """The rolling outcome (the report is finished here)."""
        self.report.finish()
        return RollingOutcome(result, self.report, [[h.name for h in b] for b in self.groups],
                              self.updated, self.failed, self.rolled_back,
                              [h.name for h in self.web if h.name not in self.started],
                              self.drained, self.runner.phases, message)

    def env_steps(self) -> list[object]:
        """The shared ``.env`` (one program per host: nothing else reads it)."""
        p = self.rolling
        shared = f"{releases.DEFAULT_ROOT}/{p.app}/shared"
        env = p.env if isinstance(p.env, Secret) else Secret(p.env)
        return [files.directory(shared, mode=0o755, recursive=True),
                files.file(f"{shared}/.env", env, mode=p.env_mode,
                           owner=p.env_owner or p.app_user, group=p.app_user)]

    # -- the deploy --------------------------------------------------------------------

    def run(self) -> RollingOutcome:
        """The deploy (see the module docstring)."""
        rid = self.rolling.release_id
        try:
            live = self.inspect()
        except DeployError as exc:
            return self.outcome("failed", f"inspecting the hosts failed; nothing "
                                f"was changed: {exc}")
        if all(live.values()):
            part = self.phase("re-assert", self.host_steps(gate=False), self.web)
            self.started.update(h.name for h in self.web)
            if part.failed:
                return self.outcome("failed",
                                    "re-asserting the live release failed; see the report")
            changed = any(r.changed for h in part.hosts.values() for r in h.results)
            self.updated = [h.name for h in self.web]
            return self.outcome("deployed" if changed else "unchanged",
                                f"{rid} already serves on every host"
                                + ("; drift repaired" if changed else ""))
        if self.check:
            self.phase("check", [*self.env_steps(),
                                 releases.install(self.rolling.app, self.rolling.artifact)],
                       self.web)
            if self.balancer is not None:
                self.phase("balancer (check)", self.balancer_steps(), [self.balancer])
            return self.outcome("checked", f"would deploy {rid} in {len(self.groups)} batch(es): "
                                + " | ".join(", ".join(h.name for h in b) for b in self.groups))
        failure = self.runner.post_install()
        if failure is not None:
            return self.outcome("failed", f"{failure}; no web host was touched")
        if self.balancer is not None and self.phase(
                "balancer", self.balancer_steps(), [self.balancer], undo="host").failed:
            return self.outcome("failed", f"setting up the balancer on "
                                f"{self.balancer.name} failed; no web host was touched")
        for number, batch in enumerate(self.groups, 1):
            stop = self.run_batch(number, batch)
            over = len(self.failed) * 100 / len(self.web) > self.rolling.max_fail_percentage
            if stop is None and over:
                stop = (f"{len(self.failed)} of {len(self.web)} hosts failed "
                        f"({', '.join(self.failed)}), more than max_fail_percentage="
                        f"{self.rolling.max_fail_percentage:g}%")
            if stop is not None:
                return self.stop(number, stop)
        self.phase("finish", [releases.cleanup(self.rolling.app, keep=self.rolling.keep_releases)],
                   [h for h in self.web if h.name in self.updated], undo="none")
        message = f"{rid} serves on {len(self.updated)} of {len(self.web)} hosts"
        if self.failed:
            message += (f"; failed within max_fail_percentage: {', '.join(self.failed)}"
                        + (f" (NOT put back: {', '.join(self.broken)})" if self.broken else
                           " (put back on their previous release)"))
        return self.outcome("deployed", message)

    def inspect(self) -> dict[str, bool]:
        """Per host: already on this artifact? (and :attr:`previous`: ``current``'s release)."""
        live: dict[str, bool] = {}
        for host in self.web:
            infos = releases.list_releases(self.conns[host.name], self.rolling.app)
            current = next((i for i in infos if "current" in i.links), None)
            self.previous[host.name] = None if current is None else current.release_id
            live[host.name] = (current is not None and current.release_id == self.rolling.release_id
                               and current.sha256 == self.rolling.artifact.sha256
                               and not current.failed)
        return live

    def run_batch(self, number: int, batch: Sequence[Host]) -> str | None:
        """Drain, deploy, re-admit one batch; a reason to stop the deploy, or None."""
        names = ", ".join(h.name for h in batch)
        self.started.update(h.name for h in batch)
        if self.balancer is not None and self.phase(
                f"batch {number}: drain", [self.drain(batch, down=True)], [self.balancer],
                undo="none").failed:
            self.failed += [h.name for h in batch]
            return f"draining batch {number} ({names}) on {self.balancer.name} failed"
        part = self.phase(f"batch {number}: deploy", self.host_steps(), batch, undo="host")
        good = [h for h in batch if not part.hosts[h.name].failed]
        bad = [h for h in batch if part.hosts[h.name].failed]
        self.updated += [h.name for h in good]
        self.failed += [h.name for h in bad]
        self.broken += [h.name for h in bad if part.hosts[h.name].undo_failed
                        or part.hosts[h.name].unreachable]
        if self.balancer is None:
            return self.verify_batch(number, good)
        back = list(good)
        restored = [h for h in bad if self.previous[h.name] is not None
                    and not part.hosts[h.name].undo_failed and not part.hosts[h.name].unreachable]
        if restored:
            check = self.phase(f"batch {number}: re-check", [self.health_gate("previous release")],
                               restored, undo="none")
            back += [h for h in restored if not check.hosts[h.name].failed]
        self.drained += [h.name for h in batch if h not in back]
        if back and self.phase(f"batch {number}: undrain", [self.drain(back, down=False)],
                               [self.balancer], undo="none").failed:
            self.drained += [h.name for h in back]
            return f"undraining batch {number} on {self.balancer.name} failed"
        return self.verify_batch(number, good)

    def verify_batch(self, number: int, hosts: Sequence[Host]) -> str | None:
        """The ``post_switch`` tests on a batch's updated hosts (serving again): a reason
        to stop (and roll back) when one fails, else None."""
        gate = self.runner.suite_step("post_switch", None, self.rolling.port)
        if gate is None or not hosts:
            return None
        part = self.phase(f"batch {number}: verify", [gate], hosts, undo="none")
        if not part.failed:
            return None
        return f"post-switch verification failed: {first_failure(part)}"

    def stop(self, number: int, reason: str) -> RollingOutcome:
        """Stop after batch ``number``: roll the updated hosts back, newest batch first."""
        stuck = list(self.broken)
        for index in range(number - 1, -1, -1):
            hosts = [h for h in self.groups[index] if h.name in self.updated]
            if hosts:
                stuck += self.roll_back(index + 1, hosts)
        self.updated = [h for h in self.updated if h not in self.rolled_back]
        parts = [f"stopped after batch {number}: {reason}"]
        restored = [h for h in self.failed if h not in self.broken]
        if restored:
            parts.append(f"put back by their undo: {', '.join(restored)}")
        if self.rolled_back:
            parts.append(f"rolled back: {', '.join(self.rolled_back)}")
        untouched = [h.name for h in self.web if h.name not in self.started]
        if untouched:
            parts.append(f"not started: {', '.join(untouched)}")
        if stuck:
            parts.append(f"COULD NOT ROLL BACK: {', '.join(stuck)} (see the report)")
        return self.outcome("failed" if stuck else "rolled_back", "; ".join(parts))

    def roll_back(self, number: int, hosts: Sequence[Host]) -> list[str]:
        """Roll one batch's updated hosts back; returns the hosts that could not be."""
        stuck = [h.name for h in hosts if self.previous[h.name] is None]
        for name in stuck:
            self.report.add(Result(name, "roll back", Status.FAILED,
                                   message=f"no release before {self.rolling.release_id} to go "
                                           "back to: left on it"))
        movable = [h for h in hosts if self.previous[h.name] is not None]
        if not movable:
            return stuck
        if self.balancer is not None and self.phase(
                f"roll back batch {number}: drain", [self.drain(movable, down=True)],
                [self.balancer], undo="none").failed:
            return stuck + [h.name for h in movable]
        done: list[Host] = []
        for previous in dict.fromkeys(self.previous[h.name] for h in movable):
            assert previous is not None
            group = [h for h in movable if self.previous[h.name] == previous]
            part = self.phase(f"roll back batch {number} to {previous}",
                              self.rollback_steps(previous), group, undo="none")
            done += [h for h in group if not part.hosts[h.name].failed]
        stuck += [h.name for h in movable if h not in done]
        self.rolled_back += [h.name for h in done]
        if self.balancer is not None and done and self.phase(
                f"roll back batch {number}: undrain", [self.drain(done, down=False)],
                [self.balancer], undo="none").failed:
            self.drained += [h.name for h in done]
        self.drained += [h.name for h in movable if h not in done and self.balancer is not None]
        return stuck

    # -- the steps ---------------------------------------------------------------------

    def program(self, release_id: str) -> Task:
        """The app's program running ``release_id`` (its directory is in the config)."""
        p = self.rolling
        rdir = releases.release_dir(p.app, release_id)
        command = list(p.command)
        if not command[0].startswith("/"):
            command[0] = f"{rdir}/{command[0]}"
        return services.program(p.program, command, directory=rdir, user=p.app_user,
                                environment={"PORT": str(p.port)}, startsecs=p.startsecs,
                                startretries=p.startretries,
                                task_name=f"program {p.program} -> {release_id}")

    def health_gate(self, what: str) -> Task:
        """The app answers ``status: ok`` on its port, seen from the host."""
        p = self.rolling
        return http.wait_for_task(f"http://127.0.0.1:{p.port}{p.health_path}",
                                  json_expect={"status": "ok"}, retries=p.health_retries,
                                  interval=p.health_interval, via_ssh=True, in_check_mode=False,
                                  name=f"health gate: {what}")

    def host_steps(self, *, gate: bool = True) -> list[object]:
        """Deploy the release on a host, health-gated (``gate``: and the suite's
        ``pre_switch`` tests)."""
        p = self.rolling
        suite = self.runner.suite_step("pre_switch", None, p.port) if gate else None
        return [
            *self.env_steps(),
            releases.install(p.app, p.artifact),
            releases.switch(p.app, p.release_id),
            self.program(p.release_id),
            self.health_gate(p.release_id),
            http.expect_version_task(f"http://127.0.0.1:{p.port}{p.version_path}",
                                     p.artifact.version, retries=5, interval=0.2, via_ssh=True,
                                     in_check_mode=False,
                                     name=f"health gate: version {p.artifact.version}"),
            *([suite] if suite is not None else []),
        ]

    def rollback_steps(self, previous: str) -> list[object]:
        """Put a host back on ``previous``: link, mark, program, health gate."""
        p = self.rolling
        return [
            releases.switch(p.app, previous),
            releases.mark_failed(p.app, p.release_id,
                                 reason=f"rolling deploy stopped; rolled back to {previous}"),
            self.program(previous),
            self.health_gate(previous),
        ]

    def server(self, host: Host) -> str:
        """A web host's address in the balancer's upstream."""
        address = host.address
        if ":" in address and not address.startswith("["):
            address = f"[{address}]"
        return f"{address}:{self.rolling.port}"

    def balancer_steps(self) -> list[object]:
        """The balancer's upstream (every web host in service) and its site."""
        p = self.rolling
        return [
            nginx.upstream(p.balancer, [nginx.Server(self.server(h)) for h in self.web],
                           name=f"nginx: {p.balancer} upstream of {len(self.web)} hosts"),
            nginx.site(p.balancer, p.server_name, listen=p.balancer_listen),
        ]

    def drain(self, hosts: Sequence[Host], *, down: bool) -> Task:
        """Take hosts out of the balancer's upstream (or put them back)."""
        addresses = [self.server(h) for h in hosts]
        verb = "drain" if down else "undrain"
        make = nginx.drain if down else nginx.undrain
        return make(self.rolling.balancer, addresses,
                    name=f"nginx: {verb} {', '.join(h.name for h in hosts)}")


def deploy(plan: Rolling, web: Sequence[Host], db: Host | None = None, *, deploy_id: str,
           balancer: Host | None = None, check: bool = False, reporter: Reporter | None = None,
           forks: int = 10) -> RollingOutcome:
    """Deploy ``plan.artifact`` to ``web`` in serial batches (see the module docstring).

    Args:
        plan: the release and how to roll it out.
        web: the hosts, in the order the batches take them.
        db: the database host, for ``plan.database``.
        deploy_id: the run's id in reports.
        balancer: a host whose nginx fronts ``web`` (may be one of them); batches are
            drained there while they are updated.
        check: only show what would change.
        reporter, forks: as for :class:`~deploykit.runner.Runner`.

    Raises :class:`ConfigError` before anything runs for a bad ``serial`` or a batch
    that would drain every host; never raises for a failure on the hosts.
    """
    batches(list(web), plan.serial)  # a bad serial is refused before any connection
    extra = [balancer] if balancer is not None and balancer not in web else []
    with open_context(plan.as_bluegreen(), web, db, deploy_id=deploy_id, check=check,
                      reporter=reporter, forks=forks, extra=extra) as ctx:
        if isinstance(ctx, DeployError):
            report = RunReport(run_id=deploy_id)
            report.mark_unreachable(ctx.host or "?", str(ctx))
            report.finish()
            return RollingOutcome("failed", report, [], message=f"unreachable hosts ({ctx}); "
                                  "nothing was changed")
        run = _Rolling(plan, ctx, balancer)
        if db is not None and plan.database:
            ctx.post_install = database_hook(lambda c: run.runner, plan.as_bluegreen(), db)
        return run.run()


class RollingStrategy(Strategy):
    """Rolling deploys on the :class:`~deploykit.strategies.base.Strategy` protocol: the
    context's runtime (a :class:`~deploykit.runtimes.release.ReleaseRuntime`) gives the
    release; these settings say how to roll it out (see :class:`Rolling`)."""

    name = "rolling"

    def __init__(self, *, port: int = 8000, serial: int | str = 1,
                 max_fail_percentage: float = 0.0, balancer: Host | None = None,
                 balancer_name: str | None = None, balancer_listen: int | str = 80) -> None:
        self.port = port
        self.serial = serial
        self.max_fail_percentage = max_fail_percentage
        self.balancer = balancer
        self.balancer_name = balancer_name
        self.balancer_listen = balancer_listen

    def plan(self, ctx: StrategyContext) -> Rolling:
        """The :class:`Rolling` plan of ``ctx``'s release runtime with these settings."""
        spec = ctx.runtime.spec
        if not isinstance(spec, BlueGreen) or spec.env is None:
            raise ConfigError("rolling deploys need the release runtime (runtime: release) "
                              "with the environment's content")
        return Rolling(spec.app, spec.artifact, spec.env, database=spec.database,
                       port=self.port, command=spec.command, app_user=spec.app_user,
                       health_path=spec.health_path, version_path=spec.version_path,
                       health_retries=spec.health_retries, health_interval=spec.health_interval,
                       serial=self.serial, max_fail_percentage=self.max_fail_percentage,
                       balancer_name=self.balancer_name, balancer_listen=self.balancer_listen,
                       server_name=spec.server_name, keep_releases=spec.keep_releases,
                       startsecs=spec.startsecs, startretries=spec.startretries,
                       env_mode=spec.env_mode, env_owner=spec.env_owner,
                       verify_suite=spec.verify_suite, verify_timeout=spec.verify_timeout,
                       verify_report_dir=spec.verify_report_dir)

    def inspect(self, ctx: StrategyContext) -> FleetState:
        """Each host's ``current`` release (one colour: ``active`` is None)."""
        hosts = {}
        for host in ctx.web:
            infos = releases.list_releases(ctx.conn(host.name), ctx.runtime.app)
            current = next((i.release_id for i in infos if "current" in i.links), None)
            hosts[host.name] = HostState(host.name, None,
                                         {"current": ColourState("current", current)})
        return FleetState(hosts)

    def run(self, ctx: StrategyContext) -> RollingOutcome:  # type: ignore[override]
        """The rolling deploy over ``ctx`` (the balancer's connection must be in it)."""
        return _Rolling(self.plan(ctx), ctx, self.balancer).run()

    def rollback(self, ctx: StrategyContext) -> RollingOutcome:  # type: ignore[override]
        """Roll ``ctx.runtime``'s (installed, earlier) release out again, batch by batch."""
        return self.run(ctx)
