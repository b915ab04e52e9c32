"""Canary deploys with automatic analysis (runbook 001), on the blue/green layout.

The new release runs beside the stable one as the idle colour (exactly as
:mod:`~deploykit.strategies.bluegreen` prepares it), and nginx's upstream shifts
traffic to it in weighted steps (default 5 -> 25 -> 50 -> 100 %). A deploy:

1. **inspect**: the active colour is the stable side; it must agree across the
   fleet, and there must be one (the first release goes out with blue/green). When
   the stable colour already runs this artifact, only the traffic is re-asserted.
2. **database** (when ``release.database`` is set): as for blue/green.
3. **prepare** the canary colour on every web host (release, program, health gate,
   the ``verify_suite``'s ``pre_switch`` tests), and the analysis log
   (:func:`~deploykit.strategies.analysis.access_log`). Any failure: the canary
   colour is put back as it was, traffic never moved.
4. **steps**: for each weight, ``nginx.weights`` on every host (tested, reloaded,
   verified; the marker keeps naming the stable colour), then an **analysis
   window**: wait ``window`` seconds, read every host's new log lines (one read-only
   round trip per host), and judge the canary against the stable side
   (:func:`~deploykit.strategies.analysis.judge`: 5xx share, p95, margins, a
   minimum request count). Too few canary requests: the window is extended, up to
   ``max_extensions`` more windows; still too few is **inconclusive**: rolled back
   (or paused, with ``on_inconclusive="pause"``), never promoted.
5. **promote** when every step passed: ``nginx.switch`` to the canary colour (it
   becomes the active one), ``current`` points at the release, the ``verify_suite``'s
   ``post_switch`` tests run (failing: rolled back as below, the release marked
   failed), old releases are pruned; after ``grace_seconds`` the old colour's
   program is stopped.
   **Roll back** at the first failing step: ``nginx.switch`` back to the stable
   colour (the canary's weight goes to nothing), the canary's program is stopped
   and the release marked failed (not when the step was only inconclusive or the
   operator aborted: there was no evidence against it).

``pause=True`` holds after the first analysed step (``pause=25``: after the 25 %
step) and returns ``paused``; :func:`promote` later continues from the weight
found on the hosts (``full=True``: straight to 100 % without more analysis), and
:func:`abort` rolls back. The state between them is on the hosts only (the
upstream's weights and the colour links), so any controller can continue.

The strategy does not generate traffic. A ``traffic`` callback (tests, demos) is
called at the start of every window with its length; the window then lasts at
least that long. Every step's figures are in :attr:`CanaryOutcome.steps` and, per
host, in the report (a ``canary: analysis N %`` result whose ``data`` holds the
fleet's and the host's figures, the checks and the verdict).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from deploykit.errors import ConfigError, DeployError
from deploykit.inventory import Host
from deploykit.report import Reporter
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Step
from deploykit.runtimes.compose import ComposeSpec
from deploykit.runtimes.release import ReleaseSpec
from deploykit.strategies.analysis import (
    AccessLog,
    Comparison,
    LogWindow,
    Thresholds,
    Verdict,
    access_log,
    compare,
)
from deploykit.strategies.base import (
    DeployOutcome,
    FleetState,
    ReleaseState,
    StepList,
    Strategy,
    StrategyContext,
    other,
)
from deploykit.strategies.bluegreen import BlueGreenStrategy, database_hook, open_context
from deploykit.strategies.phases import PhaseRunner, first_failure
from deploykit.task import Task
from deploykit.tasks import nginx

__all__ = ["Canary", "CanaryOutcome", "CanaryStrategy", "StepReport", "abort", "deploy",
           "promote"]

Traffic = Callable[[float], object]
CanaryResult = Literal["deployed", "unchanged", "failed", "rolled_back", "paused", "checked"]
BACKEND = "127.0.0.1"


@dataclass(frozen=True)
class Canary:
    """A canary deploy: the release (a blue/green plan) and how to shift and judge.

    ``steps`` are canary weights in percent, increasing, 1 to 100; ``window`` the
    seconds of traffic each step is judged on; ``max_extensions`` how many more
    windows a step may wait for ``thresholds.min_requests`` canary requests.
    """

    release: ReleaseSpec | ComposeSpec
    steps: Sequence[int] = (5, 25, 50, 100)
    window: float = 60.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    max_extensions: int = 2
    on_inconclusive: Literal["rollback", "pause"] = "rollback"
    log: AccessLog = field(default_factory=AccessLog)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 100
                            for w in steps):
            raise ConfigError(f"canary steps must be percentages from 1 to 100, not {steps!r}")
        if any(a >= b for a, b in itertools.pairwise(steps)):
            raise ConfigError(f"canary steps must increase, not {steps!r}")
        object.__setattr__(self, "steps", steps)
        if isinstance(self.window, bool) or not isinstance(self.window, int | float) \
                or not 0 < self.window <= 3600:
            raise ConfigError(f"canary window must be in (0, 3600] seconds, not {self.window!r}")
        if isinstance(self.max_extensions, bool) or not isinstance(self.max_extensions, int) \
                or not 0 <= self.max_extensions <= 100:
            raise ConfigError(f"max_extensions must be an integer from 0 to 100, "
                              f"not {self.max_extensions!r}")
        if self.on_inconclusive not in ("rollback", "pause"):
            raise ConfigError(f"on_inconclusive must be 'rollback' or 'pause', "
                              f"not {self.on_inconclusive!r}")

    def address(self, color: str) -> str:
        """The upstream address of a colour (what the access log names)."""
        return f"{BACKEND}:{self.release.ports[color]}"


@dataclass
class StepReport:
    """One step's analysis: its figures, verdict, and what reading them cost."""

    index: int
    weight: int
    windows: int
    seconds: float
    comparison: Comparison
    read_seconds: float
    compute_seconds: float
    bytes: int
    lines: int
    malformed: int

    @property
    def verdict(self) -> Verdict:
        """The verdict on the canary at this step."""
        return self.comparison.verdict

    def summary(self) -> str:
        """``5 %: canary 23 requests, 0.0% 5xx, p95 1004 ms; stable ...: fail (...)``."""
        c = self.comparison
        text = (f"{self.weight} %: canary {c.canary.describe()}; stable {c.stable.describe()}"
                f" ({self.windows} window{'s' if self.windows > 1 else ''}, "
                f"{self.seconds:.1f} s): {self.verdict.status}")
        return text + (f": {'; '.join(self.verdict.reasons)}" if self.verdict.reasons else "")

    def as_dict(self, host: str | None = None) -> dict[str, Any]:
        """Plain data: the step, the costs, the fleet's figures and one host's (or all)."""
        return {"step": self.index, "weight": self.weight, "windows": self.windows,
                "seconds": round(self.seconds, 3), "read_seconds": round(self.read_seconds, 4),
                "compute_seconds": round(self.compute_seconds, 4), "bytes": self.bytes,
                "lines": self.lines, "malformed": self.malformed,
                **self.comparison.as_dict(host)}


@dataclass
class CanaryOutcome:
    """What a canary run did and where traffic is.

    ``result``: ``deployed`` (promoted), ``unchanged``, ``failed`` (before any
    traffic moved, or a rollback that itself failed: see ``message``),
    ``rolled_back``, ``paused`` or ``checked``. ``color`` is the colour marked
    active (the stable one until promotion); ``step`` the weight held when paused,
    or reached when rolled back or promoted.
    """

    result: CanaryResult
    color: str | None
    previous: str | None
    report: RunReport
    phases: dict[str, float] = field(default_factory=dict)
    message: str = ""
    steps: list[StepReport] = field(default_factory=list)
    step: int | None = None

    @property
    def ok(self) -> bool:
        """True when nothing failed: promoted, unchanged, paused or checked."""
        return self.result in ("deployed", "unchanged", "paused", "checked")


class _StepAborted(DeployError):
    """A step could not be analysed (a read failed): roll back without a verdict."""


class _Canary:
    """One canary run over the web hosts, on the context's connections (the blue/green
    strategy's prepare and steps, any runtime)."""

    def __init__(self, canary: Canary, ctx: StrategyContext, *,
                 traffic: Traffic | None = None, pause: bool | int = False) -> None:
        if not isinstance(pause, bool) and pause not in canary.steps:
            raise ConfigError(f"pause={pause!r}: not one of the steps {list(canary.steps)}")
        self.canary = canary
        self.ctx = ctx
        self.runtime = ctx.runtime
        self.plan = ctx.runtime.spec
        self.web = list(ctx.web)
        self.conns = ctx.connections
        self.reporter = ctx.reporter
        self.check = ctx.check
        self.bluegreen = BlueGreenStrategy()
        self.runner = self.bluegreen.phases = PhaseRunner(ctx)
        self.report = self.runner.report
        self.phases = self.runner.phases
        self.traffic = traffic
        self.pause = pause
        self.window = LogWindow(canary.log)
        self.reports: list[StepReport] = []

    def phase(self, name: str, steps: Sequence[Task | Step], hosts: Sequence[Host], *,
              undo: Literal["host", "fleet", "none"] = "fleet") -> RunReport:
        """Run one phase over the context's connections."""
        return self.runner.run(name, list(steps), hosts, undo=undo)

    def done(self, result: CanaryResult, color: str | None, previous: str | None,
             message: str, step: int | None = None) -> CanaryOutcome:
        """The outcome (the report is finished here)."""
        self.report.finish()
        return CanaryOutcome(result, color, previous, self.report, self.phases, message,
                             self.reports, step)

    def inspect(self) -> str | None:
        """The active (stable) colour, the same on every web host; raises DeployError."""
        fleet = self.bluegreen.inspect(self.ctx)
        if len(set(fleet.actives.values())) > 1:
            shown = ", ".join(f"{h} {c or 'none'}" for h, c in fleet.actives.items())
            raise DeployError(f"active colours differ across the fleet ({shown}); switch "
                              "them to one colour first")
        self.fleet = fleet
        return fleet.active

    def _already_live(self, stable: str) -> bool:
        """True when every host's stable colour holds this release, verified."""
        release = self.runtime.release_id
        return all(s.active_release == release and s.state_of(release) == ReleaseState.VERIFIED
                   for s in self.fleet.hosts.values())

    def deploy(self) -> CanaryOutcome:
        """A new canary: prepare it, then the steps (see the module docstring)."""
        steps, runtime = self.canary.steps, self.runtime
        release = runtime.release_id
        try:
            stable = self.inspect()
            live = stable is not None and self._already_live(stable)
        except DeployError as exc:
            return self.done("failed", None, None, str(exc))
        if stable is None:
            return self.done("failed", None, None,
                             f"no colour of {runtime.app} serves traffic: a canary needs a "
                             "stable release beside it (deploy the first one with "
                             "bluegreen.deploy)")
        if live:
            part = self.phase("re-assert", [nginx.switch(runtime.app, stable,
                                                         colors=self.plan.ports)], self.web)
            if part.failed:
                return self.done("failed", stable, stable,
                                 "re-asserting the live release failed; see the report")
            changed = any(r.changed for h in part.hosts.values() for r in h.results)
            return self.done("deployed" if changed else "unchanged", stable, stable,
                             f"{release} already serves on {stable}"
                             + ("; traffic re-asserted" if changed else ""))
        canary = other(stable)
        if self.check:
            self.phase("prepare (check)", [access_log(self.canary.log),
                                           *runtime.check_steps(canary)[:-1],
                                           self.weights(stable, canary, steps[0])], self.web)
            return self.done("checked", stable, stable,
                             f"would deploy {release} to {canary} and shift traffic "
                             f"from {stable} in steps of {', '.join(map(str, steps))} %")
        if self.phase("canary: access log", [access_log(self.canary.log)], self.web).failed:
            return self.done("failed", stable, stable, "setting up the access log failed; "
                             "traffic was not moved")
        failure = self.bluegreen.prepare(self.ctx, self.fleet, canary)
        if failure is not None:
            return self.done("failed", stable, stable,
                             f"{release} failed before taking traffic on {canary}: "
                             f"{failure}; traffic stays on {stable}")
        return self.advance(stable, canary, 0)

    def resume(self, full: bool) -> CanaryOutcome:
        """Continue a paused canary from the weight on the hosts."""
        try:
            stable = self.inspect()
            if stable is None:
                raise DeployError(f"no colour of {self.runtime.app} serves traffic: no canary "
                                  "to promote")
            canary = other(stable)
            weight = self.current_weight(stable, canary)
        except DeployError as exc:
            return self.done("failed", None, None, str(exc))
        later = [i for i, w in enumerate(self.canary.steps) if w > weight]
        if full or not later:
            return self.promote_now(stable, canary)
        return self.advance(stable, canary, later[0])

    def abort(self) -> CanaryOutcome:
        """Roll a canary back on the operator's word (the release is not marked failed)."""
        try:
            stable = self.inspect()
            if stable is None:
                raise DeployError(f"no colour of {self.runtime.app} serves traffic: nothing "
                                  "to abort")
        except DeployError as exc:
            return self.done("failed", None, None, str(exc))
        canary = other(stable)
        try:
            weight: int | None = self.current_weight(stable, canary)
        except DeployError:
            weight = None
        return self.roll_back(stable, canary, "aborted by the operator", weight, mark=False)

    # -- steps and analysis -------------------------------------------------------------

    def weights(self, stable: str, canary: str, weight: int) -> Task:
        """The upstream at ``weight`` % canary (the marker keeps naming ``stable``)."""
        return nginx.weights(self.plan.app, {stable: 100 - weight, canary: weight},
                             colors=self.plan.ports, active=stable,
                             name=f"nginx: {canary} {weight} %, {stable} {100 - weight} %")

    def advance(self, stable: str, canary: str, start: int) -> CanaryOutcome:
        """Run the steps from ``start``: weights, analysis; roll back, pause or promote."""
        steps = self.canary.steps
        for index in range(start, len(steps)):
            weight = steps[index]
            label = f"step {index + 1} ({weight} %)"
            part = self.phase(f"{label}: weights",
                              [self.weights(stable, canary, weight),
                               self.window.start_task("canary: start analysis window")],
                              self.web)
            if part.failed:
                return self.roll_back(stable, canary, f"setting the weights failed at "
                                      f"{weight} % (see the report)", weight, mark=False)
            try:
                report = self.analyse(index, weight, stable, canary)
            except _StepAborted as exc:
                return self.roll_back(stable, canary, exc.message, weight, mark=False)
            verdict = report.verdict
            if verdict.status == "fail":
                return self.roll_back(stable, canary, f"analysis failed at {weight} %: "
                                      f"{'; '.join(verdict.reasons)}", weight, mark=True)
            if verdict.status == "inconclusive":
                if self.canary.on_inconclusive == "pause":
                    return self.done("paused", stable, stable,
                                     f"{self.runtime.release_id} held at {weight} %: "
                                     f"{'; '.join(verdict.reasons)}", weight)
                return self.roll_back(stable, canary, f"no verdict at {weight} %: "
                                      f"{'; '.join(verdict.reasons)}", weight, mark=False)
            hold = index == start if self.pause is True else (
                self.pause is not False and self.pause == weight)
            if hold:
                return self.done("paused", stable, stable,
                                 f"{self.runtime.release_id} passed {weight} % on {canary} and is "
                                 "held there: promote or abort it", weight)
        return self.promote_now(stable, canary)

    def wait_window(self) -> None:
        """Let one window of traffic pass (calling the ``traffic`` hook, if any)."""
        started = time.monotonic()
        if self.traffic is not None:
            self.traffic(self.canary.window)
        remaining = self.canary.window - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)

    def analyse(self, index: int, weight: int, stable: str, canary: str) -> StepReport:
        """Windows of traffic until the canary can be judged (or no more extensions)."""
        sides = {self.canary.address(stable): "stable", self.canary.address(canary): "canary"}
        started = time.monotonic()
        bytes_before, malformed_before = self.window.bytes, self.window.malformed
        read_s = compute_s = 0.0
        windows = 0
        while True:
            windows += 1
            self.wait_window()
            t0 = time.monotonic()
            part = self.phase(f"step {index + 1} ({weight} %): read {windows}",
                              [self.window.read_task(f"canary: read access log ({weight} %, "
                                                     f"window {windows})")],
                              self.web, undo="none")
            t1 = time.monotonic()
            read_s += t1 - t0
            if part.failed:
                hosts = ", ".join(h for h, r in part.hosts.items() if r.failed)
                raise _StepAborted(f"reading the access log failed on {hosts} at {weight} % "
                                   "(see the report): not judged")
            comparison = compare(self.window.records, sides, self.canary.thresholds,
                                 upstream=f"{self.plan.app}_upstream")
            compute_s += time.monotonic() - t1
            if comparison.verdict.status != "inconclusive" \
                    or windows > self.canary.max_extensions:
                break
        report = StepReport(index + 1, weight, windows, time.monotonic() - started, comparison,
                            read_s, compute_s, self.window.bytes - bytes_before,
                            sum(len(r) for r in self.window.records.values()),
                            self.window.malformed - malformed_before)
        self.reports.append(report)
        status = Status.FAILED if comparison.verdict.status == "fail" or (
            comparison.verdict.status == "inconclusive"
            and self.canary.on_inconclusive == "rollback") else Status.OK
        for host in self.web:
            result = Result(host.name, f"canary: analysis {weight} %", status,
                            message=report.summary(), duration=report.seconds,
                            data=report.as_dict(host.name))
            self.report.add(result)
            self.reporter.step_finished(result)
        return report

    def current_weight(self, stable: str, canary: str) -> int:
        """The canary's weight (%) on the hosts, which must agree and run this release."""
        app, release_id = self.runtime.app, self.runtime.release_id
        upstream_file = nginx.DEFAULT_SETTINGS.upstream_file(app)
        address = self.canary.address(canary)
        found: dict[str, int] = {}
        for host in self.web:
            conn = self.conns[host.name]
            running = self.fleet.hosts[host.name].colors[canary].release or "nothing"
            if running != release_id:
                raise DeployError(f"{host.name}: the {canary} colour runs {running}, not "
                                  f"{release_id}: no canary of it to continue")
            text = conn.run(["cat", "--", upstream_file], write=False, check=False).stdout
            try:
                lines = nginx.parse_upstream(text, app)
            except DeployError as exc:
                raise DeployError(f"{host.name}: {upstream_file}: {exc.message}") from None
            total = 0
            mine = 0
            for line in lines:
                if line.down or line.backup:
                    continue
                weight = next((int(p[7:]) for p in line.params
                               if p.startswith("weight=") and p[7:].isdigit()), 1)
                total += weight
                mine += weight if line.address == address else 0
            if not mine:
                raise DeployError(f"{host.name}: the upstream sends {canary} nothing: no "
                                  f"canary of {release_id} in progress")
            found[host.name] = round(100 * mine / total)
        if len(set(found.values())) > 1:
            shown = ", ".join(f"{h} {w} %" for h, w in found.items())
            raise DeployError(f"canary weights differ across the fleet ({shown}); abort or "
                              "deploy again")
        return next(iter(found.values()))

    # -- endings ------------------------------------------------------------------------

    def roll_back(self, stable: str, canary: str, reason: str, weight: int | None, *,
                  mark: bool) -> CanaryOutcome:
        """All traffic back to ``stable``, the canary stopped (and its release marked
        failed when ``mark``)."""
        plan, runtime = self.plan, self.runtime
        steps: StepList = [nginx.switch(plan.app, stable, colors=plan.ports,
                                        name=f"nginx: traffic back to {stable}"),
                           *runtime.stop_steps(canary)]
        if mark:
            steps += runtime.ledger_steps(ReleaseState.FAILED, color=canary,
                                          deploy_id=self.ctx.deploy_id,
                                          reason=f"canary failed at {weight} %")
        part = self.phase("roll back", steps, self.web, undo="none")
        if part.failed:
            hosts = ", ".join(h for h, r in part.hosts.items() if r.failed)
            return self.done("failed", None, stable,
                             f"ROLLBACK FAILED on {hosts} (see the report) after: {reason}",
                             weight)
        return self.done("rolled_back", stable, stable,
                         f"{runtime.release_id} rolled back: {reason}; traffic on {stable}, "
                         f"{canary} stopped", weight)

    def promote_now(self, stable: str, canary: str) -> CanaryOutcome:
        """Every step passed: the canary colour becomes the active one (then, with a
        ``verify_suite``, its ``post_switch`` tests: failing, everything is rolled back)."""
        plan, runtime, deploy_id = self.plan, self.runtime, self.ctx.deploy_id
        steps: StepList = [
            nginx.switch(plan.app, canary, colors=plan.ports,
                         name=f"nginx: all traffic to {canary}"),
            *runtime.ledger_steps(ReleaseState.LIVE, color=canary, deploy_id=deploy_id),
        ]
        gate = self.runner.suite_step("post_switch", canary, plan.ports[canary])
        if gate is not None:
            steps.append(gate)
        steps += runtime.ledger_steps(ReleaseState.VERIFIED, color=canary, deploy_id=deploy_id)
        steps += runtime.finish_steps(canary)
        part = self.phase("promote", steps, self.web)
        if part.failed:
            if gate is not None and any(r.failed and r.task == gate.name
                                        for h in part.hosts.values() for r in h.results):
                # the promote phase's undo put the last step's weights back
                return self.roll_back(stable, canary, f"post-switch verification failed: "
                                      f"{first_failure(part)}", self.canary.steps[-1],
                                      mark=True)
            return self.done("failed", None, stable,
                             f"promoting {runtime.release_id} failed (see the report); the "
                             "upstream keeps the last step's weights")
        time.sleep(plan.grace_seconds)
        self.phase("stop old colour", runtime.stop_steps(stable), self.web)
        return self.done("deployed", canary, stable,
                         f"{runtime.release_id} promoted to {canary}; {stable} stopped",
                         self.canary.steps[-1])


def deploy(canary: Canary, web: Sequence[Host], db: Host | None = None, *, deploy_id: str,
           check: bool = False, pause: bool | int = False, traffic: Traffic | None = None,
           reporter: Reporter | None = None, forks: int = 10) -> CanaryOutcome:
    """Deploy ``canary.release`` as a canary on the ``web`` hosts (see the module docstring).

    Args:
        canary: the release (a :class:`~deploykit.strategies.bluegreen.BlueGreen` plan)
            and the steps, window and thresholds.
        web: the web hosts (each with its nginx in front of both colours).
        db: the database host, for ``release.database``.
        deploy_id: the run's id in reports.
        check: only show what would change (nothing is written).
        pause: hold after the first analysed step (True) or after the step of this
            weight; continue with :func:`promote`, roll back with :func:`abort`.
        traffic: called with the window's length at the start of each window.
        reporter, forks: as for :class:`~deploykit.runner.Runner`.

    Never raises for a failure on the hosts: the :class:`CanaryOutcome` says what
    happened, where traffic is, and every step's figures.
    """
    with open_context(canary.release, web, db, deploy_id=deploy_id, check=check,
                      reporter=reporter, forks=forks) as ctx:
        if isinstance(ctx, DeployError):
            return _unreachable(ctx, deploy_id)
        run = _Canary(canary, ctx, traffic=traffic, pause=pause)
        if db is not None and isinstance(canary.release, ReleaseSpec) \
                and canary.release.database:
            ctx.post_install = database_hook(lambda c: run.runner, canary.release, db)
        return run.deploy()


def promote(canary: Canary, web: Sequence[Host], *, deploy_id: str, full: bool = False,
            pause: bool | int = False, traffic: Traffic | None = None,
            reporter: Reporter | None = None, forks: int = 10) -> CanaryOutcome:
    """Continue a paused canary of ``canary.release``: the steps above the weight the hosts
    are at, each analysed (``full=True``: promote now, without more analysis).

    ``pause`` holds again (True: after the next step). Fails without changing anything
    when the hosts hold no canary of this release or disagree on its weight.
    """
    with open_context(canary.release, web, None, deploy_id=deploy_id, reporter=reporter,
                      forks=forks) as ctx:
        if isinstance(ctx, DeployError):
            return _unreachable(ctx, deploy_id)
        return _Canary(canary, ctx, traffic=traffic, pause=pause).resume(full)


def abort(canary: Canary, web: Sequence[Host], *, deploy_id: str,
          reporter: Reporter | None = None, forks: int = 10) -> CanaryOutcome:
    """Roll a canary of ``canary.release`` back: all traffic to the stable colour, the
    canary's program stopped; the release is not marked failed. Idempotent."""
    with open_context(canary.release, web, None, deploy_id=deploy_id, reporter=reporter,
                      forks=forks) as ctx:
        if isinstance(ctx, DeployError):
            return _unreachable(ctx, deploy_id)
        return _Canary(canary, ctx).abort()


def _unreachable(error: DeployError, deploy_id: str) -> CanaryOutcome:
    report = RunReport(run_id=deploy_id)
    report.mark_unreachable(error.host or "?", str(error))
    report.finish()
    return CanaryOutcome("failed", None, None, report,
                         message=f"unreachable hosts ({error}); nothing was changed")


class CanaryStrategy(Strategy):
    """Canary deploys on the :class:`~deploykit.strategies.base.Strategy` protocol, on any
    runtime whose colours listen on ports nginx weighs (``ctx.runtime.spec.ports``).

    The settings are :class:`Canary`'s (``release`` comes from the context). ``pause``
    and ``traffic`` as for :func:`deploy`; :meth:`promote` and :meth:`abort` continue or
    roll back a paused canary over the same kind of context."""

    name = "canary"

    def __init__(self, *, steps: Sequence[int] = (5, 25, 50, 100), window: float = 60.0,
                 thresholds: Thresholds | None = None, max_extensions: int = 2,
                 on_inconclusive: Literal["rollback", "pause"] = "rollback",
                 log: AccessLog | None = None, pause: bool | int = False,
                 traffic: Traffic | None = None) -> None:
        self.settings = dict(steps=tuple(steps), window=window,
                             thresholds=thresholds or Thresholds(),
                             max_extensions=max_extensions, on_inconclusive=on_inconclusive,
                             log=log or AccessLog())
        self.pause = pause
        self.traffic = traffic

    def canary(self, ctx: StrategyContext) -> Canary:
        """The :class:`Canary` of ``ctx``'s release with these settings."""
        spec = ctx.runtime.spec
        assert isinstance(spec, ReleaseSpec | ComposeSpec)
        return Canary(spec, **self.settings)  # type: ignore[arg-type]

    def inspect(self, ctx: StrategyContext) -> FleetState:
        """As blue/green's: the stable colour is the active one."""
        return BlueGreenStrategy().inspect(ctx)

    def run(self, ctx: StrategyContext) -> CanaryOutcome:  # type: ignore[override]
        """Prepare the canary colour, then the weighted, analysed steps."""
        return _Canary(self.canary(ctx), ctx, traffic=self.traffic, pause=self.pause).deploy()

    def promote(self, ctx: StrategyContext, *, full: bool = False) -> CanaryOutcome:
        """Continue a paused canary (``full``: straight to 100 %)."""
        return _Canary(self.canary(ctx), ctx, traffic=self.traffic,
                       pause=self.pause).resume(full)

    def status(self, ctx: StrategyContext) -> tuple[str, str, int]:
        """``(stable colour, canary colour, canary weight %)`` of a canary of
        ``ctx.runtime``'s release in progress; raises DeployError when there is none or the
        hosts disagree."""
        run = _Canary(self.canary(ctx), ctx)
        stable = run.inspect()
        if stable is None:
            raise DeployError(f"no colour of {ctx.runtime.app} serves traffic: no canary")
        return stable, other(stable), run.current_weight(stable, other(stable))

    def abort(self, ctx: StrategyContext) -> CanaryOutcome:
        """Roll a paused canary back (the release is not marked failed)."""
        return _Canary(self.canary(ctx), ctx).abort()

    def rollback(self, ctx: StrategyContext) -> DeployOutcome:
        """A rollback is a blue/green one (the target needs no canary analysis)."""
        return BlueGreenStrategy().rollback(ctx)
