"""Showing a run to people: live progress while it runs, an Ansible-style recap at the end.

The runner talks to a :class:`Reporter`; three implementations ship:

- :class:`PlainReporter`: one line per finished step, for logs, CI and pipes;
- :class:`RichReporter`: a live display (per host its current step, an
  overall progress bar) for terminals;
- :class:`NullReporter`: silent, for library use.

:func:`make_reporter` picks Rich for a terminal and plain text otherwise.
Every reporter is safe to call from the runner's worker threads. Reporters
given ``secrets`` redact them from every message and diff they print.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Protocol, runtime_checkable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from deploykit.result import COUNT_KEYS, Result, RunReport, Status
from deploykit.secrets import Secret, redact

__all__ = [
    "NullReporter",
    "PlainReporter",
    "Reporter",
    "RichReporter",
    "format_recap_plain",
    "make_reporter",
    "recap_table",
    "summary_line",
    "undo_lines",
]

_STATUS_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "skipped": "cyan",
    "unreachable": "bold red",
}
_STATUS_WIDTH = max(len(s.value) for s in Status)
_RECAP_KEYS = (*COUNT_KEYS, "unreachable")


@runtime_checkable
class Reporter(Protocol):
    """What the runner calls to show progress; implementations must be thread-safe."""

    def run_started(self, hosts: Sequence[str], steps: Sequence[str], check: bool) -> None:
        """The run begins: these hosts will run these steps (in check mode or not)."""
        ...

    def step_started(self, host: str, step: str) -> None:
        """``host`` begins ``step``."""
        ...

    def step_finished(self, result: Result) -> None:
        """A step finished on a host."""
        ...

    def host_failed(self, host: str, message: str) -> None:
        """``host`` could not be reached or failed outside any step."""
        ...

    def run_finished(self, report: RunReport) -> None:
        """The run is over: show the recap."""
        ...


class NullReporter:
    """A reporter that shows nothing."""

    def run_started(self, hosts: Sequence[str], steps: Sequence[str], check: bool) -> None:
        """Do nothing."""

    def step_started(self, host: str, step: str) -> None:
        """Do nothing."""

    def step_finished(self, result: Result) -> None:
        """Do nothing."""

    def host_failed(self, host: str, message: str) -> None:
        """Do nothing."""

    def run_finished(self, report: RunReport) -> None:
        """Do nothing."""


# -- shared text ----------------------------------------------------------------------------


def run_header(hosts: Sequence[str], steps: Sequence[str], check: bool) -> str:
    """The line announcing a run, e.g. ``run: 3 hosts, 5 steps (check mode: no changes)``."""
    text = f"run: {_plural(len(hosts), 'host')}, {_plural(len(steps), 'step')}"
    return text + " (check mode: no changes)" if check else text


def summary_line(report: RunReport) -> str:
    """``N hosts: X ok, Y changed, Z failed``, counting hosts by outcome.

    A host is ``failed`` if any step failed or it was unreachable, else
    ``changed`` if any step changed it, else ``ok``.
    """
    outcomes = [h.outcome for h in report.hosts.values()]
    return (
        f"{_plural(len(outcomes), 'host')}: {outcomes.count('ok')} ok, "
        f"{outcomes.count('changed')} changed, {outcomes.count('failed')} failed"
    )


def undo_lines(report: RunReport) -> list[str]:
    """Per host, what was undone and what could not be, as indented lines.

    Empty when nothing was undone anywhere.
    """
    lines: list[str] = []
    for name, host in report.hosts.items():
        if not host.undone and not host.undo_failed:
            continue
        lines.append(f"{name}:")
        lines.extend(f"  undone: {item}" for item in host.undone)
        lines.extend(f"  NOT undone: {item}" for item in host.undo_failed)
    return [redact(line, report.secrets) for line in lines]


def _recap_counts(report: RunReport) -> list[tuple[str, dict[str, int]]]:
    rows = []
    for name, host in report.hosts.items():
        counts = dict(host.counts)
        counts["unreachable"] = int(host.unreachable)
        rows.append((name, counts))
    return rows


def format_recap_plain(report: RunReport) -> str:
    """The end-of-run recap as plain text (no trailing newline)::

    RECAP
    web-1 : ok=3    changed=1    failed=0    skipped=0    unreachable=0
    web-2 : ok=0    changed=0    failed=0    skipped=0    unreachable=1
    2 hosts: 1 ok, 0 changed, 1 failed
    web-1:
      undone: restore /etc/nginx/nginx.conf
    """
    rows = _recap_counts(report)
    width = max((len(name) for name, _ in rows), default=0)
    digits = {key: max((len(str(c[key])) for _, c in rows), default=1) for key in _RECAP_KEYS}
    lines = ["RECAP (check mode: no changes)" if report.check else "RECAP"]
    for name, counts in rows:
        cells = "  ".join(f"{key}={counts[key]:<{digits[key]}}" for key in _RECAP_KEYS)
        lines.append(f"{name.ljust(width)} : {cells.rstrip()}")
    lines.append(summary_line(report))
    lines.extend(undo_lines(report))
    return "\n".join(lines)


def recap_table(report: RunReport) -> Table:
    """The end-of-run recap as a Rich table; the summary and undo lines are its caption."""
    title = "Recap (check mode: no changes)" if report.check else "Recap"
    caption = Text(no_wrap=True, overflow="ignore")
    caption.append(summary_line(report), style="bold red" if report.failed else "bold green")
    for line in undo_lines(report):
        caption.append("\n")
        caption.append(line, style="bold red" if "NOT undone:" in line else "")
    table = Table(title=title, caption=caption, caption_justify="left", title_justify="left")
    table.add_column("host", style="bold")
    for key in _RECAP_KEYS:
        table.add_column(key, justify="right")
    for name, counts in _recap_counts(report):
        cells = [
            Text(str(counts[key]), style=_STATUS_STYLE[key] if counts[key] else "dim")
            for key in _RECAP_KEYS
        ]
        table.add_row(Text(name), *cells)
    return table


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _indent(text: str, prefix: str = "    ") -> list[str]:
    return [prefix + line for line in text.rstrip("\n").splitlines()]


# -- plain ----------------------------------------------------------------------------------


class PlainReporter:
    """One line per finished step, e.g. ``web-1 | changed | files.directory /srv/app (0.03s)``.

    Failed and skipped steps show their message indented below; changed steps
    show their diff when ``show_diff`` is true (``None``, the default, means
    "only in check mode"). Host names are padded to the longest one announced
    in :meth:`run_started`.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        show_diff: bool | None = None,
        secrets: Sequence[Secret] = (),
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.show_diff = show_diff
        self.secrets = list(secrets)
        self._lock = threading.Lock()
        self._host_width = 0
        self._check = False

    def _write(self, lines: Sequence[str]) -> None:
        text = redact("".join(line + "\n" for line in lines), self.secrets)
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    def _diffs_shown(self) -> bool:
        return self._check if self.show_diff is None else self.show_diff

    def run_started(self, hosts: Sequence[str], steps: Sequence[str], check: bool) -> None:
        """Print the run header."""
        self._check = check
        self._host_width = max((len(h) for h in hosts), default=0)
        self._write([run_header(hosts, steps, check)])

    def step_started(self, host: str, step: str) -> None:
        """Print nothing: plain output has one line per finished step."""

    def step_finished(self, result: Result) -> None:
        """Print the step's line, then its message (failed/skipped) or diff (changed)."""
        status = result.status.value.ljust(_STATUS_WIDTH)
        lines = [
            f"{result.host.ljust(self._host_width)} | {status} | "
            f"{result.task} ({result.duration:.2f}s)"
        ]
        if result.status in (Status.FAILED, Status.SKIPPED) and result.message:
            lines.extend(_indent(result.message))
        if result.changed and result.diff and self._diffs_shown():
            lines.extend(_indent(result.diff))
        self._write(lines)

    def host_failed(self, host: str, message: str) -> None:
        """Print ``host | unreachable | message``."""
        self._write([f"{host.ljust(self._host_width)} | unreachable | {message}"])

    def run_finished(self, report: RunReport) -> None:
        """Print a blank line and the plain recap."""
        self._write(["", format_recap_plain(report)])


# -- rich -----------------------------------------------------------------------------------


@dataclass
class _HostState:
    step: str = "waiting"
    done: int = 0
    state: str = "waiting"  # waiting | running | done | failed
    spinner: Spinner | None = None


class RichReporter:
    """A live terminal display: running hosts with a spinner and their current step,
    and a progress bar of steps done out of hosts x steps.

    Failed and changed steps (with diffs when ``show_diff``; default: in check
    mode) are printed above the live area as they finish. ``run_finished``
    stops the live display and prints :func:`recap_table`. At most
    ``max_rows`` running hosts are listed (default: fits the terminal).
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        show_diff: bool | None = None,
        secrets: Sequence[Secret] = (),
        max_rows: int | None = None,
        refresh_per_second: float = 8,
    ) -> None:
        self.console = console if console is not None else Console()
        self.show_diff = show_diff
        self.secrets = list(secrets)
        self.max_rows = max_rows
        self._refresh = refresh_per_second
        # A leaf lock: never held while calling into Rich (whose Live has its own lock).
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}
        self._steps = 0
        self._check = False
        self._live: Live | None = None

    def _print(self, *renderables: RenderableType) -> None:
        self.console.print(*renderables, highlight=False)

    def _state(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState()
        return state

    def run_started(self, hosts: Sequence[str], steps: Sequence[str], check: bool) -> None:
        """Print the run header and start the live display."""
        with self._lock:
            self._check = check
            self._steps = len(steps)
            self._hosts = {h: _HostState() for h in hosts}
        self._print(Text(run_header(hosts, steps, check), style="bold"))
        live = Live(
            console=self.console,
            get_renderable=self._render,
            refresh_per_second=self._refresh,
            transient=True,
        )
        live.start()
        with self._lock:
            self._live = live

    def step_started(self, host: str, step: str) -> None:
        """Show ``step`` as ``host``'s current step."""
        with self._lock:
            state = self._state(host)
            state.step = redact(step, self.secrets)
            state.state = "running"
            if state.spinner is None:
                state.spinner = Spinner("dots", style="cyan")

    def step_finished(self, result: Result) -> None:
        """Count the step; print it above the live area if it failed or changed."""
        with self._lock:
            state = self._state(result.host)
            state.done += 1
            if result.failed:
                state.state = "failed"
            elif self._steps and state.done >= self._steps:
                state.state = "done"
            show_diff = self._check if self.show_diff is None else self.show_diff
        if not (result.failed or result.changed):
            return
        style = _STATUS_STYLE[result.status.value]
        line = Text.assemble(
            (result.host, "bold"),
            " | ",
            (result.status.value, style),
            " | ",
            redact(result.task, self.secrets),
            (f" ({result.duration:.2f}s)", "dim"),
        )
        extra: list[str] = []
        if result.failed and result.message:
            extra = _indent(redact(result.message, self.secrets))
        elif show_diff and result.diff:
            extra = _indent(redact(result.diff, self.secrets))
        body = [Text(x, style="red" if result.failed else "") for x in extra]
        self._print(Text("\n").join([line, *body]))

    def host_failed(self, host: str, message: str) -> None:
        """Mark ``host`` failed and print why above the live area."""
        with self._lock:
            self._state(host).state = "failed"
        self._print(
            Text.assemble(
                (host, "bold"),
                " | ",
                ("unreachable", _STATUS_STYLE["unreachable"]),
                " | ",
                redact(message, self.secrets),
            )
        )

    def run_finished(self, report: RunReport) -> None:
        """Stop the live display and print the recap table."""
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live.stop()
        self._print(recap_table(report))

    def _render(self) -> RenderableType:
        """Build the live area from a snapshot of the state (called by Live's thread)."""
        with self._lock:
            steps = self._steps
            states = [(h, s.step, s.state, s.done, s.spinner) for h, s in self._hosts.items()]
        running = [(h, step, spin) for h, step, state, _, spin in states if state == "running"]
        waiting = sum(1 for _, _, state, _, _ in states if state == "waiting")
        finished = len(states) - len(running) - waiting
        total = steps * len(states)
        # A failed host will run no more steps: count its remaining ones as done.
        completed = sum(
            steps if state == "failed" else min(done, steps) for _, _, state, done, _ in states
        )
        limit = self.max_rows if self.max_rows is not None else max(1, self.console.height - 4)
        grid = Table.grid(padding=(0, 1))
        grid.add_column()
        grid.add_column(style="bold")
        grid.add_column()
        for host, step, spinner in running[:limit]:
            grid.add_row(spinner or "", host, step)
        if len(running) > limit:
            grid.add_row("", "", Text(f"... and {len(running) - limit} more running", "dim"))
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(total, 1), completed=completed, width=40),
            Text(f"{completed}/{total} steps", style="bold"),
            Text(f"{finished} done, {len(running)} running, {waiting} waiting", style="dim"),
        )
        return Group(grid, bar)


def make_reporter(
    stream: IO[str] | None = None,
    force_plain: bool = False,
    *,
    show_diff: bool | None = None,
    secrets: Sequence[Secret] = (),
) -> Reporter:
    """Return a :class:`RichReporter` when ``stream`` (default stdout) is a terminal,
    else a :class:`PlainReporter` (or always plain with ``force_plain``)."""
    out = stream if stream is not None else sys.stdout
    if not force_plain and _isatty(out):
        return RichReporter(Console(file=out), show_diff=show_diff, secrets=secrets)
    return PlainReporter(out, show_diff=show_diff, secrets=secrets)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
