"""Feature-flag rollouts inside a deploy: raise a flag's percentage in steps, judge
every step like a canary, and pull the kill switch on failure.

::

    from deploykit.strategies import flag_rollout as fr

    plan = fr.FlagRollout("new-checkout", steps=(5, 25, 50), window=60,
                          analysis=fr.HttpAnalysis(["https://shop.example/health"]))
    outcome = fr.rollout(plan, db_conn, deploy_id="d-42")   # an open Connection
    outcome.result            # "promoted", "killed", "paused" or "failed"

At each step ``flags.flag(name, enabled=True, rollout=p)`` runs through a
:class:`~deploykit.runner.Runner` on the Redis host (idempotent, reported), then
the strategy waits ``window`` seconds and calls the analysis with the step's
percentage. The analysis returns a :class:`~deploykit.strategies.analysis.Verdict`
(or a ``(Verdict, figures)`` pair): ``pass`` goes on to the next step, ``fail``
runs ``flags.kill(name)`` (the flag is off for everyone, its settings kept) and
the outcome is ``killed``; ``inconclusive`` holds the flag at the step
(``paused``: no evidence against it). The default analysis, :class:`HttpAnalysis`,
measures URLs with :func:`~deploykit.tasks.http.measure` and judges the error rate
and p95 against :class:`~deploykit.strategies.analysis.Thresholds`.

Every step's figures are in :attr:`FlagRolloutOutcome.steps` and in the report
(a ``flag rollout: analysis N %`` result per step whose ``data`` holds them). The
rollout never clears a kill an operator made (``killed`` is not managed). The
step logic itself is :func:`drive`, which takes plain callables.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.flags import Flag, check_name, check_rollout, flag_key
from deploykit.inventory import Host
from deploykit.report import NullReporter, Reporter
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Runner
from deploykit.strategies.analysis import SideStats, Thresholds, Verdict, judge
from deploykit.task import Task
from deploykit.tasks import flags
from deploykit.tasks.http import Measurement, measure
from deploykit.tasks.redis import RedisSettings, session

__all__ = ["Analysis", "FlagRollout", "FlagRolloutOutcome", "FlagStep", "HttpAnalysis",
           "current", "drive", "rollout"]

Analysis = Callable[[float], Verdict | tuple[Verdict, Mapping[str, Any]]]
"""Called with the step's percentage after the window: a verdict, optionally with figures."""
RolloutResult = Literal["promoted", "killed", "paused", "failed"]


@dataclass(frozen=True)
class FlagRollout:
    """A flag rollout: the flag, increasing percentages, the window and the analysis."""

    flag: str
    analysis: Analysis
    steps: Sequence[float] = (5, 25, 50)
    window: float = 60.0

    def __post_init__(self) -> None:
        check_name(self.flag)
        steps = tuple(check_rollout(p, self.flag) for p in self.steps)
        if not steps or any(p <= 0 for p in steps):
            raise ConfigError(f"flag {self.flag!r}: rollout steps must be percentages above 0 "
                              f"and at most 100, not {tuple(self.steps)!r}")
        if any(a >= b for a, b in itertools.pairwise(steps)):
            raise ConfigError(f"flag {self.flag!r}: rollout steps must increase, "
                              f"not {tuple(self.steps)!r}")
        object.__setattr__(self, "steps", steps)
        if isinstance(self.window, bool) or not isinstance(self.window, int | float) \
                or not 0 <= self.window <= 3600:
            raise ConfigError(f"flag {self.flag!r}: window must be 0 to 3600 seconds, "
                              f"not {self.window!r}")
        if not callable(self.analysis):
            raise ConfigError(f"flag {self.flag!r}: analysis must be callable, "
                              f"not {self.analysis!r}")


@dataclass(frozen=True)
class FlagStep:
    """One step: the percentage set, the verdict and the analysis' figures."""

    index: int
    rollout: float
    verdict: Verdict
    figures: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """``25 %: fail: canary 5xx 100.00%, at most 1.00%``."""
        text = f"{self.rollout:g} %: {self.verdict.status}"
        return text + (f": {'; '.join(self.verdict.reasons)}" if self.verdict.reasons else "")

    def as_dict(self) -> dict[str, Any]:
        """Plain data: the step, its verdict and figures."""
        return {"step": self.index, "rollout": self.rollout, "seconds": round(self.seconds, 3),
                "verdict": self.verdict.as_dict(), "figures": dict(self.figures)}


@dataclass
class FlagRolloutOutcome:
    """What a rollout did: ``promoted`` (every step passed), ``killed`` (a step failed:
    the kill switch is on), ``paused`` (inconclusive: held at ``rollout``) or ``failed``
    (a flag write failed; ``message`` says which). ``rollout`` is the last percentage set."""

    result: RolloutResult
    flag: str
    steps: list[FlagStep]
    rollout: float | None
    message: str = ""
    report: RunReport = field(default_factory=lambda: RunReport(run_id="flag-rollout"))

    @property
    def ok(self) -> bool:
        """True when promoted or paused."""
        return self.result in ("promoted", "paused")


def _verdict(answer: Verdict | tuple[Verdict, Mapping[str, Any]]
             ) -> tuple[Verdict, Mapping[str, Any]]:
    if isinstance(answer, Verdict):
        return answer, {}
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], Verdict):
        return answer[0], dict(answer[1])
    raise ConfigError(f"a flag rollout analysis must return a Verdict or (Verdict, figures), "
                      f"not {answer!r}")


def drive(plan: FlagRollout, set_rollout: Callable[[float], str | None],
          kill: Callable[[], str | None], *, sleep: Callable[[float], object] = time.sleep,
          on_step: Callable[[FlagStep], object] | None = None) -> FlagRolloutOutcome:
    """The step logic: for each percentage ``set_rollout(p)``, wait, analyse, judge.

    ``set_rollout`` and ``kill`` return None on success or an error message (the
    outcome is then ``failed``). A failing verdict calls ``kill`` (``killed``); an
    inconclusive one stops there (``paused``); an analysis raising DeployError
    counts as a failing verdict (no evidence the flag is safe).
    """
    done: list[FlagStep] = []
    reached: float | None = None
    for index, percent in enumerate(plan.steps):
        error = set_rollout(percent)
        if error is not None:
            return FlagRolloutOutcome("failed", plan.flag, done, reached,
                                      f"setting {plan.flag} to {percent:g} % failed: {error}")
        reached = percent
        started = time.monotonic()
        sleep(plan.window)
        try:
            verdict, figures = _verdict(plan.analysis(percent))
        except DeployError as exc:
            verdict, figures = Verdict("fail", (), (f"analysis failed: {exc}",)), {}
        step = FlagStep(index, percent, verdict, figures, time.monotonic() - started)
        done.append(step)
        if on_step is not None:
            on_step(step)
        if verdict.status == "fail":
            error = kill()
            if error is not None:
                return FlagRolloutOutcome("failed", plan.flag, done, reached,
                                          f"{step.summary()}; the kill switch failed: {error}")
            return FlagRolloutOutcome("killed", plan.flag, done, reached,
                                      f"{plan.flag} killed at {step.summary()}")
        if verdict.status != "pass":
            return FlagRolloutOutcome("paused", plan.flag, done, reached,
                                      f"{plan.flag} held at {step.summary()}")
    return FlagRolloutOutcome("promoted", plan.flag, done, reached,
                              f"{plan.flag} rolled out to {reached:g} % "
                              f"({', '.join(f'{s.rollout:g}' for s in done)} % passed)")


def rollout(plan: FlagRollout, redis_host: Connection | Host, *, deploy_id: str | None = None,
            reporter: Reporter | None = None,
            settings: RedisSettings | None = None,
            sleep: Callable[[float], object] = time.sleep) -> FlagRolloutOutcome:
    """Roll ``plan`` out on the Redis of ``redis_host`` (an open Connection, kept open,
    or an inventory Host: a connection is opened and closed here).

    Each flag write is a one-step :class:`~deploykit.runner.Runner` run (reported
    under ``deploy_id``); each step's analysis is added to the report as a result
    whose ``data`` holds the step's figures. See :func:`drive` for the results.

    A rollout never lowers a live flag: when the flag is already enabled, steps below
    its current percentage are skipped (a re-run resumes; at or past the last step it
    is ``promoted`` with no step). A killed flag is ``failed``: revive it first.
    """
    conn = redis_host if isinstance(redis_host, Connection) else Connection(redis_host)
    owned = not isinstance(redis_host, Connection)
    try:
        return _rollout(plan, conn, deploy_id, reporter, settings, sleep)
    finally:
        if owned:
            conn.close()


def current(conn: Connection, name: str, settings: RedisSettings | None = None) -> Flag | None:
    """Flag ``name`` as stored on ``conn``'s Redis (one read-only HGETALL), or None."""
    with session(conn, settings) as r:
        data = r.read("HGETALL", flag_key(name))
    return Flag.from_hash(name, data) if data else None


def _rollout(plan: FlagRollout, conn: Connection, deploy_id: str | None,
             reporter: Reporter | None, settings: RedisSettings | None,
             sleep: Callable[[float], object]) -> FlagRolloutOutcome:
    report = RunReport(run_id=deploy_id or "flag-rollout")
    try:
        now = current(conn, plan.flag, settings)
    except DeployError as exc:
        return FlagRolloutOutcome("failed", plan.flag, [], None,
                                  f"reading flag {plan.flag} on {conn.name}: {exc}", report)
    if now is not None and now.killed:
        return FlagRolloutOutcome("failed", plan.flag, [], None,
                                  f"flag {plan.flag} is killed on {conn.name}: revive it "
                                  f"(flags.kill(name, killed=False)) before rolling it out",
                                  report)
    if now is not None and now.enabled:  # never lower a live rollout: resume from it
        remaining = tuple(p for p in plan.steps if p >= now.rollout)
        if not remaining:
            return FlagRolloutOutcome("promoted", plan.flag, [], now.rollout,
                                      f"{plan.flag} is already at {now.rollout:g} %", report)
        plan = replace(plan, steps=remaining)
    chosen = reporter or NullReporter()

    def run(task: Task) -> str | None:
        part = Runner([task], reporter=chosen, run_id=report.run_id).run(
            [conn.host], connections={conn.host.name: conn})
        report.merge(part)
        failures = [f"{r.task}: {r.message}" for h in part.hosts.values() for r in h.results
                    if r.failed] + [h.error for h in part.hosts.values() if h.error]
        return "; ".join(failures) if failures else None

    def record(step: FlagStep) -> None:
        report.add(Result(conn.host.name, f"flag rollout: analysis {step.rollout:g} %",
                          Status.OK if step.verdict.status != "fail" else Status.FAILED,
                          message=step.summary(), duration=step.seconds,
                          data=step.as_dict()))

    outcome = drive(plan, lambda p: run(flags.flag(plan.flag, enabled=True, rollout=p,
                                                   settings=settings)),
                    lambda: run(flags.kill(plan.flag, settings=settings)),
                    sleep=sleep, on_step=record)
    report.finish()
    outcome.report = report
    return outcome


# -- the default analysis: HTTP measurements ----------------------------------------------


def stats_of(measurements: Sequence[Measurement]) -> SideStats:
    """Measurements of several URLs as one side's figures (ms; percentiles: the worst URL)."""
    def worst(name: str) -> float | None:
        values = [getattr(m, name) for m in measurements if getattr(m, name) is not None]
        return max(values) * 1000 if values else None
    statuses: dict[str, int] = {}
    for m in measurements:
        for key, count in m.statuses.items():
            statuses[key] = statuses.get(key, 0) + count
    return SideStats(sum(m.requests for m in measurements), sum(m.errors for m in measurements),
                     worst("p50"), worst("p95"), worst("p99"), worst("max"),
                     dict(sorted(statuses.items())))


@dataclass(frozen=True)
class HttpAnalysis:
    """Measure ``urls`` (``n`` GETs each) and judge error rate (4xx/5xx/no response)
    and p95 against ``thresholds`` (``min_requests`` in total, else inconclusive)."""

    urls: Sequence[str]
    thresholds: Thresholds = field(default_factory=Thresholds)
    n: int = 50
    concurrency: int = 4
    timeout: float = 5.0
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.urls, str) or not self.urls:
            raise ConfigError(f"HttpAnalysis needs a list of URLs, not {self.urls!r}")

    def __call__(self, percent: float) -> tuple[Verdict, dict[str, Any]]:
        """The verdict on the step, with every URL's measurement as figures."""
        measured = [measure(url, n=self.n, concurrency=self.concurrency, timeout=self.timeout,
                            headers=self.headers) for url in self.urls]
        stats = stats_of(measured)
        empty = SideStats(0, 0, None, None, None, None)
        verdict = judge(stats, empty, self.thresholds)
        # nothing to compare against: keep only the absolute checks
        checks = tuple(c for c in verdict.checks if not c.skipped)
        return (Verdict(verdict.status, checks, verdict.reasons),
                {"stats": stats.as_dict(), "urls": {m.url: m.as_dict() for m in measured}})
