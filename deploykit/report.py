"""Showing a run to people: live progress while it runs, an Ansible-style recap at the end.

The runner talks to a :class:`Reporter`; three implementations ship:

- :class:`PlainReporter`: one line per finished step, for logs, CI and pipes;
- :class:`RichReporter`: a live display (per host its current step, an
  overall progress bar) for terminals;
- :class:`NullReporter`: silent, for library use.

:func:`make_reporter` picks Rich for a terminal and plain text otherwise.
Every reporter is safe to call from the runner's worker threads. Reporters
given ``secrets`` redact them from every message and diff they print.

Rich is imported only when a Rich reporter or table is asked for (it costs tens
of milliseconds at start-up): :class:`RichReporter` and :func:`recap_table` live
in :mod:`deploykit.report_rich` and are re-exported here lazily.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

from deploykit.result import COUNT_KEYS, Result, RunReport, Status
from deploykit.secrets import Secret, redact

if TYPE_CHECKING:
    from deploykit.report_rich import RichReporter, recap_table

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
        from rich.console import Console

        from deploykit.report_rich import RichReporter

        return RichReporter(Console(file=out), show_diff=show_diff, secrets=secrets)
    return PlainReporter(out, show_diff=show_diff, secrets=secrets)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def __getattr__(name: str) -> Any:
    """The Rich half (:class:`RichReporter`, :func:`recap_table`), imported on first use."""
    if name in ("RichReporter", "recap_table"):
        from deploykit import report_rich

        return getattr(report_rich, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
