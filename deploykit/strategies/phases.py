"""Running a strategy's phases: one :class:`~deploykit.runner.Runner` run per phase over
the run's connections, one merged report, typed events, timings and suite gates.

Every strategy uses :class:`PhaseRunner`; it never opens a connection (the
:class:`~deploykit.strategies.base.StrategyContext` carries them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

from deploykit.errors import DeployError
from deploykit.inventory import Host
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Runner
from deploykit.strategies.base import (
    DeployOutcome,
    EventKind,
    HostOutcome,
    Outcome,
    Phase,
    StepList,
    Strategy,
    StrategyContext,
)
from deploykit.verify import DeployContext, SuiteTask, Verification, suite_task

__all__ = ["WAITS", "PhaseRunner", "first_failure"]

log = logging.getLogger(__name__)
WAITS = ("health gate", "verify")
"""Steps whose names start so wait on the app (health gates, verification)."""
OutcomeT = TypeVar("OutcomeT", bound=DeployOutcome)


def first_failure(part: RunReport) -> str:
    """``'<step>' failed on web-1, web-2``: a phase's first failed step and the hosts it
    failed on (the report has each host's message)."""
    failed = [r for entry in part.hosts.values() for r in entry.results if r.failed]
    if not failed:
        lost = [f"{name}: {entry.error}" for name, entry in part.hosts.items() if entry.error]
        return "; ".join(lost) or "a host failed"
    task = failed[0].task
    hosts = sorted({r.host for r in failed if r.task == task})
    return f"{task!r} failed on {', '.join(hosts)}"


class PhaseRunner:
    """The machinery one strategy run shares: its report, phase timings and gates."""

    def __init__(self, ctx: StrategyContext) -> None:
        self.ctx = ctx
        self.report = RunReport(run_id=ctx.deploy_id, check=ctx.check,
                                secrets=list(ctx.runtime.secrets))
        self.phases: dict[str, float] = {}
        self.waits: dict[str, float] = {}
        self.verifications: dict[str, Verification] = {}
        self._log_start = {name: len(conn.log) for name, conn in ctx.connections.items()}

    def run(self, phase: Phase | str, steps: StepList, hosts: Sequence[Host] | None = None, *,
            undo: Literal["host", "fleet", "none"] = "fleet", color: str | None = None,
            checkpoint: bool = True) -> RunReport:
        """Run one phase's ``steps`` over ``hosts`` (default: the web hosts) and merge its
        report; events ``STARTED`` then ``FINISHED``/``FAILED``. ``checkpoint``: call the
        context's interrupt checkpoint first."""
        ctx = self.ctx
        hosts = list(ctx.web if hosts is None else hosts)
        label = phase.value if isinstance(phase, Phase) else phase
        kind = phase if isinstance(phase, Phase) else Phase.STEP
        if checkpoint:
            ctx.checkpoint()
        names = [h.name for h in hosts]
        ctx.emit(kind, EventKind.STARTED, hosts=names, color=color, detail=label)
        started = time.monotonic()
        runner = Runner(steps, forks=ctx.forks, undo=undo, check=ctx.check,
                        reporter=ctx.reporter, run_id=ctx.deploy_id)
        part = runner.run(hosts, connections=ctx.connections)
        self.report.merge(part)
        self.record_gates(steps)
        took = time.monotonic() - started
        self.phases[label] = self.phases.get(label, 0.0) + took
        waited = max((sum(r.duration for r in entry.results if r.task.startswith(WAITS))
                      for entry in part.hosts.values()), default=0.0)
        if waited:
            self.waits[label] = self.waits.get(label, 0.0) + waited
        ctx.emit(kind, EventKind.FAILED if part.failed else EventKind.FINISHED, hosts=names,
                 color=color, detail=first_failure(part) if part.failed else label,
                 duration=took)
        return part

    def timed(self, phase: Phase, started: float) -> None:
        """Add the time since ``started`` to ``phase`` (work done outside :meth:`run`)."""
        self.phases[phase.value] = self.phases.get(phase.value, 0.0) + time.monotonic() - started

    def fail_host(self, host: str, task: str, message: str) -> None:
        """Add a failed result (something outside any step failed on ``host``)."""
        self.report.add(Result(host, task, Status.FAILED, message=message))

    def post_install(self) -> str | None:
        """Run the context's ``post_install`` seam; its failure message, or None."""
        hook = self.ctx.post_install
        if hook is None:
            return None
        self.ctx.checkpoint()
        self.ctx.emit(Phase.POST_INSTALL, EventKind.STARTED)
        started = time.monotonic()
        try:
            hook(self.ctx)
        except DeployError as exc:
            self.timed(Phase.POST_INSTALL, started)
            self.ctx.emit(Phase.POST_INSTALL, EventKind.FAILED, detail=str(exc))
            return str(exc)
        self.timed(Phase.POST_INSTALL, started)
        self.ctx.emit(Phase.POST_INSTALL, EventKind.FINISHED,
                      duration=time.monotonic() - started)
        return None

    # -- suite gates ---------------------------------------------------------------------

    def suite_step(self, marker: str, color: str | None, port: int) -> SuiteTask | None:
        """The ``marker`` tests of the spec's ``verify_suite`` as a step (None without one)."""
        runtime = self.ctx.runtime
        spec = runtime.spec
        if spec.verify_suite is None:
            return None
        context = DeployContext(app=runtime.app, version=runtime.version,
                                release=runtime.release_id, color=color, port=port,
                                program=runtime.program(color) if color else runtime.app,
                                phase=marker)
        return suite_task(spec.verify_suite, marker=marker, context=context,
                          timeout=spec.verify_timeout,
                          name=f"verify: suite {marker}" + (f" on {color}" if color else ""))

    def record_gates(self, steps: Sequence[object]) -> None:
        """After a phase: add its suite gates' results to :attr:`verifications` and write
        them (JUnit XML, JSON) to ``verify_report_dir``."""
        spec = self.ctx.runtime.spec
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
            kept.hosts = {h.name: kept.hosts[h.name] for h in self.ctx.web
                          if h.name in kept.hosts}
            base = Path(spec.verify_report_dir) / f"{self.report.run_id}.{task.marker}"
            try:
                kept.write(f"{base}.junit.xml", f"{base}.json", secrets=self.report.secrets)
            except OSError as exc:
                log.warning("cannot write the %s results to %s: %s", task.marker,
                            spec.verify_report_dir, exc)

    # -- the outcome ---------------------------------------------------------------------

    def outcome(self, strategy: Strategy, result: Outcome, color: str | None,
                previous: str | None, message: str, *,
                hosts: dict[str, HostOutcome] | None = None,
                cls: type[OutcomeT] = DeployOutcome) -> OutcomeT:  # type: ignore[assignment]
        """The run's outcome, with what each host serves (read back unless given)."""
        self.report.finish()
        logs = {name: list(conn.log[self._log_start.get(name, 0):])
                for name, conn in self.ctx.connections.items()}
        if hosts is None:
            hosts = {} if self.ctx.check else strategy.hosts_outcome(self.ctx)
        return cls(result, color, previous, self.report, dict(self.phases), message, logs,
                   dict(self.waits), dict(self.verifications), hosts)
