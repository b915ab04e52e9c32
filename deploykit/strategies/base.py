"""The public strategy protocol: what a deploy pipeline calls, and what it gets back.

A deploy is a **strategy** (how traffic moves: blue/green, rolling, canary) over a
**runtime** (what a colour *is*: a release directory + venv + process manager, or a
compose project). The two are separate pieces: every strategy works on every runtime,
without subclassing. Both receive one :class:`StrategyContext` per run, which carries
the run's **one** set of SSH connections (opened by the caller, never by a strategy).

The phases, in order (:class:`Phase`)::

    inspect ──> prepare ──────────────────────────────> switch ──> verify ──> finish
                │ install (files only, nothing restarts)
                │ post_install   <- the caller's seam: migrations run here, after the
                │                   release is on the hosts, BEFORE its processes start
                │ start          (the colour's processes, on the installed release)
                │ health gate    (the colour directly, before any traffic)
    a failure before switch: the colour being prepared is put back (traffic never moved)
    a failure at switch/verify: after_failure (switch back, per host; a host never
    loses the colour it still routes to)
    rollback: back to the ledger's target (see runtimes/ledger.py), through the same
    prepare -> switch -> verify

Usage (the pipeline, with connections it opened and holds the lock on)::

    from deploykit.strategies.base import StrategyContext
    from deploykit.strategies.bluegreen import BlueGreenStrategy
    from deploykit.runtimes.release import ReleaseRuntime

    runtime = ReleaseRuntime(ReleaseSpec(app="shop", artifact=artifact, env=env))
    ctx = StrategyContext(connections=conns, deploy_id=deploy_id, web=web, db=db,
                          runtime=runtime, reporter=reporter, on_event=events.publish,
                          checkpoint=signals.checkpoint, post_install=run_migrations)
    outcome = BlueGreenStrategy().run(ctx)
    outcome.result            # "deployed" | "unchanged" | "failed" | "rolled_back" | ...
    outcome.hosts["web-1"]    # HostOutcome: colour, release, verified, serving

Events (:class:`PhaseEvent`) are typed: subscribers match on :class:`Phase` and
:class:`EventKind`, never on display text. ``checkpoint`` is called between phases: the
pipeline raises ``KeyboardInterrupt`` from it when an interrupt is pending, and the
strategy puts things back as for any failure at that point.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from deploykit.connection import Connection, LoggedCommand
from deploykit.errors import DeployError
from deploykit.inventory import Host
from deploykit.report import NullReporter, Reporter
from deploykit.result import RunReport
from deploykit.runner import Step
from deploykit.secrets import Secret
from deploykit.task import Task

if TYPE_CHECKING:  # for annotations only: deploykit.verify is loaded by the phases that use it
    from deploykit.verify import Verification

__all__ = [
    "COLORS",
    "ColourState",
    "DeployOutcome",
    "EventKind",
    "FleetState",
    "HostOutcome",
    "HostState",
    "Outcome",
    "Phase",
    "PhaseEvent",
    "ReleaseState",
    "Runtime",
    "StepList",
    "Strategy",
    "StrategyContext",
    "TrafficSettings",
    "other",
]

COLORS = ("blue", "green")
"""The two colours of every blue/green-shaped runtime."""

Outcome = Literal["deployed", "unchanged", "failed", "rolled_back", "checked", "paused",
                  "aborted"]
"""What a strategy run did: ``deployed`` (the new release serves, verified),
``unchanged`` (it already served, verified, nothing changed), ``failed`` (before any
traffic moved), ``rolled_back`` (traffic moved and came back), ``checked`` (check mode),
``paused`` (a canary waits for promote/abort), ``aborted`` (interrupted)."""

StepList = list[Task | Step]
"""Steps a runtime hands a strategy: run in order on each host of a phase."""


def other(color: str) -> str:
    """The other colour."""
    return COLORS[1 - COLORS.index(color)]


# -- typed events ---------------------------------------------------------------------------


class Phase(enum.StrEnum):
    """The phases of a strategy run (values are stable: journals and hooks store them)."""

    INSPECT = "inspect"
    PREPARE = "prepare"
    INSTALL = "install"
    POST_INSTALL = "post_install"
    START = "start"
    SWITCH = "switch"
    VERIFY = "verify"
    FINISH = "finish"
    STOP_OLD = "stop_old"
    AFTER_FAILURE = "after_failure"
    ROLLBACK = "rollback"
    REPAIR = "repair"
    BATCH = "batch"
    STEP = "step"


class EventKind(enum.StrEnum):
    """Where in a phase an event is."""

    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class PhaseEvent:
    """One phase started, finished or failed, on ``hosts``. ``detail`` is for people
    (never matched on); ``duration`` is set on ``FINISHED``/``FAILED``."""

    phase: Phase
    kind: EventKind
    deploy_id: str
    hosts: tuple[str, ...] = ()
    color: str | None = None
    release: str | None = None
    detail: str = ""
    duration: float | None = None


# -- state on the hosts ---------------------------------------------------------------------


class ReleaseState(enum.StrEnum):
    """A release's state in the ledger of one host (see :mod:`deploykit.runtimes.ledger`).

    ``prepared`` (installed and started on a colour, no traffic) -> ``live`` (traffic on
    it, not yet verified) -> ``verified`` (passed verification while serving) or
    ``failed`` (failed a gate or verification: never brought back) -> ``rolled_back``
    (it served and a rollback took traffic off it; it may be rolled back to again)."""

    PREPARED = "prepared"
    LIVE = "live"
    VERIFIED = "verified"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class ColourState:
    """One colour on one host: the release it holds and whether its processes run
    (None: unknown, or no process is defined for it)."""

    color: str
    release: str | None
    running: bool | None = None


@dataclass(frozen=True)
class HostState:
    """What :meth:`Runtime.inspect` read on one host (read-only).

    ``active``: the colour nginx routes to (None: none yet); ``ledger``: each
    release's latest :class:`ReleaseState` on this host; ``live_release``: the release
    the ledger says serves (None: unknown)."""

    host: str
    active: str | None
    colors: Mapping[str, ColourState] = field(default_factory=dict)
    ledger: Mapping[str, ReleaseState] = field(default_factory=dict)
    installed: tuple[str, ...] = ()
    """The releases present on the host (directories, compose release records)."""

    @property
    def active_release(self) -> str | None:
        """The release the active colour holds."""
        if self.active is None or self.active not in self.colors:
            return None
        return self.colors[self.active].release

    def state_of(self, release: str | None) -> ReleaseState | None:
        """``release``'s ledger state on this host."""
        return None if release is None else self.ledger.get(release)


@dataclass(frozen=True)
class FleetState:
    """:class:`HostState` of every web host (inspect's result)."""

    hosts: Mapping[str, HostState]

    @property
    def actives(self) -> dict[str, str | None]:
        """Each host's active colour."""
        return {n: s.active for n, s in self.hosts.items()}

    @property
    def active(self) -> str | None:
        """The fleet's active colour when every host agrees (None: none or they differ)."""
        found = set(self.actives.values())
        return next(iter(found)) if len(found) == 1 else None

    @property
    def split(self) -> bool:
        """True when hosts route to different colours or serve different releases."""
        return (len(set(self.actives.values())) > 1
                or len({s.active_release for s in self.hosts.values()}) > 1)


@dataclass(frozen=True)
class HostOutcome:
    """What one host serves after a run: the colour nginx routes to, the release that
    colour holds, whether that release passed verification (the ledger says
    ``verified``), and whether the routed colour's processes run (``serving``: False
    means nginx routes to a stopped colour; None: unknown, e.g. unreachable)."""

    host: str
    color: str | None
    release: str | None
    verified: bool
    serving: bool | None = True
    reachable: bool = True
    note: str = ""

    def describe(self) -> str:
        """``web-1: v2 on green (verified)``."""
        if not self.reachable:
            return f"{self.host}: unreachable ({self.note})" if self.note else \
                f"{self.host}: unreachable"
        what = f"{self.release or 'nothing'} on {self.color or 'no colour'}"
        flags = ["verified" if self.verified else "NOT verified"]
        if self.serving is False:
            flags.append("its processes are STOPPED")
        return f"{self.host}: {what} ({', '.join(flags)})" + (f"; {self.note}"
                                                             if self.note else "")


@dataclass
class DeployOutcome:
    """What a strategy run did (every strategy returns this or a subclass)."""

    result: Outcome
    color: str | None  # the colour serving traffic now (the fleet's, when it agrees)
    previous: str | None  # the colour that served before
    report: RunReport
    phases: dict[str, float] = field(default_factory=dict)
    message: str = ""
    logs: dict[str, list[LoggedCommand]] = field(default_factory=dict)
    """Every command sent, per host (secrets redacted)."""
    waits: dict[str, float] = field(default_factory=dict)
    """Per phase, the seconds its slowest host spent in health gates and verification."""
    verifications: dict[str, Verification] = field(default_factory=dict)
    """Per gate marker (``pre_switch``, ``post_switch``): the suite's results."""
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    """Per web host: what it serves after the run."""

    @property
    def ok(self) -> bool:
        """True when the new release serves (or already served) traffic."""
        return self.result in ("deployed", "unchanged", "checked")

    @property
    def gate_seconds(self) -> float:
        """Wall time spent waiting on health gates and verification."""
        return sum(self.waits.values())


# -- the context ----------------------------------------------------------------------------


def _ignore(_: PhaseEvent) -> None:
    """The default event callback: nobody listens."""


def _no_interrupt() -> None:
    """The default checkpoint: never interrupted."""


PostInstall = Callable[["StrategyContext"], None]
"""The caller's seam after install, before start (migrations). Raise
:class:`~deploykit.errors.DeployError` to fail the prepare phase: the colour being
prepared is put back and traffic never moves."""


@dataclass
class StrategyContext:
    """Everything one strategy run receives.

    ``connections``: host name -> open :class:`~deploykit.connection.Connection` for
    every web host and the db host (the run's one set; strategies never open or close
    them). ``post_install`` (optional): see :data:`PostInstall`. ``checkpoint`` is
    called between phases (may raise ``KeyboardInterrupt``).
    """

    connections: Mapping[str, Connection]
    deploy_id: str
    web: Sequence[Host]
    runtime: Runtime
    db: Host | None = None
    reporter: Reporter = field(default_factory=NullReporter)
    check: bool = False
    on_event: Callable[[PhaseEvent], None] = _ignore
    checkpoint: Callable[[], None] = _no_interrupt
    post_install: PostInstall | None = None
    forks: int = 10

    def conn(self, host: str) -> Connection:
        """The open connection to ``host``."""
        return self.connections[host]

    def emit(self, phase: Phase, kind: EventKind, *, hosts: Sequence[str] = (),
             color: str | None = None, detail: str = "", duration: float | None = None) -> None:
        """Send one :class:`PhaseEvent` to ``on_event``."""
        self.on_event(PhaseEvent(phase, kind, self.deploy_id, tuple(hosts), color,
                                 self.runtime.release_id, detail, duration))


# -- the runtime ----------------------------------------------------------------------------


class TrafficSettings(Protocol):
    """What every runtime's spec says about serving and verifying a colour (the
    strategies read these; both :class:`~deploykit.runtimes.release.ReleaseSpec` and
    :class:`~deploykit.runtimes.compose.ComposeSpec` have them)."""

    @property
    def app(self) -> str: ...

    @property
    def release_id(self) -> str: ...

    @property
    def ports(self) -> Mapping[str, int]: ...

    @property
    def server_name(self) -> str: ...

    @property
    def health_path(self) -> str: ...

    @property
    def version_path(self) -> str: ...

    @property
    def health_retries(self) -> int: ...

    @property
    def health_interval(self) -> float: ...

    @property
    def latency_budget_ms(self) -> float | None: ...

    @property
    def verify_requests(self) -> int: ...

    @property
    def grace_seconds(self) -> float: ...

    @property
    def verify_suite(self) -> str | None: ...

    @property
    def verify_timeout(self) -> float: ...

    @property
    def verify_report_dir(self) -> str: ...


# -- the runtime (its methods) ------------------------------------------------------------


class Runtime(ABC):
    """What a colour is on a host, as steps a strategy runs (see the module docstring).

    Every ``*_steps`` method returns steps for one phase on the web hosts; the
    strategy runs them with the run's connections. ``inspect`` reads one host.
    """

    kind: ClassVar[str]
    """``release`` or ``compose`` (the ``runtime:`` setting)."""

    app: str
    spec: TrafficSettings
    ledger_path: str
    """Where each host's ledger lives (see :mod:`deploykit.runtimes.ledger`)."""

    @property
    @abstractmethod
    def version(self) -> str:
        """The version ``/version`` must answer through nginx after the switch."""

    def program(self, color: str) -> str:
        """What runs ``color`` (a supervisor program, a compose project)."""
        return f"{self.app}-{color}"

    def __init__(self, spec: TrafficSettings, ledger_path: str) -> None:
        self.spec = spec
        self.app = spec.app
        self.ledger_path = ledger_path

    @property
    def release_id(self) -> str:
        """The release this runtime deploys (the version, or the artifact's release id)."""
        return self.spec.release_id

    @property
    def secrets(self) -> list[Secret]:
        """Secrets a report must redact."""
        return []

    @abstractmethod
    def inspect(self, conn: Connection, host: Host) -> HostState:
        """Read one host: active colour, each colour's release and processes, ledger."""

    @abstractmethod
    def install_steps(self, color: str) -> StepList:
        """Put the release on the host for ``color`` (files, images, its environment
        file): nothing that serves restarts."""

    @abstractmethod
    def start_steps(self, color: str) -> StepList:
        """Start (or restart) ``color``'s processes on the installed release."""

    @abstractmethod
    def gate_steps(self, color: str) -> StepList:
        """Health-gate ``color`` directly (its own port), before any traffic."""

    @abstractmethod
    def stop_steps(self, color: str) -> StepList:
        """Stop ``color``'s processes (its files stay)."""

    @abstractmethod
    def resume_steps(self, color: str, state: HostState) -> StepList:
        """Start ``color``'s processes again as they were (a switch-back or a repair to a
        stopped colour); ``state`` is what inspect read on the host."""

    @abstractmethod
    def for_release(self, conn: Connection, release: str, verified: object | None
                    ) -> Runtime:
        """This runtime for another release already on the hosts (a rollback target),
        with what it served with (``verified``: its ledger entry, or None)."""

    @abstractmethod
    def discard_steps(self, color: str, before: HostState) -> StepList:
        """After a failed prepare: ``color`` back to how ``before`` found it, stopped."""

    @abstractmethod
    def finish_steps(self, color: str) -> StepList:
        """After verification: record ``color``'s release as the current one, prune."""

    @abstractmethod
    def check_steps(self, color: str) -> StepList:
        """Check mode: the steps whose plans show what a deploy to ``color`` changes."""

    @abstractmethod
    def ledger_steps(self, state: ReleaseState, *, release: str | None = None,
                     color: str | None = None, reason: str = "", deploy_id: str = "",
                     rollback: bool = False) -> StepList:
        """Record ``release`` (default: this one) as ``state`` in each host's ledger
        (``rollback``: recorded by a rollback; see
        :func:`~deploykit.runtimes.ledger.serving_stack`)."""


# -- the strategy ---------------------------------------------------------------------------


class Strategy(ABC):
    """How traffic moves to a new release. :meth:`run` is the whole deploy; the phase
    methods are public so a pipeline (or a test) can follow or drive them."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, ctx: StrategyContext) -> DeployOutcome:
        """inspect -> prepare -> switch -> verify -> finish; never raises for a failure
        on the hosts (the outcome says what happened and what each host serves)."""

    @abstractmethod
    def inspect(self, ctx: StrategyContext) -> FleetState:
        """Read every web host (read-only)."""

    @abstractmethod
    def rollback(self, ctx: StrategyContext) -> DeployOutcome:
        """Bring ``ctx.runtime``'s release (the rollback target) back into service
        through the same gates as a deploy."""

    def hosts_outcome(self, ctx: StrategyContext) -> dict[str, HostOutcome]:
        """What each web host serves now (re-read from the hosts)."""
        found: dict[str, HostOutcome] = {}
        for host in ctx.web:
            try:
                state = ctx.runtime.inspect(ctx.conn(host.name), host)
            except DeployError as exc:  # an unreachable host is reported, not raised
                found[host.name] = HostOutcome(host.name, None, None, False, None,
                                               reachable=False, note=str(exc))
                continue
            color = state.active
            release = state.active_release
            running = state.colors[color].running if color is not None and color in state.colors \
                else None
            found[host.name] = HostOutcome(
                host.name, color, release,
                state.state_of(release) == ReleaseState.VERIFIED, running)
        return found
