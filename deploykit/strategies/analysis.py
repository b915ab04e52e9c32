"""Canary analysis from nginx's access log: what each side of an upstream served, and
whether the canary is good enough to go on.

nginx writes one JSON line per proxied request to a log of its own (the format and
the ``access_log`` directive live in ``conf.d``, written by :func:`access_log`, an
nginx task: tested with ``nginx -t``, reloaded, undone on failure)::

    {"time":"2026-11-25T18:30:02+00:00","status":"200","request_time":"0.004",
     "upstream_addr":"127.0.0.1:8002","upstream_status":"200",
     "upstream_response_time":"0.004","method":"GET","uri":"/version",
     "upstream":"shop_upstream"}

The log sits at http level, so every site's proxied requests are in it (only proxied
ones: ``if=$upstream_addr``); the analysis keeps the requests proxied to the app's
upstream (``upstream``: ``$proxy_host``, the upstream's name) and attributes each to a
side by the upstream address that served it. A request nginx retried on another server
(``proxy_next_upstream``: ``"127.0.0.1:8002, 127.0.0.1:8001"``) counts once per
attempt, each with its own status: a canary that refuses connections shows as canary
5xx (nginx's 502) even when the retry on the stable side saved the request.

Reading (:class:`LogWindow`): a :class:`Cursor` (inode and byte offset) per host is
recorded when a window starts; reading a window is **one read-only round trip per
host**: ``stat`` plus the bytes after the offset (at most ``max_read_bytes``, the
newest), complete lines only; the cursor then moves to the end of the last complete
line. A rotated or truncated log (another inode, or shorter than the offset) is read
from its start.

Judging (:func:`judge`): per side, the 5xx share and latency percentiles (p50, p95,
p99, max; nearest rank, milliseconds; one attempt's latency is the request's
``request_time``, the attempts of a retried request each their
``upstream_response_time``). The canary passes when it served at least
``min_requests`` and, with the defaults of :class:`Thresholds`:

* its error rate is at most 1 % and its p95 at most 500 ms (absolute limits);
* its error rate is at most the stable side's plus 1 point, and its p95 at most the
  stable p95 x 1.5 + 50 ms (relative limits, only when the stable side also served
  ``min_requests``: at 100 % it serves nothing, and only the absolute limits judge).

Fewer canary requests than ``min_requests`` is **inconclusive**, never a pass: the
strategy then extends the window or gives up without promoting.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, TaskError
from deploykit.result import Result, Status
from deploykit.shell import quote
from deploykit.task import Facts, Observation, Task, UndoStack
from deploykit.tasks import nginx
from deploykit.tasks.http import percentile

__all__ = [
    "DEFAULT_LOG",
    "LOG_FORMAT",
    "AccessLog",
    "AccessLogTask",
    "Attempt",
    "Check",
    "Chunk",
    "Comparison",
    "Cursor",
    "LogRecord",
    "LogWindow",
    "SideStats",
    "Thresholds",
    "Verdict",
    "access_log",
    "attempts_by_side",
    "compare",
    "judge",
    "parse_chunk",
    "parse_line",
    "parse_lines",
    "read",
    "read_script",
    "side_stats",
]

DEFAULT_LOG = "/var/log/nginx/deploykit-upstream.log"
LOG_FORMAT = "deploykit_upstream"
CONF_NAME = "deploykit-upstream-log.conf"
MAX_READ_BYTES = 64 * 1024 * 1024
"""Bytes one window read fetches at most per host (the newest ones beyond that)."""

_HEADER = b"@@dk-log "
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]+\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_SEPARATOR = re.compile(r"\s*,\s*|\s+:\s+")  # attempts ", ", upstream groups " : "
_FIELDS = (
    ("time", "$time_iso8601"),
    ("status", "$status"),
    ("request_time", "$request_time"),
    ("upstream_addr", "$upstream_addr"),
    ("upstream_status", "$upstream_status"),
    ("upstream_response_time", "$upstream_response_time"),
    ("method", "$request_method"),
    ("uri", "$uri"),
    ("upstream", "$proxy_host"),
)


# -- the log nginx writes -----------------------------------------------------------------


@dataclass(frozen=True)
class AccessLog:
    """Where the analysis log is and what it is called in nginx's configuration.

    ``path`` and ``format_name`` end up in nginx's configuration: a plain absolute
    path and an identifier. ``settings`` locate ``conf.d`` (its ``upstream_dir``).
    """

    path: str = DEFAULT_LOG
    format_name: str = LOG_FORMAT
    max_read_bytes: int = MAX_READ_BYTES
    settings: nginx.NginxSettings = nginx.DEFAULT_SETTINGS

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not _SAFE_PATH.match(self.path) \
                or "/../" in f"{self.path}/":
            raise ConfigError(f"access log path {self.path!r}: an absolute path of letters, "
                              "digits, '.', '_', '-' and '/'")
        if not isinstance(self.format_name, str) or not _NAME.match(self.format_name):
            raise ConfigError(f"log format name {self.format_name!r}: letters, digits and '_'")
        if isinstance(self.max_read_bytes, bool) or not isinstance(self.max_read_bytes, int) \
                or self.max_read_bytes < 4096:
            raise ConfigError(f"max_read_bytes must be an integer >= 4096, "
                              f"not {self.max_read_bytes!r}")

    @property
    def conf_file(self) -> str:
        """The ``conf.d`` file holding the ``log_format`` and ``access_log`` directives."""
        return f"{self.settings.upstream_dir.rstrip('/')}/{CONF_NAME}"

    def render(self) -> str:
        """The configuration file's text (http context)."""
        body = ",".join(f'"{key}":"{var}"' for key, var in _FIELDS)
        return ("# Managed by deploykit (canary analysis). Edits here are overwritten.\n"
                + f"log_format {self.format_name} escape=json '{{{body}}}';\n"
                + f"access_log {self.path} {self.format_name} if=$upstream_addr;\n")


class AccessLogTask(nginx.NginxConfigTask):
    """nginx logs every proxied request as JSON to the analysis log. See :func:`access_log`."""

    kind = "nginx.access_log"

    def __init__(self, log: AccessLog, *, reload: bool = True, name: str | None = None) -> None:
        super().__init__(settings=log.settings, reload=reload, name=name)
        self.log = log
        self.text = log.render().encode()

    def target(self) -> str:
        return self.log.path

    def managed(self) -> list[tuple[str, str]]:
        return [(self.log.conf_file, "access log")]

    def desired(self, conn: Connection, current: Mapping[str, nginx.Want]
                ) -> dict[str, nginx.Want]:
        return {self.log.conf_file: self.text}


def access_log(log: AccessLog | None = None, *, reload: bool = True,
               name: str | None = None) -> AccessLogTask:
    """Ensure nginx writes the canary analysis log (``log_format`` + ``access_log``).

    One file, ``<conf.d>/deploykit-upstream-log.conf``, at http level: every site's
    proxied requests go to ``log.path`` as JSON lines (see the module docstring). A
    site or location with an ``access_log`` of its own does not inherit it: add
    ``access_log <path> deploykit_upstream if=$upstream_addr`` to it (``nginx.site(...,
    directives=[...])``).

    Idempotence: ``ok`` when the file already holds exactly this text.
    Check mode: the file's unified diff. Apply: one tested transaction of the nginx
    tasks (``nginx -t``, verified reload, everything restored on failure).
    Undo: the previous file (or none), tested and reloaded.
    """
    return AccessLogTask(log or AccessLog(), reload=reload, name=name)


# -- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try of a request on one upstream server: ``status`` None when nginx logged
    none (``-``), ``ms`` None when it has no time for the attempt."""

    address: str
    status: int | None
    ms: float | None

    @property
    def error(self) -> bool:
        """True for a 5xx (nginx's own 502/504 for a refused or timed-out server too)."""
        return self.status is not None and self.status >= 500


@dataclass(frozen=True)
class LogRecord:
    """One request from the log: what the client got and each upstream attempt."""

    status: int
    request_ms: float
    attempts: tuple[Attempt, ...]
    time: str = ""
    method: str = ""
    uri: str = ""
    upstream: str = ""


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _status(text: str) -> int | None:
    return int(text) if text.isdigit() and 100 <= int(text) <= 599 else None


def parse_line(line: str | bytes) -> LogRecord | None:
    """One log line as a :class:`LogRecord`; None when it is not one of ours (not JSON,
    missing fields, no upstream address)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    raw: dict[str, str] = {}
    for key, _ in _FIELDS:
        value = data.get(key)
        if not isinstance(value, str):
            return None
        raw[key] = value
    status = _status(raw["status"])
    request_s = _number(raw["request_time"])
    if status is None or request_s is None:
        return None
    addresses = [a for a in _SEPARATOR.split(raw["upstream_addr"].strip()) if a]
    if not addresses or addresses == ["-"]:
        return None
    statuses = _SEPARATOR.split(raw["upstream_status"].strip())
    times = _SEPARATOR.split(raw["upstream_response_time"].strip())

    def at(values: list[str], i: int) -> str:
        return values[i] if i < len(values) else "-"

    attempts = []
    for i, address in enumerate(addresses):
        if len(addresses) == 1:
            ms: float | None = round(request_s * 1000, 3)
        else:
            seconds = _number(at(times, i))
            ms = None if seconds is None else round(seconds * 1000, 3)
        attempts.append(Attempt(address, _status(at(statuses, i)), ms))
    return LogRecord(status, round(request_s * 1000, 3), tuple(attempts), raw["time"],
                     raw["method"], raw["uri"], raw["upstream"])


def parse_lines(data: bytes | str) -> tuple[list[LogRecord], int]:
    """Every record of some log lines, and how many non-empty lines were not records."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    records: list[LogRecord] = []
    malformed = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        record = parse_line(line)
        if record is None:
            malformed += 1
        else:
            records.append(record)
    return records, malformed


# -- figures and verdicts -----------------------------------------------------------------


@dataclass(frozen=True)
class SideStats:
    """What one side (canary or stable) served: attempts, 5xx, latency in ms."""

    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    statuses: Mapping[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        """5xx / requests (0.0 when there was none)."""
        return self.errors / self.requests if self.requests else 0.0

    def describe(self) -> str:
        """``412 requests, 0.2% 5xx, p95 7 ms``."""
        p95 = "-" if self.p95_ms is None else f"{self.p95_ms:.0f} ms"
        return f"{self.requests} requests, {self.error_rate:.1%} 5xx, p95 {p95}"

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain data (with ``error_rate``)."""
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.error_rate, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "p99_ms": self.p99_ms, "max_ms": self.max_ms, "statuses": dict(self.statuses)}


def side_stats(attempts: Iterable[Attempt]) -> SideStats:
    """The figures of some attempts (status-less attempts count as requests, not errors)."""
    items = list(attempts)
    latencies = sorted(a.ms for a in items if a.ms is not None)
    statuses: dict[str, int] = {}
    for a in items:
        key = "-" if a.status is None else str(a.status)
        statuses[key] = statuses.get(key, 0) + 1
    return SideStats(len(items), sum(1 for a in items if a.error),
                     percentile(latencies, 50), percentile(latencies, 95),
                     percentile(latencies, 99), latencies[-1] if latencies else None,
                     dict(sorted(statuses.items())))


@dataclass(frozen=True)
class Thresholds:
    """When a canary passes a step (see the module docstring).

    Rates are fractions (0.01 = 1 %), latencies milliseconds. ``min_requests`` is the
    canary's minimum to judge at all, and the stable side's minimum to compare with.
    """

    max_error_rate: float = 0.01
    max_p95_ms: float = 500.0
    error_rate_margin: float = 0.01
    p95_margin: float = 0.5
    p95_slack_ms: float = 50.0
    min_requests: int = 20

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "error_rate_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0 <= value <= 1:
                raise ConfigError(f"thresholds: {name} must be a fraction from 0 to 1, "
                                  f"not {value!r}")
        for name in ("max_p95_ms", "p95_margin", "p95_slack_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0 <= value < math.inf:
                raise ConfigError(f"thresholds: {name} must be a number >= 0, not {value!r}")
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int) \
                or self.min_requests < 1:
            raise ConfigError(f"thresholds: min_requests must be an integer >= 1, "
                              f"not {self.min_requests!r}")


@dataclass(frozen=True)
class Check:
    """One limit applied to the canary: ``skipped`` checks did not judge (too few
    stable requests to compare with)."""

    name: str
    value: float | None
    limit: float | None
    passed: bool
    skipped: bool = False
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The check as plain data."""
        return {"name": self.name, "value": self.value, "limit": self.limit,
                "passed": self.passed, "skipped": self.skipped, "detail": self.detail}


VerdictStatus = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    """``pass``, ``fail`` (the failed checks in ``reasons``) or ``inconclusive``."""

    status: VerdictStatus
    checks: tuple[Check, ...] = ()
    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when the canary passed."""
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        """The verdict as plain data."""
        return {"status": self.status, "reasons": list(self.reasons),
                "checks": [c.as_dict() for c in self.checks]}


def _pct(rate: float) -> str:
    return f"{rate:.2%}"


def judge(canary: SideStats, stable: SideStats, thresholds: Thresholds) -> Verdict:
    """Judge the canary's figures against the limits and the stable side's figures."""
    t = thresholds
    if canary.requests < t.min_requests:
        return Verdict("inconclusive", (), (
            f"canary served {canary.requests} request{'s' if canary.requests != 1 else ''}, "
            f"fewer than min_requests={t.min_requests}: not judged",))
    checks = [Check("error_rate", canary.error_rate, t.max_error_rate,
                    canary.error_rate <= t.max_error_rate,
                    detail=f"canary 5xx {_pct(canary.error_rate)}, at most "
                           f"{_pct(t.max_error_rate)}")]
    p95 = canary.p95_ms
    checks.append(Check("p95_ms", p95, t.max_p95_ms, p95 is not None and p95 <= t.max_p95_ms,
                        detail=(f"canary p95 {p95:.0f} ms, at most {t.max_p95_ms:.0f} ms"
                                if p95 is not None else "canary: no latency figures")))
    comparable = stable.requests >= t.min_requests
    too_few = (f"stable served {stable.requests} requests, fewer than "
               f"min_requests={t.min_requests}: not compared")
    if comparable:
        limit = stable.error_rate + t.error_rate_margin
        checks.append(Check("error_rate_vs_stable", canary.error_rate, limit,
                            canary.error_rate <= limit,
                            detail=f"canary 5xx {_pct(canary.error_rate)}, stable "
                                   f"{_pct(stable.error_rate)} + margin "
                                   f"{_pct(t.error_rate_margin)} = {_pct(limit)}"))
    else:
        checks.append(Check("error_rate_vs_stable", canary.error_rate, None, True, True,
                             too_few))
    if comparable and stable.p95_ms is not None:
        limit_ms = stable.p95_ms * (1 + t.p95_margin) + t.p95_slack_ms
        checks.append(Check("p95_vs_stable", p95, limit_ms,
                            p95 is not None and p95 <= limit_ms,
                            detail=f"canary p95 {'-' if p95 is None else f'{p95:.0f}'} ms, "
                                   f"stable {stable.p95_ms:.0f} ms x {1 + t.p95_margin:g} + "
                                   f"{t.p95_slack_ms:g} ms = {limit_ms:.0f} ms"))
    else:
        checks.append(Check("p95_vs_stable", p95, None, True, True, too_few))
    failed = tuple(c.detail for c in checks if not c.passed)
    return Verdict("fail" if failed else "pass", tuple(checks), failed)


def attempts_by_side(records: Iterable[LogRecord], sides: Mapping[str, str],
                     upstream: str | None = None) -> tuple[dict[str, list[Attempt]], int]:
    """Each side's attempts (``sides``: upstream address -> side name), and how many
    attempts were left out: to addresses of neither side, or (with ``upstream``) of
    requests proxied to another upstream (another app)."""
    found: dict[str, list[Attempt]] = {side: [] for side in sides.values()}
    other = 0
    for record in records:
        if upstream is not None and record.upstream != upstream:
            other += len(record.attempts)
            continue
        for attempt in record.attempts:
            side = sides.get(attempt.address)
            if side is None:
                other += 1
            else:
                found[side].append(attempt)
    return found, other


@dataclass(frozen=True)
class Comparison:
    """A window's figures, fleet-wide and per host, and the verdict on the canary."""

    canary: SideStats
    stable: SideStats
    hosts: Mapping[str, Mapping[str, SideStats]]
    verdict: Verdict
    other_attempts: int = 0

    def as_dict(self, host: str | None = None) -> dict[str, Any]:
        """Plain data: the fleet's figures and verdict, plus one host's (or every host's)."""
        shown = self.hosts if host is None else {host: self.hosts.get(host, {})}
        return {"canary": self.canary.as_dict(), "stable": self.stable.as_dict(),
                "verdict": self.verdict.as_dict(), "other_attempts": self.other_attempts,
                "hosts": {h: {side: s.as_dict() for side, s in sides.items()}
                          for h, sides in shown.items()}}


def compare(records: Mapping[str, Sequence[LogRecord]], sides: Mapping[str, str],
            thresholds: Thresholds, *, upstream: str | None = None, canary: str = "canary",
            stable: str = "stable") -> Comparison:
    """Figures of every host's records, fleet-wide and per host, and the verdict.

    ``sides`` maps upstream addresses to ``canary`` or ``stable`` (the names given);
    ``upstream`` keeps only the requests proxied to that upstream (``<app>_upstream``).
    """
    if set(sides.values()) - {canary, stable}:
        raise ConfigError(f"sides must map addresses to {canary!r} or {stable!r}")
    fleet: dict[str, list[Attempt]] = {canary: [], stable: []}
    hosts: dict[str, dict[str, SideStats]] = {}
    other = 0
    for host, host_records in records.items():
        found, skipped = attempts_by_side(host_records, sides, upstream)
        other += skipped
        hosts[host] = {name: side_stats(found.get(name, [])) for name in (canary, stable)}
        for name in (canary, stable):
            fleet[name].extend(found.get(name, []))
    c, s = side_stats(fleet[canary]), side_stats(fleet[stable])
    return Comparison(c, s, hosts, judge(c, s, thresholds), other)


# -- reading the log over SSH -------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """Where a host's log was read up to: its inode and a byte offset."""

    inode: int
    offset: int


@dataclass
class Chunk:
    """What one read returned: the records after a cursor, and where the next one starts."""

    records: list[LogRecord]
    malformed: int
    cursor: Cursor
    bytes: int
    skipped_bytes: int = 0
    rotated: bool = False


def read_script(path: str, cursor: Cursor | None, limit: int) -> str:
    """One read-only command: a ``@@dk-log inode size offset start`` line, then the log's
    bytes from ``start`` to ``size`` (the bytes after ``cursor``, the newest ``limit`` of
    them; from the start of a rotated log). A missing log prints ``0 0 0 0``."""
    inode = "" if cursor is None else str(cursor.inode)
    offset = 0 if cursor is None else cursor.offset
    return "\n".join([
        f"f={quote(path)}; ino={quote(inode)}; off={offset}; cap={limit}",
        "if s=$(stat -L -c '%i %s' -- \"$f\" 2>/dev/null); then",
        "  set -- $s",
        '  { [ "$1" = "$ino" ] && [ "$2" -ge "$off" ]; } || off=0',
        '  start=$off; [ $(($2 - off)) -gt "$cap" ] && start=$(($2 - cap))',
        "  printf '@@dk-log %s %s %s %s\\n' \"$1\" \"$2\" \"$off\" \"$start\"",
        '  tail -c +$((start + 1)) -- "$f" | head -c $(($2 - start))',
        "else",
        "  echo '@@dk-log 0 0 0 0'",
        "fi",
    ])


def parse_chunk(output: bytes, cursor: Cursor | None) -> Chunk:
    """Parse :func:`read_script`'s output: complete lines only (a line nginx is still
    writing waits for the next read), the first line dropped when the read started
    inside one (``limit`` reached)."""
    header, _, data = output.partition(b"\n")
    if not header.startswith(_HEADER):
        raise TaskError(f"unexpected output reading the access log: {header[:80]!r}")
    try:
        inode, size, offset, start = (int(x) for x in header[len(_HEADER):].split())
    except ValueError:
        raise TaskError(f"unexpected output reading the access log: {header[:80]!r}") from None
    rotated = cursor is not None and (inode != cursor.inode or size < cursor.offset)
    end = data.rfind(b"\n") + 1
    complete = data[:end]
    skipped = start - offset
    if start > offset and complete:  # started inside a line: drop it
        cut = complete.find(b"\n") + 1
        skipped += cut
        complete = complete[cut:]
    records, malformed = parse_lines(complete)
    return Chunk(records, malformed, Cursor(inode, start + end), len(complete), skipped, rotated)


def read(conn: Connection, log: AccessLog, cursor: Cursor | None, *,
         limit: int | None = None, task: str | None = None) -> Chunk:
    """Read the log after ``cursor`` on ``conn``'s host: one read-only round trip.

    ``cursor`` None with ``limit=0`` only finds the end of the log (a window's start).
    """
    size = log.max_read_bytes if limit is None else limit
    result = conn.run(read_script(log.path, cursor, size), write=False, check=False,
                      task=task)
    if result.exit_code != 0:
        raise TaskError(f"reading {log.path} failed (exit code {result.exit_code}): "
                        f"{result.stderr.strip()[-300:]}", host=conn.name, task=task)
    try:
        return parse_chunk(result.stdout_bytes, cursor)
    except TaskError as exc:
        raise TaskError(f"{log.path}: {exc.message}", host=conn.name, task=task) from None


class _LogStep(Observation):
    """A read-only step of a :class:`LogWindow` (nothing to batch, nothing to change)."""

    kind: ClassVar[str] = "canary.log"

    def __init__(self, window: LogWindow, *, mark: bool, name: str) -> None:
        super().__init__(name=name)
        self.window = window
        self.mark = mark

    def target(self) -> str:
        return self.window.log.path

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """``ok`` with what was read in ``data``, or ``failed`` naming why."""
        started = time.monotonic()
        result = Result(host=conn.name, task=self.name, status=Status.OK, check=check)
        sent = len(conn.log)
        try:
            data = (self.window.start(conn, self.name) if self.mark
                    else self.window.advance(conn, self.name))
            result.data.update(data)
            result.message = ", ".join(f"{k} {v}" for k, v in data.items())
        except DeployError as exc:
            result.status, result.message = Status.FAILED, exc.message
        result.data["commands"] = len(conn.log) - sent
        result.duration = time.monotonic() - started
        return result


class LogWindow:
    """Per-host cursors into the analysis log, and the records read since the last start.

    :meth:`start_task` (run on every host) records where the window starts;
    :meth:`read_task` reads what was logged since (one round trip per host) and adds
    it to :attr:`records`; more reads extend the window. Safe to use from the
    runner's threads (each host touches its own entries).
    """

    def __init__(self, log: AccessLog) -> None:
        self.log = log
        self.cursors: dict[str, Cursor] = {}
        self.records: dict[str, list[LogRecord]] = {}
        self.bytes = 0
        self.malformed = 0
        self._lock = threading.Lock()

    def start(self, conn: Connection, task: str | None = None) -> dict[str, Any]:
        """Record the end of ``conn``'s log as the window's start; forget older records."""
        chunk = read(conn, self.log, None, limit=0, task=task)
        with self._lock:
            self.cursors[conn.name] = chunk.cursor
            self.records[conn.name] = []
        return {"offset": chunk.cursor.offset}

    def advance(self, conn: Connection, task: str | None = None) -> dict[str, Any]:
        """Read ``conn``'s log since its cursor and keep the records."""
        with self._lock:
            cursor = self.cursors.get(conn.name)
        if cursor is None:
            raise TaskError("the window was not started on this host", host=conn.name,
                            task=task)
        chunk = read(conn, self.log, cursor, task=task)
        with self._lock:
            self.cursors[conn.name] = chunk.cursor
            self.records.setdefault(conn.name, []).extend(chunk.records)
            self.bytes += chunk.bytes
            self.malformed += chunk.malformed
        data: dict[str, Any] = {"lines": len(chunk.records), "bytes": chunk.bytes,
                                "offset": chunk.cursor.offset}
        if chunk.malformed:
            data["malformed"] = chunk.malformed
        if chunk.skipped_bytes:
            data["skipped_bytes"] = chunk.skipped_bytes
        if chunk.rotated:
            data["rotated"] = True
        return data

    def start_task(self, name: str = "canary: start analysis window") -> Task:
        """A read-only step recording the window's start on each host."""
        return _LogStep(self, mark=True, name=name)

    def read_task(self, name: str = "canary: read access log") -> Task:
        """A read-only step reading the window's lines on each host (one round trip)."""
        return _LogStep(self, mark=False, name=name)
