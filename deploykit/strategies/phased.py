"""Phased startup: services started in dependency order, each phase health-gated.

A stack is a list of :class:`Service` s, each with hosts, start tasks, one health
check and the names it ``depends_on``. :func:`plan_phases` layers them
topologically (a service goes in the first phase after all its dependencies;
within a phase, declaration order) and refuses, before anything starts, an
unknown dependency, a duplicate name or a cycle (``a -> b -> a``).

:func:`start` runs the phases one after the other. Within a phase every service
runs in parallel (one :class:`~deploykit.runner.Runner` each, parallel over its
hosts): its start tasks, then its check with retries. A phase passes when every
service's check passed on every host; on the first failing phase the start
stops, later phases are not started, and :class:`PhasedOutcome` names the phase,
the service and the check's last output. ``dry_run`` only plans (no connection).

**Compose stacks** (runbook 004: postgres -> redis/pgbouncer -> app services ->
gateway): :func:`compose_stack` turns a compose project into services, one per
compose service, with the ``depends_on`` of the compose file. Each is started
alone (``compose up --no-deps <service>``) and gated on its containers' health
(:class:`ContainerHealth`: running and ``healthy`` by its own healthcheck, else
the logs tail in the failure) plus any check of the strategy's own.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

import yaml

from deploykit.connection import LoggedCommand
from deploykit.errors import ConfigError
from deploykit.inventory import Host, Inventory
from deploykit.report import Reporter
from deploykit.result import Result, RunReport, Status
from deploykit.runner import Runner, Step, UndoScope
from deploykit.task import Task
from deploykit.tasks import compose, http, postgres, redis, system

__all__ = ["CommandCheck", "ContainerHealth", "HttpCheck", "PhasedOutcome", "RedisCheck",
           "Service", "SqlCheck", "TcpCheck", "compose_stack", "describe_phases", "plan_phases",
           "start"]


@dataclass(frozen=True)
class TcpCheck:
    """The port accepts a TCP connection, tested on the service's host."""

    port: int
    address: str = "127.0.0.1"
    retries: int = 10
    interval: float = 1.0


@dataclass(frozen=True)
class HttpCheck:
    """``url`` (``{address}`` = the host's address) answers ``status``."""

    url: str
    status: int = 200
    via_ssh: bool = False
    retries: int = 10
    interval: float = 1.0
    timeout: float = 5.0


@dataclass(frozen=True)
class CommandCheck:
    """A read-only command exits 0 on the service's host."""

    cmd: str | Sequence[str]
    retries: int = 10
    interval: float = 1.0


@dataclass(frozen=True)
class SqlCheck:
    """``query`` succeeds in database ``db`` (settings from the host's vars)."""

    db: str
    query: str = "SELECT 1"
    retries: int = 10
    interval: float = 1.0


@dataclass(frozen=True)
class RedisCheck:
    """Redis answers PING (settings from the host's vars)."""

    retries: int = 10
    interval: float = 1.0


@dataclass(frozen=True)
class ContainerHealth:
    """The compose service's containers run and are healthy (their own healthcheck);
    a failure carries the last log lines of the unhealthy container."""

    project: str
    service: str
    timeout: float = 60.0
    interval: float = 0.5


Check = TcpCheck | HttpCheck | CommandCheck | SqlCheck | RedisCheck | ContainerHealth


def _never_changed(_: object) -> bool:
    return False


def check_step(service: str, check: Check) -> Step:
    """The check as a runner step, retried ``retries`` times ``interval`` apart."""
    name = f"check {service}"
    task: Task
    if isinstance(check, ContainerHealth):  # waits on the host by itself
        task = compose.wait_healthy(check.project, [check.service], timeout=check.timeout,
                                    interval=check.interval, name=f"health {service}")
        return Step(task, name=f"health {service}")
    if check.retries < 0 or check.interval < 0:
        raise ConfigError(f"service {service}: check retries and interval must be >= 0")
    if isinstance(check, HttpCheck):  # wait_for_task polls by itself
        task = http.wait_for_task(check.url, status=check.status, retries=check.retries,
                                  interval=check.interval, timeout=check.timeout,
                                  via_ssh=check.via_ssh, name=name)
        return Step(task, name=name)
    if isinstance(check, TcpCheck):
        if not 0 < check.port < 65536 or not all(c.isalnum() or c in ".:-" for c in
                                                   check.address):
            raise ConfigError(f"service {service}: bad TCP check {check.address}:{check.port}")
        probe = f"exec 3<>/dev/tcp/{check.address}/{check.port}"
        task = system.command(["bash", "-c", probe], run_in_check_mode=True,
                              changed_when=_never_changed, timeout=10, name=name)
    elif isinstance(check, CommandCheck):
        task = system.command(check.cmd, run_in_check_mode=True, changed_when=_never_changed,
                              name=name)
    elif isinstance(check, SqlCheck):
        task = postgres.query_check(check.db, check.query, name=name)
    elif isinstance(check, RedisCheck):
        task = redis.ping()
    else:
        raise ConfigError(f"service {service}: unknown check {check!r}")
    return Step(task, name=name, retries=check.retries, delay=check.interval)


@dataclass(frozen=True)
class Service:
    """One service of a stack.

    ``hosts``: an inventory selector (``"db"``, ``"web-1"``) or a list of host
    names. ``start``: the task(s) that bring it up (idempotent: ``ok`` when it
    already runs). ``check``: its health check, or several, run in order.
    ``depends_on``: service names that must be healthy first.
    """

    name: str
    hosts: str | Sequence[str]
    start: Task | Sequence[Task]
    check: Check | Sequence[Check]
    depends_on: Sequence[str] = ()

    def start_tasks(self) -> list[Task]:
        """The start tasks as a list."""
        return [self.start] if isinstance(self.start, Task) else list(self.start)

    def checks(self) -> list[Check]:
        """The checks as a list."""
        return list(self.check) if isinstance(self.check, list | tuple) else [self.check]  # type: ignore[list-item]

    def resolve(self, inventory: Inventory) -> list[Host]:
        """The service's hosts (ConfigError/InventoryError naming an unknown one)."""
        if isinstance(self.hosts, str):
            return inventory.select(self.hosts)
        return [inventory.host(h) for h in self.hosts]


def _find_cycle(names: list[str], deps: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a path ``[a, b, a]``, or None (first found, in order)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in deps[n]:
            if state.get(d) == 1:
                return [*path[path.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in names:
        if n not in state and (found := visit(n)):
            return found
    return None


def plan_phases(services: Sequence[Service]) -> list[list[Service]]:
    """Topological layers of the stack, each in declaration order.

    Raises ConfigError before anything runs: a duplicate name, an unknown
    dependency (naming both services), or a cycle (``dependency cycle: a -> b -> a``).
    """
    by_name: dict[str, Service] = {}
    for s in services:
        if s.name in by_name:
            raise ConfigError(f"service {s.name!r} is declared twice")
        by_name[s.name] = s
    for s in services:
        for d in s.depends_on:
            if d not in by_name:
                raise ConfigError(f"service {s.name!r} depends on unknown service {d!r}; "
                                  f"services: {', '.join(by_name)}")
    names = list(by_name)
    deps = {s.name: list(s.depends_on) for s in services}
    cycle = _find_cycle(names, deps)
    if cycle:
        raise ConfigError("dependency cycle: " + " -> ".join(cycle))
    phases: list[list[Service]] = []
    placed: set[str] = set()
    while len(placed) < len(names):
        layer = [by_name[n] for n in names
                 if n not in placed and all(d in placed for d in deps[n])]
        phases.append(layer)
        placed.update(s.name for s in layer)
    return phases


def describe_phases(phases: Sequence[Sequence[Service]]) -> str:
    """``phase 1: postgres, redis`` lines, one per phase."""
    return "\n".join(f"phase {i}: {', '.join(s.name for s in layer)}"
                     for i, layer in enumerate(phases, 1))


@dataclass
class PhasedOutcome:
    """What :func:`start` did.

    ``result``: ``"ok"``, ``"failed"`` or ``"dry-run"``. ``phases``: service names
    per phase; ``started``: the phases that ran (1-based count). On failure
    ``failed_phase`` (1-based), ``failed_service`` and ``last_output`` (the
    failing step's message and output tails). ``report``: every step's result;
    services of phases not started are reported ``skipped``. ``logs``: the commands
    sent per host.
    """

    result: str
    phases: list[list[str]]
    started: int = 0
    failed_phase: int | None = None
    failed_service: str | None = None
    failed_host: str | None = None
    last_output: str = ""
    report: RunReport = field(default_factory=lambda: RunReport(run_id="phased"))
    logs: dict[str, list[LoggedCommand]] = field(default_factory=dict)
    """Every command sent, per host, in phase order (secrets redacted)."""

    @property
    def ok(self) -> bool:
        """True when every phase came up (or a dry run)."""
        return self.result in ("ok", "dry-run")


def _output_of(result: Result) -> str:
    parts = [result.message]
    for key in ("stdout", "stderr"):
        text = str(result.data.get(key) or "").strip()
        if text and text not in result.message:
            parts.append(f"{key}: {text}")
    return "\n".join(p for p in parts if p)


def start(services: Sequence[Service], inventory: Inventory, *, dry_run: bool = False,
          undo: UndoScope = "host", reporter: Reporter | None = None,
          run_id: str = "phased") -> PhasedOutcome:
    """Start a stack phase by phase (see the module docstring).

    Everything is validated first (phases, hosts, checks): a ConfigError is raised
    before any connection. ``undo`` is the Runner's undo scope for a failing
    service (default: its host's changes are undone). ``dry_run``: print and
    return the phases; nothing connects.
    """
    phases = plan_phases(services)
    hosts = {s.name: s.resolve(inventory) for s in services}
    steps: dict[str, list[Task | Step]] = {
        s.name: [*s.start_tasks(), *(check_step(s.name, c) for c in s.checks())]
        for s in services}
    names = [[s.name for s in layer] for layer in phases]
    outcome = PhasedOutcome("dry-run" if dry_run else "ok", names,
                            report=RunReport(run_id=run_id, check=dry_run))
    if dry_run:
        print(describe_phases(phases))
        return outcome

    def run_service(s: Service) -> RunReport:
        runner = Runner(steps[s.name], undo=undo, reporter=reporter, run_id=run_id)
        part = runner.run(hosts[s.name])
        with lock:
            for host, log in runner.logs.items():
                outcome.logs.setdefault(host, []).extend(log)
        return part

    lock = threading.Lock()

    for number, layer in enumerate(phases, 1):
        outcome.started = number
        with ThreadPoolExecutor(max_workers=len(layer)) as pool:
            parts = list(pool.map(run_service, layer))
        for s, part in zip(layer, parts, strict=True):
            outcome.report.merge(part)
            if outcome.failed_service is None and part.failed:
                outcome.result, outcome.failed_phase = "failed", number
                outcome.failed_service = s.name
                outcome.failed_host, outcome.last_output = _first_failure(part)
        if outcome.failed_service is not None:
            for later, rest in enumerate(phases[number:], number + 1):
                for s in rest:
                    for h in hosts[s.name]:
                        outcome.report.add(Result(
                            h.name, s.name, Status.SKIPPED,
                            message=f"phase {later} not started: phase {number} failed "
                                    f"({outcome.failed_service})"))
            break
    outcome.report.finish()
    return outcome


def _first_failure(report: RunReport) -> tuple[str | None, str]:
    """The first failed host and its failing step's output (or the host's error)."""
    for name, entry in report.hosts.items():
        for r in entry.results:
            if r.failed:
                return name, _output_of(r)
        if entry.failed:
            return name, entry.error or "unreachable"
    return None, "(no output)"


def compose_stack(project: str, files: compose.ComposeFiles,
                  env: Mapping[str, compose.EnvValue] | None = None, *,
                  hosts: str | Sequence[str],
                  checks: Mapping[str, Check | Sequence[Check]] | None = None,
                  health_timeout: float = 60.0) -> list[Service]:
    """One :class:`Service` per service of a compose project, in the compose file's
    order, with its ``depends_on``: started with ``compose up --no-deps <service>``
    and gated on :class:`ContainerHealth`, then on ``checks[service]`` if given.

    Raises ConfigError for a file without services or a check of an unknown service.
    """
    loaded = compose._load_files(files)
    order: list[str] = []
    deps: dict[str, list[str]] = {}
    for content in loaded.values():
        try:
            data = yaml.safe_load(content)
        except yaml.YAMLError as exc:
            raise ConfigError(f"compose project {project}: {exc}") from None
        for name, spec in ((data or {}).get("services") or {}).items():
            if name not in deps:
                order.append(name)
                deps[name] = []
            depends = (spec or {}).get("depends_on") or []
            deps[name] += [d for d in (depends if isinstance(depends, list) else list(depends))
                           if d not in deps[name]]
    if not order:
        raise ConfigError(f"compose project {project}: no services in its compose files")
    unknown = sorted(set(checks or {}) - set(order))
    if unknown:
        raise ConfigError(f"compose project {project}: checks for unknown service "
                          f"{unknown[0]!r}; services: {', '.join(order)}")
    stack = []
    for name in order:
        extra = (checks or {}).get(name, [])
        own: list[Check] = list(extra) if isinstance(extra, list | tuple) else [
            cast(Check, extra)]
        stack.append(Service(
            name, hosts,
            compose.up(project, loaded, env or {}, [name], name=f"start {name}"),
            [ContainerHealth(project, name, timeout=health_timeout), *own],
            depends_on=tuple(deps[name])))
    return stack
