"""The run's strategy over its runtime: built from deploykit.yml, driven over the run's one
set of connections (:class:`~deploykit.strategies.base.StrategyContext`).

The pipeline never opens a second connection for a strategy: the context carries the
connections :func:`~deploykit.pipeline.fleet.connected` opened, the run's reporter, its
interrupt checkpoint (which also checks that the lock is still ours) and its
``post_install`` seam (the database phase: migrations run after the release is on the
hosts, before it starts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from deploykit.artifacts import Artifact
from deploykit.connection import Connection
from deploykit.errors import ConfigError
from deploykit.pipeline.project import Project
from deploykit.report import Reporter
from deploykit.runtimes.release import ReleaseSpec
from deploykit.strategies.base import (
    DeployOutcome,
    PhaseEvent,
    Runtime,
    Strategy,
    StrategyContext,
)
from deploykit.strategies.bluegreen import (
    BlueGreenStrategy,
    database_hook,
    make_runtime,
    target_runtime,
)

__all__ = ["RUNTIMES", "STRATEGIES", "StrategyRun", "check_runtime", "check_strategy",
           "release_spec"]

log = logging.getLogger("deploykit.pipeline.strategy")

STRATEGIES = ("bluegreen", "rolling", "canary")
RUNTIMES = ("release", "compose")
_DRIVEN = {"bluegreen": BlueGreenStrategy}
"""The strategies ``invoke deploy`` drives over its own connections."""


def check_strategy(name: str) -> str:
    """``name`` when ``invoke deploy`` can drive it; else a ConfigError saying why."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}: one of {', '.join(STRATEGIES)}")
    if name not in _DRIVEN:
        raise ConfigError(f"strategy {name!r}: deploykit.strategies.{name} has no Strategy "
                          f"class the pipeline can drive over its connections yet; use "
                          f"--strategy bluegreen")
    return name


def check_runtime(name: str) -> str:
    """``release``; ``compose`` is a ConfigError until the pipeline builds compose specs."""
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}: one of {', '.join(RUNTIMES)}")
    if name != "release":
        raise ConfigError(f"runtime {name!r}: invoke deploy builds release runtimes only so "
                          f"far (deploykit.runtimes.compose is usable from Python)")
    return name


def release_spec(project: Project, artifact: Artifact, *, database: bool = True) -> ReleaseSpec:
    """The release runtime's spec for ``artifact`` with the configured settings."""
    c = project.config
    env = project.env()
    return ReleaseSpec(
        c.app, artifact, env.text, env_secrets=env.secrets,
        database=project.database if database else None,
        ports=c.ports, command=tuple(c.command), app_user=c.app_user,
        server_name=c.server_name, health_path=c.health_path, version_path=c.version_path,
        health_retries=c.health_retries, health_interval=c.health_interval,
        latency_budget_ms=c.latency_budget_ms, verify_requests=c.verify_requests,
        grace_seconds=c.grace_seconds, keep_releases=c.keep_releases,
        verify_suite=str(c.verify_suite) if c.verify_suite else None,
        verify_report_dir=str(c.runs))


class StrategyRun:
    """One strategy over one runtime, over the run's connections."""

    def __init__(self, name: str, context: StrategyContext) -> None:
        self.name = check_strategy(name)
        self.strategy: Strategy = _DRIVEN[name]()
        self.ctx = context

    @classmethod
    def over(cls, name: str, project: Project, conns: Mapping[str, Connection],
             spec: ReleaseSpec, run: RunLike, *, check: bool = False,
             migrate: bool = True) -> StrategyRun:
        """The strategy ``name`` for ``spec`` on the project's web hosts (``migrate``: the
        database phase as ``post_install``)."""
        context = StrategyContext(
            connections=conns, deploy_id=run.deploy_id, web=list(project.web),
            runtime=make_runtime(spec), db=project.db, reporter=run.reporter, check=check,
            on_event=run.strategy_event, checkpoint=run.checkpoint)
        made = cls(name, context)
        strategy = made.strategy
        if migrate and project.db is not None and spec.database and \
                isinstance(strategy, BlueGreenStrategy):
            context.post_install = database_hook(strategy.runner_for, spec, project.db)
        return made

    @property
    def runtime(self) -> Runtime:
        """The runtime the context deploys."""
        return self.ctx.runtime

    def run(self) -> DeployOutcome:
        """The whole deploy (never raises for a failure on the hosts)."""
        return self.strategy.run(self.ctx)

    def rollback_target(self, to: str | None) -> Runtime:
        """The runtime of the release to roll back to, from the hosts' ledgers: what served
        before the live release, or ``to`` (which must have passed verification);
        ConfigError when there is none or the hosts disagree."""
        self.ctx.runtime = target_runtime(self.ctx, to)
        return self.ctx.runtime

    def rollback(self) -> DeployOutcome:
        """Bring :meth:`rollback_target`'s release back through the deploy's gates."""
        return self.strategy.rollback(self.ctx)


class RunLike(Protocol):
    """What :meth:`StrategyRun.over` needs of a run (:class:`~deploykit.pipeline.run.Run`)."""

    deploy_id: str

    @property
    def reporter(self) -> Reporter:
        """The runner's reporter for every phase."""
        ...

    def strategy_event(self, event: PhaseEvent) -> None:
        """Receive a strategy's typed phase event."""
        ...

    def checkpoint(self) -> None:
        """Raise to stop between phases."""
        ...


def placeholder_artifact(app: str) -> Artifact:
    """An artifact standing for "whatever the hosts have" (a rollback's starting point:
    its target is read from the ledgers and replaces it before anything runs)."""
    return Artifact(app, "rollback", Path("(installed)"), "0" * 64, 0)
