"""Log lines of many hosts, merged by time: ``invoke logs --group web --grep ERROR``.

::

    from deploykit.ops import logs

    lines = logs.read(conns, logs.LogQuery("sampleapp", "nginx", grep="POST", since=600))
    for line in lines:                      # oldest first, every host merged
        print(line.host, line.source, line.text)

Where each service logs (the lab's and Debian's layout; a host var
``log_files: {nginx: [/var/log/nginx/*.log]}`` overrides it per host):

* ``app``: supervisor's files of the app's programs, ``/var/log/supervisor/<app>-*.log``
  (gunicorn's access and error lines);
* ``nginx``: ``/var/log/nginx/access.log`` and ``error.log``;
* ``postgres``: ``/var/log/postgresql/*.log``; ``redis``: ``/var/log/redis/*.log``.

**Reading** is one read-only round trip per host: the host's clock and time zone,
then per file its last lines (``tail``; with ``grep`` filtered *on the host*, as
an extended regular expression, so only matching lines travel). Lines are then
merged by their timestamp (nginx, gunicorn, PostgreSQL, Redis, supervisor and
ISO 8601 forms are read; a time without a zone is taken in the host's zone); a
line without one (a traceback's continuation) keeps its place after the line
before it; ``since`` drops older lines.

**Following** (:class:`Follower`) runs one ``tail -F | grep`` per host, in one
process group whose id it prints first; lines are printed as they arrive. Closing
kills that process group (``kill -TERM -- -<pgid>`` on the same connection) and
closes the channel; should the controller die instead, the remote side notices
its stdin end (a watcher ``cat`` in the same group) and ends the group itself:
nothing is left running on the hosts either way.
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from deploykit import humanize
from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError
from deploykit.ops.stream import Stream, open_stream
from deploykit.shell import quote

__all__ = [
    "SERVICES",
    "Follower",
    "LogLine",
    "LogQuery",
    "log_files",
    "merge",
    "parse_read",
    "parse_since",
    "parse_time",
    "read",
    "read_script",
]

SERVICES: Mapping[str, tuple[str, ...]] = {
    "app": ("/var/log/supervisor/{app}-*.log",),
    "nginx": ("/var/log/nginx/access.log", "/var/log/nginx/error.log"),
    "postgres": ("/var/log/postgresql/*.log",),
    "redis": ("/var/log/redis/*.log",),
}
"""Each service's log files (globs; ``{app}`` is the app's name)."""
SCAN_LINES = 10000
"""With ``since``, at most this many of each file's last lines are read."""

_GLOB = re.compile(r"/[A-Za-z0-9_.*?+@/-]+\Z")
_MARK = "@@dk-"
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


@dataclass(frozen=True)
class LogQuery:
    """What to read: the app's ``service`` logs, lines matching ``grep`` (an extended
    regular expression, matched on the host), newer than ``since`` seconds ago, at most
    the last ``lines`` of them (None: all, with ``since``)."""

    app: str
    service: str = "app"
    grep: str | None = None
    since: float | None = None
    lines: int | None = 100

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ConfigError(f"unknown service {self.service!r}: one of "
                              f"{', '.join(SERVICES)}")
        if self.grep is not None and (not self.grep or "\n" in self.grep):
            raise ConfigError("--grep: give one non-empty line")
        if self.lines is not None and self.lines < 1:
            raise ConfigError(f"--lines must be at least 1, not {self.lines}")


@dataclass(frozen=True)
class LogLine:
    """One log line: where it comes from, its time (epoch seconds; None when the line
    carries none and nothing before it did), its text."""

    host: str
    source: str
    time: float | None
    text: str
    order: int = 0


# -- times ------------------------------------------------------------------------------------


def parse_since(text: str, *, now: float | None = None) -> float:
    """Seconds back from now for ``10m``, ``2h``, ``90s``, ``1d``, or an ISO 8601 time
    (``2026-01-31T12:00:00Z``); a ConfigError otherwise."""
    with contextlib.suppress(ConfigError):  # a duration, in deploykit's one grammar
        if text.strip():
            return humanize.parse_duration(text, "--since")
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r}: give a duration (30s, 10m, 2h, 1d) or an ISO "
                          f"8601 time (2026-01-31T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now if now is not None else time.time()) - moment.timestamp())


def _zone(text: str | None) -> timezone:
    match = re.fullmatch(r"([+-])(\d\d):?(\d\d)", text or "")
    if not match:
        return UTC
    delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
    return timezone(-delta if match[1] == "-" else delta)


_FORMATS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[int, ...]]], ...] = (
    # nginx/gunicorn access: [31/Jan/2026:12:00:00 +0000]
    (re.compile(r"\[(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.(\d+))? "
                r"(?P<zone>[+-]\d{4})\]"),
     lambda m: (int(m[3]), _MONTHS.get(m[2], 1), int(m[1]), int(m[4]), int(m[5]), int(m[6]))),
    # ISO 8601, PostgreSQL, gunicorn error, supervisor: 2026-01-31[T ]12:00:00[.123][ zone]
    (re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d+))?"
                r"(?: ?(?P<zone>Z|UTC|GMT|[+-]\d\d:?\d\d))?"),
     lambda m: tuple(int(m[i]) for i in range(1, 7))),
    # nginx error log: 2026/01/31 12:00:00
    (re.compile(r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)"),
     lambda m: tuple(int(m[i]) for i in range(1, 7))),
    # redis: 31 Jan 2026 12:00:00.123
    (re.compile(r"(\d\d?) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d)"),
     lambda m: (int(m[3]), _MONTHS.get(m[2], 1), int(m[1]), int(m[4]), int(m[5]), int(m[6]))),
)


def parse_time(line: str, host_zone: str | None = None) -> float | None:
    """The epoch time of the first timestamp in the line's first 80 characters, in one
    of the forms listed in the module docstring; None when there is none. A time
    without a zone is read in ``host_zone`` (``+0100``; default UTC)."""
    head = line[:80]
    for pattern, fields in _FORMATS:
        match = pattern.search(head)
        if match is None:
            continue
        try:
            zone_text = match.groupdict().get("zone")
            zone = (UTC if zone_text in ("Z", "UTC", "GMT")
                    else _zone(zone_text or host_zone))
            y, mo, d, h, mi, s = fields(match)
            stamp = datetime(y, mo, d, h, mi, s, tzinfo=zone).timestamp()
        except ValueError:
            continue
        fraction = match.groups()[6] if len(match.groups()) > 6 else None
        return stamp + (float(f"0.{fraction}") if fraction else 0.0)
    return None


# -- files ------------------------------------------------------------------------------------


def log_files(service: str, app: str, host_vars: Mapping[str, Any] | None = None
              ) -> list[str]:
    """The globs of ``service``'s log files on a host (its ``log_files`` var, else
    :data:`SERVICES`); each is checked to be an absolute path of plain characters and
    glob wildcards (it is expanded by the remote shell, hence never quoted)."""
    custom = (host_vars or {}).get("log_files")
    if isinstance(custom, Mapping) and service in custom:
        value = custom[service]
        globs = [value] if isinstance(value, str) else list(value)
    else:
        globs = [g.format(app=app) for g in SERVICES[service]]
    for g in globs:
        if not isinstance(g, str) or not _GLOB.fullmatch(g) or "/../" in f"{g}/":
            raise ConfigError(f"log file pattern {g!r} for {service}: an absolute path of "
                              f"letters, digits, '_.-+@/' and the wildcards * and ?")
    return globs


def _collect_files(globs: Sequence[str]) -> str:
    """Shell: the existing files matching ``globs`` as the positional parameters."""
    return f"set --; for f in {' '.join(globs)}; do [ -f \"$f\" ] && set -- \"$@\" \"$f\"; done"


def read_script(globs: Sequence[str], query: LogQuery) -> str:
    """One read-only snippet: ``@@dk-now <epoch> <zone>``, then per existing file
    ``@@dk-file <path>`` and its last lines (filtered by ``query.grep``)."""
    count = SCAN_LINES if query.since is not None else (query.lines or SCAN_LINES)
    grep = f" | grep -a -E -e {quote(query.grep)}" if query.grep else ""
    return "\n".join([
        f"printf '{_MARK}now %s %s\\n' \"$(date +%s)\" \"$(date +%z)\"",
        _collect_files(globs),
        'for f in "$@"; do',
        f"  printf '{_MARK}file %s\\n' \"$f\"",
        f'  tail -n {count} -- "$f"{grep}',
        "done",
        "exit 0",
    ])


def _source(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".log") else name


def parse_read(host: str, output: str, since: float | None = None,
               now: float | None = None) -> list[LogLine]:
    """The lines of :func:`read_script` output, each with its time (a line without one
    takes the time of the line before it in its file); with ``since``, only the lines
    from the last ``since`` seconds (by the host's clock, from its ``now`` line)."""
    zone: str | None = None
    host_now = now
    source = ""
    last: float | None = None
    found: list[LogLine] = []
    for number, line in enumerate(output.splitlines()):
        if line.startswith(f"{_MARK}now "):
            parts = line.split()
            zone = parts[2] if len(parts) > 2 else None
            try:
                host_now = float(parts[1])
            except (IndexError, ValueError):
                pass
            continue
        if line.startswith(f"{_MARK}file "):
            source, last = _source(line[len(_MARK) + 5:]), None
            continue
        stamp = parse_time(line, zone)
        last = stamp if stamp is not None else last
        found.append(LogLine(host, source, last, line, number))
    if since is not None:
        cutoff = (host_now if host_now is not None else time.time()) - since
        found = [x for x in found if x.time is not None and x.time >= cutoff]
    return found


def merge(per_host: Sequence[Sequence[LogLine]], limit: int | None = None) -> list[LogLine]:
    """Every host's lines in one list, oldest first (lines without a time first, in
    their order); with ``limit``, only the newest ``limit``."""
    merged = sorted((x for lines in per_host for x in lines),
                    key=lambda x: (x.time if x.time is not None else float("-inf")))
    return merged[-limit:] if limit else merged


def read(conns: Mapping[str, Connection], query: LogQuery, *, sudo: bool | None = None
         ) -> list[LogLine]:
    """Read and merge the logs of every connection's host (one round trip per host, in
    parallel); see the module docstring."""
    from concurrent.futures import ThreadPoolExecutor

    def one(conn: Connection) -> list[LogLine]:
        globs = log_files(query.service, query.app, conn.host.vars)
        out = conn.run(read_script(globs, query), write=False, check=False, sudo=sudo,
                       task=f"logs {query.service}")
        return parse_read(conn.name, out.stdout, query.since)

    items = list(conns.values())
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(10, len(items))) as pool:
        per_host = list(pool.map(one, items))
    return merge(per_host, query.lines)


# -- following --------------------------------------------------------------------------------


def follow_script(globs: Sequence[str], grep: str | None) -> str:
    """The remote side of ``--follow``: prints ``@@dk-pgid <id>`` (its process group), or
    ``@@dk-nofiles``; then ``tail -F`` headers (``==> path <==``) and new lines. A watcher
    ends the whole group when stdin closes (the controller went away)."""
    keep = "-e '^==> .* <==$'"
    grep_part = (f" | grep --line-buffered -a -E {keep} -e {quote(grep)}" if grep else "")
    return "\n".join([
        "pg=$(ps -o pgid= -p $$ | tr -d ' ')",
        _collect_files(globs),
        f"if [ $# = 0 ]; then echo '{_MARK}nofiles'; exit 0; fi",
        f"echo \"{_MARK}pgid $pg\"",
        # a background job's stdin is /dev/null unless redirected: hand it ours (fd 3)
        'exec 3<&0; ( cat <&3 >/dev/null; kill -TERM -- "-$pg" ) &',
        f'tail -n 0 -v -F -- "$@" 2>/dev/null{grep_part}',
    ])


@dataclass
class _Followed:
    conn: Connection
    stream: Stream | None = None
    pgid: int | None = None
    thread: threading.Thread | None = None
    started: threading.Event = field(default_factory=threading.Event)


@dataclass
class Follower:
    """Follow a service's logs on several hosts at once; lines go to :attr:`lines`
    (a queue) as they arrive. Use as a context manager: leaving stops every remote
    process (see the module docstring)."""

    conns: Mapping[str, Connection]
    query: LogQuery
    sudo: bool | None = None
    lines: queue.Queue[LogLine] = field(default_factory=queue.Queue)
    notes: queue.Queue[str] = field(default_factory=queue.Queue)
    _hosts: dict[str, _Followed] = field(default_factory=dict)

    def start(self) -> None:
        """Start the remote ``tail -F`` on every host and a reader thread for each."""
        for name, conn in self.conns.items():
            item = self._hosts[name] = _Followed(conn)
            globs = log_files(self.query.service, self.query.app, conn.host.vars)
            item.stream = open_stream(conn, follow_script(globs, self.query.grep),
                                      sudo=self.sudo)
            item.thread = threading.Thread(target=self._read, args=(item,), daemon=True,
                                           name=f"logs-{name}")
            item.thread.start()

    def _read(self, item: _Followed) -> None:
        assert item.stream is not None
        source = ""
        order = 0
        for line in item.stream.lines():
            if line.startswith(f"{_MARK}pgid "):
                item.pgid = int(line.split()[1])
                item.started.set()
                continue
            if line == f"{_MARK}nofiles":
                self.notes.put(f"{item.conn.name}: no {self.query.service} log files")
                item.started.set()
                continue
            header = re.fullmatch(r"==> (.*) <==", line)
            if header:
                source = _source(header[1])
                continue
            if not line:
                continue  # tail's blank line before a header
            order += 1
            self.lines.put(LogLine(item.conn.name, source, time.time(), line, order))
        item.started.set()  # the command ended (or was closed): nothing to wait for

    def wait_started(self, timeout: float = 15.0) -> list[str]:
        """Wait until every host's remote side runs (or said it has no files); returns the
        hosts that did not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        late = []
        for name, item in self._hosts.items():
            if not item.started.wait(max(0.0, deadline - time.monotonic())):
                late.append(name)
        return late

    @property
    def running(self) -> list[str]:
        """The hosts whose remote process group is known to run (its id was printed)."""
        return [n for n, i in self._hosts.items() if i.pgid is not None]

    def stop(self) -> list[str]:
        """Kill every remote process group, close the channels; returns problems
        (``web-1: ...``) for the groups that could not be killed (the watcher then ends
        them when the connection closes)."""
        problems: list[str] = []
        for name, item in self._hosts.items():
            if item.pgid is not None:
                try:
                    item.conn.run(f"kill -TERM -- -{int(item.pgid)} 2>/dev/null; exit 0",
                                  check=False, sudo=self.sudo, timeout=15, task="logs stop")
                except DeployError as exc:
                    problems.append(f"{name}: {exc.message}")
            if item.stream is not None:
                item.stream.close()
        for item in self._hosts.values():
            if item.thread is not None:
                item.thread.join(timeout=5)
        return problems

    def __enter__(self) -> Follower:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
