"""The Rich half of :mod:`deploykit.report`: a live terminal display and the recap table.

Kept apart so that a run that reports plainly (or not at all) never imports Rich;
:mod:`deploykit.report` re-exports both names lazily.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from deploykit.report import (
    _RECAP_KEYS,
    _STATUS_STYLE,
    _indent,
    _recap_counts,
    run_header,
    summary_line,
    undo_lines,
)
from deploykit.result import Result, RunReport
from deploykit.secrets import Secret, redact

__all__ = ["RichReporter", "recap_table"]


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
