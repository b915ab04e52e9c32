"""Typed run events: what a run announces while it goes.

Hooks, notifications, the run report and the screen follow these events, never display
text. A run owns one :class:`EventBus`; :class:`PhaseEvents` is the runner's
:class:`~deploykit.report.Reporter` that turns each runner phase into
:class:`PhaseStarted` / :class:`StepFinished` / :class:`HostUnreachable` /
:class:`PhaseEnded` (and is where a stop asked for by Ctrl-C takes effect). The pipeline
itself emits :class:`RunStarted`, :class:`LockTaken` and :class:`RunEnded`.

What prints events is a :class:`Display` (``deploykit.cli.Output`` on a terminal;
:class:`LogDisplay`, the library default, only logs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from deploykit.pipeline.signals import StopSignals
from deploykit.result import Result, RunReport
from deploykit.secrets import Secret, redact
from deploykit.strategies.base import EventKind, Phase, PhaseEvent
from deploykit.tasks.checks import PreflightReport

__all__ = [
    "Display",
    "Event",
    "EventBus",
    "HostUnreachable",
    "LockTaken",
    "LogDisplay",
    "Phase",
    "PhaseEnded",
    "PhaseEvents",
    "PhaseStarted",
    "PreflightDone",
    "RunEnded",
    "RunStarted",
    "StepFinished",
    "title_of",
]

log = logging.getLogger("deploykit.pipeline")


TITLES: dict[Phase, str] = {
    Phase.INSPECT: "inspect the fleet",
    Phase.INSTALL: "install the release on the idle colour",
    Phase.POST_INSTALL: "database: create, check, migrate",
    Phase.START: "prepare the idle colour",
    Phase.SWITCH: "switch traffic and verify it",
    Phase.VERIFY: "verify through nginx",
    Phase.FINISH: "finish: current release, old releases pruned",
    Phase.STOP_OLD: "stop the old colour",
    Phase.AFTER_FAILURE: "after the failure: put the fleet back",
    Phase.ROLLBACK: "record the rollback",
    Phase.REPAIR: "repair the split fleet",
}
"""A human title per strategy phase (presentation only: nothing matches on titles)."""


def title_of(event: PhaseEvent) -> str:
    """The title of a strategy phase (a generic step phase: its own label)."""
    if event.phase is Phase.STEP or event.phase not in TITLES:
        return event.detail or event.phase.value
    return TITLES[event.phase]


@dataclass(frozen=True)
class RunStarted:
    """A deploy, rollback or restore begins (before pre-flight)."""

    kind: str
    deploy_id: str
    app: str
    version: str | None
    hosts: tuple[str, ...]
    check: bool = False


@dataclass(frozen=True)
class PreflightDone:
    """Pre-flight ran (read-only): every check's result."""

    report: PreflightReport


@dataclass(frozen=True)
class LockTaken:
    """The fleet lock is held: from here on the run may change the hosts."""

    deploy_id: str
    hosts: tuple[str, ...]
    who: str
    broken: tuple[str, ...] = ()


@dataclass(frozen=True)
class PhaseStarted:
    """A phase begins on ``hosts``."""

    phase: Phase
    title: str
    hosts: tuple[str, ...]
    check: bool = False


@dataclass(frozen=True)
class StepFinished:
    """One step finished on one host."""

    result: Result


@dataclass(frozen=True)
class HostUnreachable:
    """A host could not be reached, or failed outside any step."""

    host: str
    message: str


@dataclass(frozen=True)
class PhaseEnded:
    """A phase is over; ``report`` holds its results and what was undone."""

    phase: Phase
    title: str
    report: RunReport

    @property
    def failed(self) -> bool:
        """True when a step of the phase failed on some host."""
        return self.report.failed


@dataclass(frozen=True)
class RunEnded:
    """The run is over (lock released): its result and message."""

    kind: str
    deploy_id: str
    result: str
    message: str
    version: str | None
    hosts: tuple[str, ...]
    duration: float
    who: str = ""
    extra: dict[str, str] = field(default_factory=dict)


Event = (RunStarted | PreflightDone | LockTaken | PhaseStarted | StepFinished | HostUnreachable
         | PhaseEnded | RunEnded)
"""Every event a run emits."""

_E = TypeVar("_E")


class EventBus:
    """Subscribers per event type, called in subscription order. A subscriber may raise to
    stop the run (a failing ``pre_switch`` hook does)."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[tuple[type, ...], Callable[[Event], None]]] = []

    def subscribe(self, callback: Callable[[Event], None], *types: type) -> None:
        """Call ``callback(event)`` for every event of ``types`` (every event when none)."""
        self._subscribers.append((types, callback))

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every subscriber of its type."""
        for types, callback in list(self._subscribers):
            if not types or isinstance(event, types):
                callback(event)


class Display(Protocol):
    """Where a run's lines and events go (``deploykit.cli.Output`` prints them)."""

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of text."""
        ...

    def title(self, text: str) -> None:
        """A section title."""
        ...

    def add_secrets(self, secrets: Sequence[Secret]) -> None:
        """Redact these values from now on."""
        ...

    def show(self, event: Event) -> None:
        """Render one event."""
        ...


class LogDisplay:
    """The library default: every line to the ``deploykit.pipeline`` logger (redacted),
    events not rendered."""

    def __init__(self) -> None:
        self.secrets: list[Secret] = []

    def line(self, text: str = "", style: str | None = None) -> None:
        """Log one line."""
        if text.strip():
            log.info("%s", redact(text, self.secrets).strip())

    def title(self, text: str) -> None:
        """Log a title."""
        self.line(f"== {text}")

    def add_secrets(self, secrets: Sequence[Secret]) -> None:
        """Redact these values too."""
        self.secrets.extend(secrets)

    def show(self, event: Event) -> None:
        """Events are not rendered."""


class PhaseEvents:
    """The runner's :class:`~deploykit.report.Reporter` for a multi-phase run: emits
    phase events on ``bus``; between phases and steps, a stop asked for by
    :class:`~deploykit.pipeline.signals.StopSignals` takes effect."""

    def __init__(self, bus: EventBus, signals: StopSignals | None = None) -> None:
        self.bus = bus
        self.signals = signals
        self.title: str | None = None
        """The title of the next phase (set from the strategy's phase event, or by the
        pipeline for its own phases)."""
        self.next_phase: Phase | None = None
        self.phase = ""
        """The title of the running (or last) phase."""
        self.kind = Phase.STEP

    def strategy_event(self, event: PhaseEvent) -> None:
        """A strategy's phase begins: its runner's phase takes this title and kind."""
        if event.kind is EventKind.STARTED:
            self.title, self.next_phase = title_of(event), event.phase

    def run_started(self, hosts: Sequence[str], steps: Sequence[str], check: bool) -> None:
        """Stop here when asked to (a phase boundary); else announce the phase."""
        if self.signals is not None:
            self.signals.checkpoint()
        self.kind = self.next_phase or Phase.STEP
        self.phase = self.title or (steps[0] if steps else "run")
        self.title = self.next_phase = None
        self.bus.emit(PhaseStarted(self.kind, self.phase, tuple(hosts), check))

    def step_started(self, host: str, step: str) -> None:
        """Stop here after a second interrupt."""
        if self.signals is not None:
            self.signals.checkpoint(hard_only=True)

    def step_finished(self, result: Result) -> None:
        """Announce the step's result."""
        self.bus.emit(StepFinished(result))

    def host_failed(self, host: str, message: str) -> None:
        """Announce an unreachable host."""
        self.bus.emit(HostUnreachable(host, message))

    def run_finished(self, report: RunReport) -> None:
        """Announce the end of the phase."""
        self.bus.emit(PhaseEnded(self.kind, self.phase, report))
