"""Blue/green deploys with automatic switch-back (runbook 000), on any runtime.

Each web host runs the app twice, as colours (``blue``, ``green``), each on its own
port; nginx sends all traffic to the active colour (``nginx.switch``). What a colour
*is* comes from the runtime (:mod:`deploykit.runtimes.release`: a release directory +
venv + program; :mod:`deploykit.runtimes.compose`: a compose project). A deploy:

1. **inspect** (read-only): every web host's active colour, each colour's release, the
   ledger. A fleet left split by an earlier run (hosts on different colours or releases:
   a host lost mid-switch) is first **repaired**: each host goes back to its last
   verified release. When the active colour already runs this release unchanged, the
   deploy changes nothing (``unchanged``) -- unless the release never passed
   verification (a crash after the switch): then it is **verified now**, and finished or
   switched back like any deploy. A changed live release (drift, a new environment) is
   deployed through the idle colour like any other: the serving colour never restarts
   ungated.
2. **prepare** the idle colour on every web host: **install** (files only, nothing that
   serves restarts), then the caller's **post_install** seam (migrations: after the
   release is on the hosts, before its processes start), then **start** its processes
   and **health-gate** the colour directly (plus the ``verify_suite``'s ``pre_switch``
   tests). Any failure here and **traffic never moves**: the idle colour is put back as
   it was, fleet-wide. The ledger records ``prepared``.
3. **switch** nginx to the idle colour on every host (``nginx -t`` and reload; the
   site is written first when the upstream exists), record ``live``, then **verify
   through nginx**: health, the version, the p95 latency budget, the ``post_switch``
   tests. Any failure and every host is **switched back** (the runner's fleet-wide
   undo); **after failure** stops the new colour only on the hosts that route to the old
   colour again -- a host whose switch-back failed keeps serving the new colour -- and
   the outcome says per host what it serves. A release that failed verification is
   recorded ``failed`` and is never a rollback target.
4. **finish**: ``verified`` in the ledger, ``current`` at the new release, old releases
   pruned; after ``grace_seconds`` the old colour is stopped.

:func:`deploy`, :func:`rollback` and :func:`repair` are the plain Python entry points:
they open the connections, run :class:`BlueGreenStrategy` and close them. A pipeline
that holds its own connections builds a
:class:`~deploykit.strategies.base.StrategyContext` and calls the strategy directly.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from deploykit.artifacts import unpack_migrations
from deploykit.connection import Connection, connect_all
from deploykit.errors import DeployError
from deploykit.inventory import Host
from deploykit.report import NullReporter, Reporter
from deploykit.result import RunReport
from deploykit.runner import step
from deploykit.runtimes import ledger
from deploykit.runtimes.compose import ComposeRuntime, ComposeSpec
from deploykit.runtimes.release import ReleaseRuntime, ReleaseSpec
from deploykit.strategies.base import (
    COLORS,
    DeployOutcome,
    EventKind,
    FleetState,
    HostOutcome,
    Outcome,
    Phase,
    ReleaseState,
    Runtime,
    StepList,
    Strategy,
    StrategyContext,
    other,
)
from deploykit.strategies.phases import PhaseRunner, first_failure
from deploykit.tasks import http, migrations, nginx, postgres, redis, releases

__all__ = ["COLORS", "BlueGreen", "BlueGreenStrategy", "DeployOutcome", "Outcome",
           "database_hook", "deploy",
           "make_runtime", "open_context", "other", "repair", "rollback"]

BlueGreen = ReleaseSpec
"""The release runtime's spec under its historical name (``BlueGreen(app, artifact, env)``)."""


def make_runtime(spec: ReleaseSpec | ComposeSpec) -> Runtime:
    """The runtime for a spec: :class:`ReleaseRuntime` or :class:`ComposeRuntime`."""
    return ReleaseRuntime(spec) if isinstance(spec, ReleaseSpec) else ComposeRuntime(spec)


class BlueGreenStrategy(Strategy):
    """Blue/green over ``ctx.runtime`` (see the module docstring)."""

    name = "bluegreen"

    def __init__(self) -> None:
        self.phases: PhaseRunner | None = None
        self.rolling_back = False

    # -- the protocol --------------------------------------------------------------------

    def inspect(self, ctx: StrategyContext) -> FleetState:
        return FleetState({h.name: ctx.runtime.inspect(ctx.conn(h.name), h) for h in ctx.web})

    def run(self, ctx: StrategyContext) -> DeployOutcome:
        self.phases = run = PhaseRunner(ctx)
        started = time.monotonic()
        try:
            fleet = self.inspect(ctx)
        except DeployError as exc:
            run.timed(Phase.INSPECT, started)
            return run.outcome(self, "failed", None, None, f"cannot read the fleet: {exc}; "
                               "nothing was changed")
        run.timed(Phase.INSPECT, started)
        if fleet.split and not ctx.check:
            repaired = self._repair(ctx, run, fleet)
            if repaired is not None:
                return run.outcome(self, "failed", None, None, repaired)
            fleet = self.inspect(ctx)
        if fleet.split:
            shown = ", ".join(f"{n} {s.active_release or '-'} on {s.active or 'none'}"
                              for n, s in fleet.hosts.items())
            return run.outcome(self, "failed", None, None,
                               f"the hosts serve different colours or releases ({shown}); "
                               "nothing was changed")
        active = fleet.active
        release = ctx.runtime.release_id
        if active is not None and all(s.active_release == release
                                      for s in fleet.hosts.values()):
            if not self._drifted(ctx, run, active):
                return self._already_live(ctx, run, fleet, active)
        idle = other(active) if active else COLORS[0]
        if ctx.check:
            run.run("prepare (check)", ctx.runtime.check_steps(idle), color=idle)
            return run.outcome(self, "checked", active, active,
                               f"would deploy {release} to {idle} and switch traffic from "
                               f"{active or 'nothing'} to {idle}")
        failure = self.prepare(ctx, fleet, idle)
        if failure is not None:
            return run.outcome(self, "failed", active, active,
                               f"{release} failed before the switch on {idle}: {failure}; "
                               f"traffic stays on {active or 'nothing'}")
        return self._switch_verify_finish(ctx, run, fleet, idle, active)

    def rollback(self, ctx: StrategyContext) -> DeployOutcome:
        """Bring ``ctx.runtime``'s release (the target: see
        :func:`deploykit.runtimes.ledger.fleet_target`) back through the same gates; the
        release it replaces is recorded ``rolled_back``."""
        self.rolling_back = True
        try:
            return self.run(ctx)
        finally:
            self.rolling_back = False

    def repair(self, ctx: StrategyContext) -> DeployOutcome:
        """Converge a split fleet: every host back on its last verified release."""
        self.phases = run = PhaseRunner(ctx)
        fleet = self.inspect(ctx)
        if not fleet.split:
            return run.outcome(self, "unchanged", fleet.active, fleet.active,
                               "the fleet agrees: nothing to repair")
        failure = self._repair(ctx, run, fleet)
        if failure is not None:
            return run.outcome(self, "failed", None, None, failure)
        after = self.inspect(ctx)
        return run.outcome(self, "deployed", after.active, None,
                           "repaired: " + ", ".join(f"{n} {s.active_release} on {s.active}"
                                                    for n, s in after.hosts.items()))

    # -- phases --------------------------------------------------------------------------

    def prepare(self, ctx: StrategyContext, fleet: FleetState, idle: str) -> str | None:
        """install -> post_install -> start -> health gate on ``idle``; on a failure
        the idle colour is put back (see the module docstring) and the reason returned."""
        run = self.runner_for(ctx)
        runtime = ctx.runtime
        part = run.run(Phase.INSTALL, runtime.install_steps(idle), color=idle)
        if part.failed:  # the install's own fleet-wide undo put the idle colour back
            return first_failure(part)
        failure = run.post_install()
        if failure is None:
            steps = runtime.start_steps(idle) + runtime.gate_steps(idle)
            suite = run.suite_step("pre_switch", idle, runtime.spec.ports[idle])
            if suite is not None:
                steps.append(suite)
            steps += runtime.ledger_steps(ReleaseState.PREPARED, color=idle,
                                          deploy_id=ctx.deploy_id)
            part = run.run(Phase.START, steps, color=idle)
            if not part.failed:
                return None
            failure = first_failure(part)
        else:
            failure = f"post_install failed: {failure}"
        for host in ctx.web:  # the idle colour back as inspect found it, host by host
            run.run(Phase.AFTER_FAILURE, runtime.discard_steps(idle, fleet.hosts[host.name]),
                    [host], undo="none", checkpoint=False)
        return failure

    def switch_steps(self, ctx: StrategyContext, color: str, *, site_first: bool) -> StepList:
        """nginx to ``color`` (and the site), then ``live`` in the ledger. ``site_first``
        (the upstream exists already): the site is written before the upstream moves, so
        a site nginx rejects fails while traffic is still where it was."""
        spec = ctx.runtime.spec
        switch = nginx.switch(ctx.runtime.app, color, colors=spec.ports,
                              name=f"nginx: traffic to {color}")
        site = nginx.site(ctx.runtime.app, spec.server_name, disable_default=True)
        steps: StepList = [site, switch] if site_first else [switch, site]
        return steps + ctx.runtime.ledger_steps(ReleaseState.LIVE, color=color,
                                                deploy_id=ctx.deploy_id,
                                                rollback=self.rolling_back)

    def verify_steps(self, ctx: StrategyContext, color: str) -> StepList:
        """The checks through nginx (health, version, latency) and ``post_switch`` tests."""
        runtime, spec = ctx.runtime, ctx.runtime.spec
        steps: StepList = [
            http.wait_for_task(f"http://{{address}}{spec.health_path}",
                               json_expect={"status": "ok"}, retries=10, interval=0.2,
                               name="verify: health through nginx"),
            http.expect_version_task(f"http://{{address}}{spec.version_path}",
                                     runtime.version, retries=5, interval=0.2,
                                     name="verify: version through nginx"),
        ]
        if spec.latency_budget_ms is not None:
            steps.append(step(http.measure_task(
                f"http://{{address}}{spec.version_path}", n=spec.verify_requests,
                concurrency=4, max_error_rate=0.0, max_p95=spec.latency_budget_ms / 1000,
                max_duration=60.0, name="verify: latency through nginx")))
        suite = self.runner_for(ctx).suite_step("post_switch", color, spec.ports[color])
        if suite is not None:
            if isinstance(runtime, ReleaseRuntime):  # what it verifies includes current
                steps.append(releases.switch(runtime.app, runtime.release_id,
                                             allow_failed=True))
            steps.append(suite)
        return steps

    def verify(self, ctx: StrategyContext, color: str) -> str | None:
        """Verify the live ``color`` through nginx (a release left unverified): None when
        it passed, else why not."""
        part = self.runner_for(ctx).run(Phase.VERIFY, self.verify_steps(ctx, color),
                                        undo="none", color=color)
        return first_failure(part) if part.failed else None

    def finish(self, ctx: StrategyContext, color: str, previous: str | None) -> None:
        """``verified`` in the ledger, the runtime's finish (current link, pruning), the
        replaced release ``rolled_back`` when rolling back; then after the grace period
        ``previous`` stopped."""
        run = self.runner_for(ctx)
        steps = ctx.runtime.ledger_steps(ReleaseState.VERIFIED, color=color,
                                         deploy_id=ctx.deploy_id, rollback=self.rolling_back)
        run.run(Phase.FINISH, steps + ctx.runtime.finish_steps(color), undo="none",
                color=color)
        if previous is not None:
            time.sleep(ctx.runtime.spec.grace_seconds)
            run.run(Phase.STOP_OLD, ctx.runtime.stop_steps(previous), undo="none",
                    color=previous, checkpoint=False)

    def after_failure(self, ctx: StrategyContext, idle: str, *, mark: bool
                      ) -> dict[str, HostOutcome]:
        """The switch failed and its undo switched back where it could: on each host that
        routes to the old colour again, stop ``idle``; a host still routing to ``idle``
        (its switch-back failed) or unreachable keeps it. With ``mark`` (the release
        failed verification) the release is recorded ``failed`` wherever reachable."""
        run = self.runner_for(ctx)
        runtime = ctx.runtime
        back: list[Host] = []
        for host in ctx.web:
            try:
                if nginx.active_color(ctx.conn(host.name), runtime.app) != idle:
                    back.append(host)
            except DeployError:
                continue
        steps = list(runtime.ledger_steps(ReleaseState.FAILED, color=idle,
                                          deploy_id=ctx.deploy_id,
                                          reason="blue/green deploy failed")) if mark else []
        if back:
            run.run(Phase.AFTER_FAILURE, steps + runtime.stop_steps(idle), back,
                    undo="none", color=idle, checkpoint=False)
        stuck = [h for h in ctx.web if h not in back]
        if steps and stuck:
            run.run(Phase.AFTER_FAILURE, steps, stuck, undo="none", checkpoint=False)
        return self.hosts_outcome(ctx)

    # -- the pieces ------------------------------------------------------------------------

    def runner_for(self, ctx: StrategyContext) -> PhaseRunner:
        """The :class:`PhaseRunner` of this strategy's run over ``ctx``."""
        if self.phases is None or self.phases.ctx is not ctx:
            self.phases = PhaseRunner(ctx)
        return self.phases

    def _switch_verify_finish(self, ctx: StrategyContext, run: PhaseRunner, fleet: FleetState,
                              idle: str, active: str | None) -> DeployOutcome:
        release = ctx.runtime.release_id
        steps = self.switch_steps(ctx, idle, site_first=active is not None) \
            + self.verify_steps(ctx, idle)
        part = run.run(Phase.SWITCH, steps, color=idle)
        names = [h.name for h in ctx.web]
        if part.failed:
            mark = any(r.failed and r.task.startswith("verify:")
                       for h in part.hosts.values() for r in h.results)
            if mark:
                ctx.emit(Phase.VERIFY, EventKind.FAILED, hosts=names, color=idle,
                         detail=first_failure(part))
            hosts = self.after_failure(ctx, idle, mark=mark)
            return self._rolled_back(run, hosts, idle, active, part)
        try:  # subscribers (post_switch hooks) may still reject the release
            ctx.emit(Phase.VERIFY, EventKind.FINISHED, hosts=names, color=idle)
        except DeployError as exc:
            run.fail_host(names[0] if names else "?", "verify: after the switch", str(exc))
            if active is not None:
                run.run(Phase.AFTER_FAILURE, [nginx.switch(
                    ctx.runtime.app, active, colors=ctx.runtime.spec.ports,
                    name=f"nginx: traffic back to {active}")], undo="none", color=active,
                    checkpoint=False)
            hosts = self.after_failure(ctx, idle, mark=True)
            return self._rolled_back(run, hosts, idle, active, run.report,
                                     why=f"rejected after the switch: {exc}")
        self.finish(ctx, idle, active)
        previous = fleet.hosts[ctx.web[0].name].active_release if ctx.web else None
        if self.rolling_back and previous is not None and previous != release:
            run.run(Phase.ROLLBACK, ctx.runtime.ledger_steps(
                ReleaseState.ROLLED_BACK, release=previous, deploy_id=ctx.deploy_id,
                reason=f"rolled back to {release}"), undo="none", checkpoint=False)
        return run.outcome(self, "deployed", idle, active,
                           f"{release} serves on {idle}" + (f"; {active} stopped"
                                                            if active else ""))

    def _rolled_back(self, run: PhaseRunner, hosts: dict[str, HostOutcome], idle: str,
                     active: str | None, part: RunReport, why: str | None = None
                     ) -> DeployOutcome:
        release = run.ctx.runtime.release_id
        why = why or first_failure(part)
        stuck = [o for o in hosts.values() if o.color == idle or not o.reachable]
        if not stuck:
            where = f"traffic switched back to {active or 'nothing'}"
        else:
            fine = [n for n, o in hosts.items() if o not in stuck]
            where = (f"traffic switched back to {active or 'nothing'}"
                     + (f" on {', '.join(fine)}" if fine else " on no host")
                     + "; NOT switched back: " + "; ".join(o.describe() for o in stuck))
        return run.outcome(self, "rolled_back", active, active,
                           f"{release} failed the switch to {idle}: {why}; {where}",
                           hosts=hosts)

    def _drifted(self, ctx: StrategyContext, run: PhaseRunner, active: str) -> bool:
        """True when re-installing and starting the live release on ``active`` would
        change something (planned in check mode: nothing is written)."""
        steps = ctx.runtime.install_steps(active) + ctx.runtime.start_steps(active)
        probe = replace(ctx, check=True)
        part = PhaseRunner(probe).run(Phase.INSPECT, steps, color=active, checkpoint=False)
        run.report.merge(part)
        return part.failed or any(r.changed for h in part.hosts.values() for r in h.results)

    def _already_live(self, ctx: StrategyContext, run: PhaseRunner, fleet: FleetState,
                      active: str) -> DeployOutcome:
        """The live release is this one, unchanged: nothing to do once it is verified;
        a release never verified (a crash after the switch) is verified now."""
        release = ctx.runtime.release_id
        unverified = [n for n, s in fleet.hosts.items()
                      if s.state_of(release) != ReleaseState.VERIFIED]
        if not unverified:
            return run.outcome(self, "unchanged", active, active,
                               f"{release} already serves on {active}")
        if ctx.check:
            return run.outcome(self, "checked", active, active,
                               f"{release} serves on {active} but never passed "
                               f"verification on {', '.join(unverified)}: would verify it")
        why = self.verify(ctx, active)
        if why is None:
            old = other(active)
            running = any(s.colors.get(old) and s.colors[old].running
                          for s in fleet.hosts.values())
            self.finish(ctx, active, old if running else None)
            return run.outcome(self, "deployed", active, old,
                               f"{release} serves on {active}: verified now (it served "
                               f"unverified on {', '.join(unverified)})")
        return self._switch_back_unverified(ctx, run, fleet, active, why)

    def _switch_back_unverified(self, ctx: StrategyContext, run: PhaseRunner,
                                fleet: FleetState, active: str, why: str) -> DeployOutcome:
        """An unverified live release failed verification: the old colour is started
        (when stopped), gated and takes the traffic back; the release is ``failed``."""
        runtime, release, old = ctx.runtime, ctx.runtime.release_id, other(active)
        for host in ctx.web:
            state = fleet.hosts[host.name]
            part = run.run(Phase.AFTER_FAILURE, runtime.resume_steps(old, state)
                           + runtime.gate_steps(old), [host], undo="none", color=old)
            if part.failed:
                continue
            run.run(Phase.AFTER_FAILURE, [nginx.switch(runtime.app, old, colors=runtime.spec.ports,
                                                       name=f"nginx: traffic to {old}")],
                    [host], undo="host", color=old, checkpoint=False)
        hosts = self.after_failure(ctx, active, mark=True)
        return run.outcome(self, "rolled_back", old, active,
                           f"{release} served on {active} without having passed "
                           f"verification and failed it now ({why}); "
                           + "; ".join(o.describe() for o in hosts.values()), hosts=hosts)

    def _repair(self, ctx: StrategyContext, run: PhaseRunner, fleet: FleetState) -> str | None:
        """Each host whose live release is not its last verified one goes back to the
        colour holding that release (started and gated first); the release it leaves is
        recorded ``failed`` unless it was verified. Returns why it could not, or None."""
        runtime = ctx.runtime
        started = time.monotonic()
        targets: dict[str, str | None] = {}
        for host in ctx.web:
            entries = ledger.read(ctx.conn(host.name), runtime.ledger_path)
            stack = [r for r in ledger.serving_stack(entries)
                     if ledger.states(entries).get(r) != ReleaseState.FAILED]
            targets[host.name] = stack[-1] if stack else None
        if None in targets.values() or len(set(targets.values())) > 1:
            shown = ", ".join(f"{n} {t or 'none'}" for n, t in targets.items())
            return (f"the fleet is split and its hosts' last verified releases differ "
                    f"({shown}); nothing was changed")
        target = next(iter(targets.values()))
        for host in ctx.web:
            state = fleet.hosts[host.name]
            if state.active_release == target:
                continue
            holder = next((c for c, s in state.colors.items() if s.release == target), None)
            if holder is None:
                return (f"{host.name}: no colour holds {target}, its last verified release; "
                        f"deploy {target} to converge")
            steps = (runtime.resume_steps(holder, state) + runtime.gate_steps(holder)
                     + [nginx.switch(runtime.app, holder, colors=runtime.spec.ports,
                                     name=f"nginx: traffic to {holder}")])
            part = run.run(Phase.REPAIR, steps, [host], undo="host", color=holder)
            if part.failed:
                return f"repairing {host.name} failed: {first_failure(part)}"
            left = state.active_release
            if left is not None and state.state_of(left) != ReleaseState.VERIFIED:
                run.run(Phase.REPAIR, runtime.ledger_steps(
                    ReleaseState.FAILED, release=left, deploy_id=ctx.deploy_id,
                    reason=f"left serving unverified; repaired to {target}"),
                    [host], undo="none", checkpoint=False)
            if state.active is not None and state.active != holder:
                run.run(Phase.REPAIR, runtime.stop_steps(state.active), [host], undo="none",
                        checkpoint=False)
        run.timed(Phase.REPAIR, started)
        return None


# -- plain Python entry points ----------------------------------------------------------------


@contextmanager
def open_context(spec: ReleaseSpec | ComposeSpec, web: Sequence[Host], db: Host | None, *,
                 deploy_id: str, check: bool = False, reporter: Reporter | None = None,
                 forks: int = 10, runtime: Runtime | None = None, extra: Sequence[Host] = ()
                 ) -> Iterator[StrategyContext | DeployError]:
    """Open one connection per host (``web``, ``db`` and ``extra``: a balancer) and yield a
    context over them (closed after), or the first connection error."""
    hosts = list(web) + [h for h in (db, *extra) if h is not None and h not in web]
    opened = connect_all(hosts)
    conns = {n: c for n, c in opened.items() if isinstance(c, Connection)}
    try:
        errors = [e for e in opened.values() if isinstance(e, DeployError)]
        if errors:
            yield errors[0]
            return
        yield StrategyContext(conns, deploy_id, list(web), runtime or make_runtime(spec), db,
                              reporter or NullReporter(), check, forks=forks)
    finally:
        for conn in conns.values():
            conn.close()


def database_hook(runner: Callable[[StrategyContext], PhaseRunner],
                  spec: ReleaseSpec | ComposeSpec, db: Host) -> Callable[[StrategyContext], None]:
    """The library's ``post_install``: the database exists, ``SELECT 1``, Redis ``PING``,
    then the artifact's SQL migrations (a phase ``database`` on ``db``)."""
    def hook(ctx: StrategyContext) -> None:
        assert isinstance(spec, ReleaseSpec) and spec.database
        with tempfile.TemporaryDirectory(prefix="deploykit-bluegreen-") as work:
            steps: StepList = [
                postgres.database(spec.database),
                postgres.query_check(spec.database, "SELECT 1", expect=1,
                                     name="health gate: database SELECT 1"),
                redis.ping(),
            ]
            directory = unpack_migrations(spec.artifact, Path(work) / "migrations")
            if migrations.load_migrations(directory):
                steps.append(migrations.migrate(directory, database=spec.database,
                                                deploy_id=ctx.deploy_id))
            part = runner(ctx).run("database", steps, [db], undo="host", checkpoint=False)
        if part.failed:
            raise DeployError(f"database phase failed: {first_failure(part)}")
    return hook


def _unreachable(error: DeployError, deploy_id: str) -> DeployOutcome:
    report = RunReport(run_id=deploy_id)
    report.mark_unreachable(error.host or "?", str(error))
    report.finish()
    return DeployOutcome("failed", None, None, report,
                         message=f"unreachable hosts ({error}); nothing was changed")


def deploy(plan: ReleaseSpec | ComposeSpec, web: Sequence[Host], db: Host | None = None, *,
           deploy_id: str, check: bool = False, reporter: Reporter | None = None,
           forks: int = 10) -> DeployOutcome:
    """Deploy ``plan`` blue/green to the ``web`` hosts (see the module docstring), over
    connections this opens and closes. Never raises for a failure on the hosts."""
    strategy = BlueGreenStrategy()
    with open_context(plan, web, db, deploy_id=deploy_id, check=check, reporter=reporter,
                      forks=forks) as ctx:
        if isinstance(ctx, DeployError):
            return _unreachable(ctx, deploy_id)
        if db is not None and isinstance(plan, ReleaseSpec) and plan.database:
            ctx.post_install = database_hook(strategy.runner_for, plan, db)
        return strategy.run(ctx)


def rollback(plan: ReleaseSpec | ComposeSpec, web: Sequence[Host], *, deploy_id: str,
             to: str | None = None, reporter: Reporter | None = None,
             forks: int = 10) -> DeployOutcome:
    """Roll back to what served before the live release (or ``to``, which must have
    passed verification on every host): the ledger's target, brought back with the
    files and environment it served with, through the same gates as a deploy."""
    with open_context(plan, web, None, deploy_id=deploy_id, reporter=reporter,
                      forks=forks) as ctx:
        if isinstance(ctx, DeployError):
            return _unreachable(ctx, deploy_id)
        ctx.runtime = target_runtime(ctx, to)
        return BlueGreenStrategy().rollback(ctx)


def target_runtime(ctx: StrategyContext, to: str | None = None) -> Runtime:
    """The runtime of the rollback target (the ledger's, or ``to``) on ``ctx``'s hosts.

    Raises :class:`~deploykit.errors.ConfigError` when there is none, the hosts differ,
    or ``to`` never passed verification."""
    runtime = ctx.runtime
    ledgers = {h.name: ledger.read(ctx.conn(h.name), runtime.ledger_path) for h in ctx.web}
    live = {h.name: runtime.inspect(ctx.conn(h.name), h).active_release for h in ctx.web}
    target = ledger.fleet_target(ledgers, live, to)
    return runtime.for_release(ctx.connections[ctx.web[0].name], target,
                               ledger.entry_of(ledgers[ctx.web[0].name], target,
                                               ReleaseState.VERIFIED))


def repair(plan: ReleaseSpec | ComposeSpec, web: Sequence[Host], *, deploy_id: str,
           reporter: Reporter | None = None, forks: int = 10) -> DeployOutcome:
    """Converge a split fleet (a host lost mid-switch) to its last verified release."""
    with open_context(plan, web, None, deploy_id=deploy_id, reporter=reporter,
                      forks=forks) as ctx:
        if isinstance(ctx, DeployError):
            return _unreachable(ctx, deploy_id)
        return BlueGreenStrategy().repair(ctx)

