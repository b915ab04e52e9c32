"""What the commands print: lines, phase progress, tables, summaries (secrets redacted)."""

from __future__ import annotations

import json as _json
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit
from rich.console import Console
from rich.table import Table
from rich.text import Text

from deploykit.errors import TaskError
from deploykit.pipeline.events import (
    Event,
    HostUnreachable,
    PhaseEnded,
    PhaseStarted,
    PreflightDone,
    StepFinished,
)
from deploykit.pipeline.run import DeploySummary
from deploykit.pipeline.signals import EXIT_ABORTED
from deploykit.pipeline.status import HostStatus
from deploykit.result import Result, Status
from deploykit.secrets import Secret, redact
from deploykit.tasks.checks import CONTROLLER, PreflightReport

log = logging.getLogger("deploykit.cli")

LOGGED_SECRETS: set[Secret] = set()
"""Every secret an :class:`Output` knows: redacted from log lines on stderr too."""
STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "skipped": "cyan"}


class Output:
    """What the commands print: plain lines (coloured on a terminal), secrets redacted.

    Every line also goes to the ``deploykit.cli`` logger (hence to an open run log).
    It renders a run's events (:mod:`deploykit.pipeline.events`): a title per phase, one
    line per finished step, the undo lines. Safe to call from the runner's worker threads.
    User text never reaches rich as markup (a message with ``[/ops]`` prints as is).
    """

    def __init__(self, console: Console | None = None, secrets: Sequence[Secret] = ()) -> None:
        self.console = console or Console(soft_wrap=True, highlight=False,
                                          width=None if sys.stdout.isatty() else 120)
        self.secrets: list[Secret] = list(secrets)
        self._lock = threading.Lock()
        self._width = 6
        self._check = False
        LOGGED_SECRETS.update(self.secrets)

    def add_secrets(self, secrets: Sequence[Secret]) -> None:
        """Redact these values too from now on."""
        self.secrets.extend(secrets)
        LOGGED_SECRETS.update(secrets)

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print one line (redacted), and log it."""
        clean = redact(text, self.secrets)
        if clean.strip():
            log.info("%s", clean.strip())
        with self._lock:
            self.console.print(clean, style=style, markup=False, highlight=False)
            self.console.file.flush()

    def title(self, text: str) -> None:
        """A section title."""
        self.line()
        self.line(f"== {text}", style="bold")

    def table(self, table: Table) -> None:
        """Print a rich table (build its cells with :func:`cell`)."""
        with self._lock:
            self.console.print(table)

    def show(self, event: Event) -> None:
        """Render one run event."""
        if isinstance(event, PreflightDone):
            show_preflight(self, event.report)
        elif isinstance(event, PhaseStarted):
            self._check = event.check
            self._width = max([len(h) for h in event.hosts] + [6])
            self.line(f"-- {event.title} ({', '.join(event.hosts)})", style="bold")
        elif isinstance(event, StepFinished):
            self._step(event.result)
        elif isinstance(event, HostUnreachable):
            self.line(f"   {event.host:<{self._width}}  unreachable  {event.message}",
                      style="bold red")
        elif isinstance(event, PhaseEnded):
            for name, host in event.report.hosts.items():
                for item in host.undone:
                    self.line(f"   {name:<{self._width}}  undone   {item}", style="yellow")
                for item in host.undo_failed:
                    self.line(f"   {name:<{self._width}}  NOT undone  {item}",
                              style="bold red")

    def _step(self, result: Result) -> None:
        """``  web-1   changed  releases.install sampleapp v2  7.1 s`` (+ message or diff)."""
        status = result.status.value
        self.line(f"   {result.host:<{self._width}}  {status:<7}  {result.task}  "
                  f"{result.duration:.1f} s", style=STYLE.get(status))
        if result.status in (Status.FAILED, Status.SKIPPED) and result.message:
            for text in short(result.message, 1200).splitlines():
                self.line(f"      {text}")
        elif self._check and result.changed and result.diff:
            for text in result.diff.splitlines()[:40]:
                self.line(f"      {text}")


def short(text: str, limit: int = 400) -> str:
    """``text`` cut at ``limit`` characters (`` ...`` added)."""
    return text if len(text) <= limit else text[:limit] + " ..."


def cell(value: object) -> Text:
    """A table cell holding ``value`` as plain text (never parsed as rich markup)."""
    return Text("-" if value is None else str(value))


def show_preflight(out: Output, report: PreflightReport) -> None:
    """One line per check that passed (or was skipped) everywhere, naming its hosts; one
    line per host where a check failed, with why; then the summary."""
    by_check: dict[str, list[Result]] = {}
    for r in report.results:
        by_check.setdefault(r.task, []).append(r)
    for name, results in by_check.items():
        for status in (Status.OK, Status.SKIPPED):
            hosts = [r.host for r in results if r.status is status]
            if hosts:
                why = results[0].message if len(results) == 1 else ""
                if status is Status.SKIPPED:
                    why = "on request"
                where = "" if hosts == [CONTROLLER] else f" ({', '.join(hosts)})"
                out.line(f"   {status.value:<7}  {name}{where}"
                         + (f": {short(why, 160)}" if why else ""),
                         style=STYLE.get(status.value))
        for r in results:
            if r.failed:
                where = "" if r.host == CONTROLLER else f" ({r.host})"
                out.line(f"   failed   {name}{where}: {short(r.message)}",
                         style=STYLE["failed"])
    out.line(f"   {report.summary()}")


def show_summary(out: Output, summary: DeploySummary) -> None:
    """The end of a deploy or rollback, for people."""
    verb = {"succeeded": "succeeded", "failed": "FAILED", "rolled_back": "ROLLED BACK",
            "aborted": "ABORTED", "checked": "checked (nothing changed)"}[summary.result]
    style = "bold green" if summary.ok else "bold red"
    out.title(f"{summary.kind} {summary.deploy_id}: {verb} in {summary.duration:.1f} s")
    out.line(f"   {summary.message}", style=style)
    if summary.phases:
        out.line("   phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary.phases.items()))
    for note in summary.notes:
        out.line(f"   {note}")
    for problem in summary.problems:
        out.line(f"   PROBLEM: {problem}", style="bold red")
    if summary.report_path is not None:
        out.line(f"   report: {relative(summary.report_path)}   log: {relative(summary.log_path)}")


def relative(path: Path | None) -> str:
    """``path`` relative to the working directory when under it."""
    if path is None:
        return "-"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def exit_for(summary: DeploySummary) -> None:
    """Exit non-zero for a deploy that did not succeed (one ``error:`` line)."""
    if summary.ok and not summary.problems:
        return
    if summary.ok:
        raise TaskError(f"{summary.kind} {summary.deploy_id} {summary.result}, but the lock "
                        f"could not be released: " + "; ".join(summary.problems))
    text = (f"{summary.kind} {summary.deploy_id} {summary.result.replace('_', ' ')}: "
            f"{summary.message}" + "".join(f"; {p}" for p in summary.problems))
    if summary.result == "aborted":
        print(f"error: {text}", file=sys.stderr)
        raise Exit(code=EXIT_ABORTED)
    raise TaskError(text)


def write_json(data: Any, target: str) -> None:
    """``data`` as JSON to ``target`` (``-``: stdout)."""
    text = _json.dumps(data, indent=2, sort_keys=True, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")


def show_status(out: Output, rows: Sequence[HostStatus]) -> None:
    """The status as a table."""
    table = Table(title="deploykit status", title_justify="left")
    for column in ("host", "colour", "serves", "current", "programs", "maintenance", "lock",
                   "last deploy"):
        table.add_column(column)
    for r in rows:
        programs = ", ".join(f"{p.rsplit('-', 1)[-1]} {s.lower()}" for p, s in r.services.items())
        last = "-"
        if r.last is not None:
            change = f"{r.last.version_from or '-'} -> {r.last.version_to or '-'}"
            result = (r.last.result or "RUNNING or CRASHED").replace("_", " ")
            last = f"{r.last.kind} {change} {result} ({r.last.id})"
        table.add_row(*map(cell, (
            r.name, r.color or "-", r.version or "-", r.current or "-", programs or "-",
            "ON" if r.maintenance else ("off" if r.maintenance is False else "-"),
            r.lock or ("ERROR " + r.error if r.error else "free"), last)))
    out.table(table)


def show_history(out: Output, rows: Sequence[Mapping[str, Any]]) -> None:
    """The history as a table."""
    table = Table(title="deploykit history (oldest first)", title_justify="left")
    for column in ("id (UTC time-ms-commit)", "what", "by", "change", "result", "took", "outcome"):
        table.add_column(column, no_wrap=column != "outcome")
    for r in rows:
        before = sorted(set(r["version_from"].values()))
        change = f"{'/'.join(before) or '-'} -> {r['version_to'] or '-'}"
        took = f"{r['duration']:.0f} s" if r["duration"] else "-"
        if r["strategy"] == "restore":
            change = "database"
        table.add_row(*map(cell, (
            r["id"], r["kind"], r["who"], change if r["kind"] in ("deploy", "rollback") else "-",
            r["result"].replace("_", " "), took, short(r["message"].split("; ")[0], 100))))
    if not rows:
        out.line("no deploys yet")
        return
    out.table(table)


