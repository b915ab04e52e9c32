"""Waiting for a held lock and retrying a run's failed hosts (``--lock-wait``,
``--retry-failed``).

``--lock-wait 5m`` turns a held lock into a wait (:func:`parse_duration` reads the
value; :class:`LockWaitReporter` prints the holder once, then progress).
``--retry-failed`` reads the newest run report in ``.deploykit/runs/``
(:func:`last_run`: the last deploy that wrote one, check runs left out) and
targets its hosts that failed or were unreachable (:func:`retry_plan`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploykit import humanize
from deploykit.errors import ConfigError, LockHeldError
from deploykit.result import RunReport

__all__ = ["LockWaitReporter", "RetryPlan", "last_run", "parse_duration", "retry_plan"]

CONTROLLER = "(controller)"
def parse_duration(text: str | float | int | None, what: str = "--lock-wait") -> float:
    """:func:`deploykit.humanize.parse_duration` (the one duration grammar), naming
    ``--lock-wait`` in its error by default."""
    return humanize.parse_duration(text, what)


@dataclass
class LockWaitReporter:
    """``on_wait`` for :func:`deploykit.journal.fleet_lock`: the holder once (again when
    it changes), then a progress line every ``every`` seconds; ``checkpoint`` is called
    at every poll (it raises to stop waiting, e.g. on Ctrl-C)."""

    wait: float
    echo: Callable[[str], None]
    checkpoint: Callable[[], None] = lambda: None
    every: float = 15.0
    _holder: str | None = None
    _shown: float = field(default=0.0)

    def __call__(self, error: LockHeldError, waited: float) -> None:
        self.checkpoint()
        holder = re.sub(r"; held for [^;]*", "", error.message)
        if holder != self._holder:
            self._holder = holder
            self._shown = time.monotonic()
            self.echo(f"   waiting up to {humanize.duration(self.wait)} for the lock: "
                      f"{error.message}")
        elif time.monotonic() - self._shown >= self.every:
            self._shown = time.monotonic()
            self.echo(f"   still waiting for the lock: {humanize.duration(waited)} of "
                      f"{humanize.duration(self.wait)}")


# -- retrying failed hosts ------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPlan:
    """What ``--retry-failed`` runs: the last run's version on its failed hosts."""

    deploy_id: str
    version: str | None
    hosts: list[str]
    reasons: dict[str, str]
    """Why each host failed (as the report says)."""


def _controller_entry(report: RunReport, kind: str) -> dict[str, object] | None:
    entry = report.hosts.get(CONTROLLER)
    if entry is None:
        return None
    for result in reversed(entry.results):
        if result.task == kind:
            return dict(result.data)
    return None


def last_run(runs: Path, kind: str = "deploy") -> tuple[RunReport, dict[str, object]] | None:
    """The newest run report of ``kind`` in ``runs`` that did something (check runs are
    left out), with its summary data (``result``, ``version``, ``hosts`` ...)."""
    if not runs.is_dir():
        return None
    for path in sorted(runs.glob("*.json"), key=lambda p: p.name, reverse=True):
        try:
            report = RunReport.read_json(path)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
            continue
        data = _controller_entry(report, kind)
        if data is not None and data.get("result") != "checked" and not report.check:
            return report, data
    return None


def _why(report: RunReport, host: str) -> str:
    entry = report.hosts[host]
    if entry.unreachable:
        return f"unreachable: {entry.error}"
    failed = [r for r in entry.results if r.failed]
    if failed:
        first = failed[0]
        return f"{first.task}: {first.message.splitlines()[0] if first.message else 'failed'}"
    return entry.error or "failed"


def retry_plan(runs: Path, web: Sequence[str], db: str | None = None) -> RetryPlan:
    """The hosts of the last deploy that failed or were unreachable, among ``web``.

    When only the db host failed, every web host of that run is retried (the
    database phase belongs to the whole run). A ConfigError when there is no run
    report, or nothing failed.
    """
    found = last_run(runs)
    if found is None:
        raise ConfigError(f"--retry-failed: no deploy run report in {runs}: nothing to retry")
    report, data = found
    failed = [name for name, entry in report.hosts.items()
              if name != CONTROLLER and entry.failed]
    if not failed:
        raise ConfigError(f"--retry-failed: the last deploy ({report.run_id}, "
                          f"{data.get('result')}) has no failed or unreachable host: nothing "
                          f"to retry")
    reasons = {name: _why(report, name) for name in failed}
    listed = data.get("hosts")
    last_hosts = [str(h) for h in listed] if isinstance(listed, list) else []
    targets = [h for h in failed if h in web]
    if not targets and db is not None and db in failed:
        targets = [h for h in last_hosts if h in web]
    strangers = [h for h in failed if h not in web and h != db]
    if strangers and not targets:
        raise ConfigError(f"--retry-failed: the failed host(s) {', '.join(strangers)} of deploy "
                          f"{report.run_id} are not among the web hosts ({', '.join(web)})")
    version = data.get("version")
    return RetryPlan(report.run_id, str(version) if version else None, targets, reasons)
