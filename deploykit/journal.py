"""Deploy ids, the host-side deploy lock, the host-side history, local run files.

A deploy goes through these pieces in order::

    deploy_id = new_deploy_id(repo_dir)                  # 20261125T173000Z-abc1234
    with fleet_lock(conns, "shop", deploy_id, version_to="v2", strategy="rolling") as lock:
        report = Runner(steps, run_id=deploy_id).run(hosts)
        lock.end("failed" if report.failed else "succeeded", steps=report)
    write_run_report(report)                             # .deploykit/runs/<id>.json

**Lock.** ``/var/lib/deploykit/<app>/lock`` on every target host, taken with an
atomic ``mkdir`` (exactly one ``mkdir`` of a directory succeeds), holding
``holder.json`` (user, controller host, deploy id, pid, start time and a random
token that only the holder knows, so a release never removes somebody else's
lock). A short ``flock`` on ``/var/lib/deploykit/<app>/.guard`` serialises the
inspect-then-act scripts (acquire, break, release), so two breakers cannot
both break one lock, nor break a lock taken in between. :func:`fleet_lock`
locks every host, all-or-nothing (the first host by name alone, as the arbiter
between racing deploys, then the others in parallel), and releases on
success, on an exception and on Ctrl-C. A lock older than its TTL is *stale*: it is reported
(with its age), never broken silently; ``break_lock=True`` breaks a stale lock
and :func:`unlock` (``force=True``) breaks any, both recorded in the history.

**Re-entrance.** A run started from inside another (a hook running ``invoke
rollback``, say) finds the lock held by the outer deploy and would wait for
itself. The outer deploy passes its id to its children as ``$DEPLOYKIT_DEPLOY_ID``
(:data:`DEPLOY_ID_ENV`); a lock held by that deploy id, by the same user on the
same controller, is then taken as *nested*: the child writes its own start and
end entries but leaves the lock to its owner. **Waiting.** With ``wait``,
:func:`fleet_lock` polls a held lock until it is free or ``wait`` seconds have
passed (``invoke deploy --lock-wait 5m``), telling ``on_wait`` at every poll.

**History.** ``/var/lib/deploykit/<app>/history.jsonl`` on every target host,
one JSON object per line. A deploy writes a ``start`` entry in the same round
trip as its lock and an ``end`` entry (result ``succeeded``, ``failed``,
``rolled_back`` or ``aborted``) in the same round trip as its release: a
deploy that crashed shows as started without an end (:func:`summarize_history`).
Appending is atomic: the lines travel on stdin into a temporary file beside
the history, are checked to be complete (their byte count), then appended with
``dd oflag=append bs=<their size>``: **one** ``write(2)`` on an ``O_APPEND``
descriptor. Concurrent appenders never interleave, and a connection dropped
mid-upload writes nothing rather than half a line. (``cat >> file`` would not
do: ``cat`` writes each chunk as it arrives from the SSH channel.)

**Local files.** ``.deploykit/runs/<deploy_id>.json`` (the
:class:`~deploykit.result.RunReport`) and ``.deploykit/runs/<deploy_id>.log``
(:class:`RunLog`: deploykit's log records for the run), both 0600, secrets
redacted. Every history entry is redacted too (:func:`~deploykit.secrets.redact`
with the connection's secrets) before it leaves the controller.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import json
import logging
import os
import re
import secrets as _random
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, LockHeldError, TaskError
from deploykit.result import RunReport, to_jsonable
from deploykit.secrets import Secret, redact
from deploykit.shell import quote

__all__ = [
    "DEFAULT_LOCK_TTL",
    "DEPLOY_ID_ENV",
    "RESULTS",
    "RUNS_DIR",
    "STATE_ROOT",
    "DeployRecord",
    "FleetLock",
    "HistoryEntry",
    "LockAttempt",
    "LockHolder",
    "LockInfo",
    "RunFiles",
    "RunLog",
    "acquire_lock",
    "append_history",
    "fleet_lock",
    "history",
    "lock_status",
    "log_level",
    "new_deploy_id",
    "outer_deploy_id",
    "parse_history",
    "release_lock",
    "run_files",
    "state_dir",
    "steps_summary",
    "summarize_history",
    "unlock",
    "write_run_report",
]

log = logging.getLogger("deploykit.journal")

STATE_ROOT = "/var/lib/deploykit"
"""Where each app's lock and history live on a host: ``STATE_ROOT/<app>/``."""
RUNS_DIR = Path(".deploykit/runs")
"""Where run reports and run logs go on the controller (relative to the working dir)."""
DEFAULT_LOCK_TTL = 3600.0
"""Seconds after which a lock counts as stale. Keep it above your longest deploy."""
DEPLOY_ID_ENV = "DEPLOYKIT_DEPLOY_ID"
"""Set by a deploy for the processes it starts (hooks): the lock is re-entrant for it."""
RESULTS = ("succeeded", "failed", "rolled_back", "aborted")
"""The results an ``end`` history entry may carry."""
DeployResult = Literal["succeeded", "failed", "rolled_back", "aborted"]
Kind = Literal["deploy", "rollback"]

_APP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_LINE_LIMIT = 60 * 1024  # bytes per history line; longer ones lose their details
_BLOCK = "1M"  # dd block size: larger than every line we write, so one write(2)
_GUARD_WAIT = 20  # seconds to wait for another lock script on the same host
_COMMAND_TIMEOUT = 60.0
_T = TypeVar("_T")

# -- deploy id --------------------------------------------------------------------------------


def new_deploy_id(repo_dir: str | os.PathLike[str] = ".", *, now: datetime | None = None) -> str:
    """A deploy id: UTC time, the short git commit of ``repo_dir``, then the milliseconds
    and a random part.

    ``20261125T173000Z-abc1234-0423f9a``; ``20261125T173000Z-nogit-0423f9a`` when
    ``repo_dir`` is not a git work tree (or has no commit, or git is missing).
    Sorted by name, ids are sorted by time (to the millisecond: what ``--retry-failed``
    relies on to find the last deploy); safe as a file name; two deploys started in
    the same second never share one (their run reports would overwrite each other).
    """
    when = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    try:
        out = subprocess.run(["git", "-C", os.fspath(repo_dir), "rev-parse", "--short=7", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        sha = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        sha = ""
    commit = sha if re.fullmatch(r"[0-9a-f]{4,40}", sha) else "nogit"
    return f"{stamp}-{commit}-{when.microsecond // 1000:03d}{_random.token_hex(2)}"


def outer_deploy_id() -> str | None:
    """The deploy this process runs inside of (``$DEPLOYKIT_DEPLOY_ID``), if any."""
    value = os.environ.get(DEPLOY_ID_ENV, "").strip()
    return value if value and _DEPLOY_ID.match(value) else None


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who() -> tuple[str, str]:
    """``(user, controller host)`` of this process."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = str(os.getuid())
    return user, socket.gethostname()


def _check_app(app: str) -> str:
    if not isinstance(app, str) or not _APP.match(app) or app in (".", ".."):
        raise ConfigError(f"invalid app name {app!r}: 1-64 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit")
    return app


def _check_deploy_id(deploy_id: str) -> str:
    if not isinstance(deploy_id, str) or not _DEPLOY_ID.match(deploy_id):
        raise ConfigError(f"invalid deploy id {deploy_id!r}: letters, digits, '.', '_' or '-'")
    return deploy_id


def state_dir(app: str) -> str:
    """``/var/lib/deploykit/<app>``: the app's lock and history on a host."""
    return f"{STATE_ROOT}/{_check_app(app)}"


def _human_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} days"


# -- history entries --------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One line of ``history.jsonl``.

    ``event`` is ``start`` or ``end`` (a deploy or rollback: ``kind``), or
    ``lock_broken`` / ``unlock`` (somebody broke a lock; ``data["previous"]``
    holds the old holder). ``id`` is the deploy id, ``who`` ``user@controller``,
    ``host`` the host the line was written on, ``time`` ISO 8601 UTC.
    ``result`` (end entries) is one of :data:`RESULTS`; ``duration`` in
    seconds; ``steps`` a summary (:func:`steps_summary`).
    """

    event: str
    id: str
    app: str
    kind: str = "deploy"
    who: str = ""
    host: str = ""
    time: str = ""
    version_from: str | None = None
    version_to: str | None = None
    strategy: str | None = None
    result: str | None = None
    duration: float | None = None
    steps: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON data (``None`` fields and empty mappings left out)."""
        raw: dict[str, Any] = {
            "event": self.event, "id": self.id, "app": self.app, "kind": self.kind,
            "who": self.who, "host": self.host, "time": self.time,
            "version_from": self.version_from, "version_to": self.version_to,
            "strategy": self.strategy, "result": self.result, "duration": self.duration,
            "steps": dict(self.steps), "message": self.message, "data": dict(self.data),
        }
        return {k: v for k, v in raw.items() if v not in (None, {}, "")}

    def to_line(self, secrets: Iterable[Secret] = ()) -> str:
        """One JSON line (with ``\\n``), secrets redacted, at most ~60 KiB (details dropped)."""
        secret_list = list(secrets)
        data = to_jsonable(self.to_dict(), secret_list)
        line = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        if len(line.encode()) > _LINE_LIMIT:
            data["steps"] = {"truncated": True}
            data["data"] = {"truncated": True}
            data["message"] = str(data.get("message", ""))[:2000]
            line = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        return line + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryEntry:
        """Rebuild an entry from :meth:`to_dict` output (unknown keys go to ``data``)."""
        known = {"event", "id", "app", "kind", "who", "host", "time", "version_from",
                 "version_to", "strategy", "result", "duration", "steps", "message", "data"}
        extra = {k: v for k, v in data.items() if k not in known}
        duration = data.get("duration")
        return cls(
            event=str(data["event"]), id=str(data["id"]), app=str(data.get("app", "")),
            kind=str(data.get("kind", "deploy")), who=str(data.get("who", "")),
            host=str(data.get("host", "")), time=str(data.get("time", "")),
            version_from=data.get("version_from"), version_to=data.get("version_to"),
            strategy=data.get("strategy"), result=data.get("result"),
            duration=None if duration is None else float(duration),
            steps=dict(data.get("steps") or {}), message=str(data.get("message", "")),
            data={**dict(data.get("data") or {}), **extra},
        )


def steps_summary(report: RunReport, host: str | None = None) -> dict[str, Any]:
    """What a history entry keeps of a run: counts, and which steps failed where.

    With ``host``, ``counts`` are that host's and ``fleet`` the run's totals;
    without, ``counts`` are the run's. ``failed`` lists ``host: step: message``
    (unreachable hosts and failed undo actions too; messages cut to 200 characters).
    """
    if host is None:
        reports = list(report.hosts.values())
    else:
        reports = [report.hosts[host]] if host in report.hosts else []
    counts = dict.fromkeys(("ok", "changed", "failed", "skipped"), 0)
    failed: list[str] = []
    for h in reports:
        for key, value in h.counts.items():
            counts[key] += value
        failed += [f"{h.host}: {r.task}: {r.message[:200]}" for r in h.results if r.failed]
        if h.error:
            failed.append(f"{h.host}: {h.error[:200]}")
        failed += [f"{h.host}: not undone: {u[:200]}" for u in h.undo_failed]
    summary: dict[str, Any] = {"counts": counts}
    if host is not None:
        summary["fleet"] = report.counts()
    if failed:
        summary["failed"] = failed[:20]
    return summary


# -- appending and reading history ------------------------------------------------------------


def _append_fn(history_path: str) -> str:
    """The shell function ``append SIZE``: the rest of stdin, which must be SIZE bytes,
    appended to the history with one ``write(2)``; prints a warning otherwise."""
    return (
        "append() { [ \"$1\" -gt 0 ] || return 0; "
        f"h={quote(history_path)}; "
        't=$(mktemp "${h%/*}/.append.XXXXXX") || { echo "warning cannot stage the history '
        'entry"; return 0; }; '
        'cat > "$t"; '
        'if [ "$(stat -c %s -- "$t")" != "$1" ]; then '
        'echo "warning history entry arrived incomplete, not written"; '
        'elif ! dd if="$t" of="$h" oflag=append conv=notrunc bs="$1" count=1 status=none; then '
        'echo "warning history append failed"; fi; '
        'rm -f -- "$t"; }'
    )


def _warnings(conn: Connection, output: str, what: str) -> list[str]:
    """Log (and return) the ``warning ...`` lines a lock or history script printed."""
    found = [line[8:] for line in output.splitlines() if line.startswith("warning ")]
    for text in found:
        log.warning("%s: %s: %s", conn.name, what, text)
    return found


def _payload(conn: Connection, entries: Sequence[HistoryEntry],
             secrets: Iterable[Secret] = ()) -> bytes:
    return "".join(e.to_line([*conn.secrets, *secrets]) for e in entries).encode()


def append_history(conn: Connection, app: str, entries: Sequence[HistoryEntry],
                   *, secrets: Iterable[Secret] = ()) -> None:
    """Append entries to the host's ``history.jsonl`` in one round trip, atomically.

    The lines travel on stdin (never in the logged command) and are written
    with one ``write(2)`` in append mode, or not at all (:class:`TaskError`);
    secrets (``secrets`` plus the connection's) are redacted first.
    """
    if not entries:
        return
    directory = state_dir(app)
    payload = _payload(conn, entries, secrets)
    script = "\n".join([
        "umask 027", f"mkdir -p -- {quote(directory)} || exit 1",
        _append_fn(f"{directory}/history.jsonl"), f"append {len(payload)}",
    ])
    out = conn.run(script, stdin=payload, timeout=_COMMAND_TIMEOUT, task="append history")
    problems = _warnings(conn, out.stdout, "history")
    if problems:
        raise TaskError(f"history of {app} not written: {problems[0]}", host=conn.name,
                        task="append history")


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse ``history.jsonl`` text; lines that are not entries are skipped (and logged)."""
    entries: list[HistoryEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            entries.append(HistoryEntry.from_dict(data))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("history line %d skipped: %s", number, exc)
    return entries


def history(conn: Connection, app: str, limit: int = 20) -> list[HistoryEntry]:
    """The last ``limit`` entries of the host's history, oldest first (read-only).

    An absent history is an empty list. Every deploy has a ``start`` and an
    ``end`` entry: see :func:`summarize_history` for one record per deploy.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"history limit must be a positive integer, not {limit!r}")
    path = quote(f"{state_dir(app)}/history.jsonl")
    out = conn.run(f"if [ -f {path} ]; then tail -n {limit} -- {path}; fi",
                   write=False, timeout=_COMMAND_TIMEOUT, task="read history")
    return parse_history(out.stdout)


@dataclass(frozen=True)
class DeployRecord:
    """One deploy or rollback, its ``start`` and ``end`` entries merged.

    ``result`` is None when there is no end entry: the deploy is still running
    or it crashed (see ``running_or_crashed``).
    """

    id: str
    kind: str
    who: str
    host: str
    started: str
    ended: str | None
    version_from: str | None
    version_to: str | None
    strategy: str | None
    result: str | None
    duration: float | None
    steps: Mapping[str, Any]
    message: str

    @property
    def running_or_crashed(self) -> bool:
        """True when the deploy started but never wrote its end entry."""
        return self.ended is None


def summarize_history(entries: Sequence[HistoryEntry]) -> list[DeployRecord]:
    """Merge ``start``/``end`` entries into one record per deploy, in start order.

    An end without its start (the start fell outside ``limit``) still gives a
    record. ``lock_broken``/``unlock`` entries are not deploys and are left out.
    """
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in entries:
        if e.event not in ("start", "end"):
            continue
        rec = records.setdefault((e.id, e.kind, e.host), {
            "id": e.id, "kind": e.kind, "who": e.who, "host": e.host, "started": "",
            "ended": None, "version_from": None, "version_to": None, "strategy": None,
            "result": None, "duration": None, "steps": {}, "message": ""})
        for key in ("version_from", "version_to", "strategy"):
            value = getattr(e, key)
            if value is not None:
                rec[key] = value
        if e.event == "start":
            rec["started"] = e.time
        else:
            rec.update(ended=e.time, result=e.result, duration=e.duration, steps=e.steps,
                       message=e.message)
    return [DeployRecord(**rec) for rec in records.values()]


# -- the lock ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: what ``holder.json`` says.

    ``token`` is a random value known to the holder only; a release removes
    the lock only when the token matches.
    """

    user: str
    controller: str
    deploy_id: str
    pid: int
    started: str
    token: str = ""
    app: str = ""

    @classmethod
    def for_this_process(cls, deploy_id: str, app: str) -> LockHolder:
        """A holder describing this process, with a fresh token."""
        user, controller = _who()
        return cls(user=user, controller=controller, deploy_id=deploy_id, pid=os.getpid(),
                   started=_now_iso(), token=_random.token_hex(16), app=app)

    def to_json(self) -> str:
        """``holder.json`` content (one line)."""
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LockHolder | None:
        """Parse ``holder.json``; None when it is unreadable."""
        try:
            data = json.loads(text)
            return cls(user=str(data["user"]), controller=str(data["controller"]),
                       deploy_id=str(data["deploy_id"]), pid=int(data["pid"]),
                       started=str(data["started"]), token=str(data.get("token", "")),
                       app=str(data.get("app", "")))
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def who(self) -> str:
        """``user@controller``."""
        return f"{self.user}@{self.controller}"

    def public(self) -> dict[str, Any]:
        """The holder without its token (for history entries and messages)."""
        return {k: v for k, v in self.__dict__.items() if k != "token"}


@dataclass(frozen=True)
class LockInfo:
    """A lock found on a host: its holder (None if ``holder.json`` is missing or
    unreadable, e.g. an acquire that crashed), its age by the host's clock."""

    host: str
    holder: LockHolder | None
    age: float
    ttl: float = DEFAULT_LOCK_TTL

    @property
    def stale(self) -> bool:
        """True when the lock is older than its TTL."""
        return self.age > self.ttl

    def describe(self) -> str:
        """``locked by alice@ctl (deploy <id>, pid 42) since <time> on web-1`` (+ staleness)."""
        h = self.holder
        if h is None:
            text = f"locked (holder unknown: no readable holder.json) on {self.host}"
        else:
            text = (f"locked by {h.who} (deploy {h.deploy_id}, pid {h.pid}) since {h.started} "
                    f"on {self.host}")
        if self.stale:
            text += (f"; STALE: held for {_human_age(self.age)}, longer than the lock TTL of "
                     f"{_human_age(self.ttl)} (the deploy may have crashed); break it with "
                     f"--break-lock, or invoke unlock --force")
        else:
            text += f"; held for {_human_age(self.age)}"
        return text


# Prints "<age> <base64 holder.json>" of the lock at $lock ("-" when holder.json is missing);
# the age is by the host's clock (mtime of holder.json, else of the lock directory).
_SHOW = (
    'show() { now=$(date +%s); '
    'mt=$(stat -c %Y -- "$lock/holder.json" 2>/dev/null || stat -c %Y -- "$lock"); '
    'printf "%s " "$((now - mt))"; '
    'if [ -s "$lock/holder.json" ]; then base64 -w0 < "$lock/holder.json"; '
    'else printf -- -; fi; echo; }'
)


def _guarded(app: str, body: Sequence[str]) -> str:
    """A script running ``body`` under the app's flock guard, with ``$d``, ``$lock``,
    ``show`` and ``append SIZE`` (the rest of stdin to the history, see :func:`_append_fn`)."""
    directory = state_dir(app)
    return "\n".join([
        "set -u", "umask 027",
        f"d={quote(directory)}",
        'mkdir -p -- "$d" || { echo "error cannot create $d"; exit 0; }',
        'command -v flock >/dev/null 2>&1 || { echo "error flock (util-linux) is not '
        'installed"; exit 0; }',
        'exec 9>>"$d/.guard" || { echo "error cannot open $d/.guard"; exit 0; }',
        f"flock -w {_GUARD_WAIT} 9 || {{ echo 'error another deploykit lock command on this "
        f"host did not finish within {_GUARD_WAIT} s'; exit 0; }}",
        'lock="$d/lock"',
        _SHOW,
        _append_fn(f"{directory}/history.jsonl"),
        *body,
    ])


def _acquire_script(app: str, ttl: float, break_stale: bool, size: int) -> str:
    """stdin: holder.json on the first line, then the history lines to append once locked
    (not when a stale lock was broken: the caller then writes the break record first)."""
    return _guarded(app, [
        "IFS= read -r holder || :",
        "broke=",
        f'if [ {int(break_stale)} = 1 ] && [ -d "$lock" ]; then',
        '  info=$(show); age=${info%% *}',
        f'  if [ "$age" -gt {int(ttl)} ]; then',
        '    printf "broken %s\\n" "$info"; rm -rf -- "$lock"; broke=1',
        "  fi",
        "fi",
        'if mkdir -- "$lock" 2>/dev/null; then',
        '  if printf "%s\\n" "$holder" > "$lock/holder.json" && [ -s "$lock/holder.json" ]; then',
        f'    [ -n "$broke" ] || append {size}',
        "    echo acquired",
        '  else rm -rf -- "$lock"; echo "error cannot write $lock/holder.json (disk full?)"; fi',
        'elif [ -d "$lock" ]; then printf "held "; show',
        'else echo "error cannot create $lock"; fi',
    ])


def _parse_lock_line(host: str, rest: str, ttl: float) -> LockInfo:
    age_text, _, encoded = rest.partition(" ")
    holder = None
    if encoded and encoded != "-":
        try:
            holder = LockHolder.from_json(base64.b64decode(encoded, validate=True).decode())
        except (binascii.Error, UnicodeDecodeError):
            holder = None
    try:
        age = float(age_text)
    except ValueError:
        raise TaskError(f"unexpected lock probe output: {rest!r}", host=host) from None
    return LockInfo(host=host, holder=holder, age=age, ttl=ttl)


@dataclass(frozen=True)
class LockAttempt:
    """What :func:`acquire_lock` found on one host."""

    host: str
    acquired: bool
    held_by: LockInfo | None = None
    """The current holder, when not acquired."""
    broken: LockInfo | None = None
    """The stale lock broken before acquiring (``break_lock=True``)."""
    nested: bool = False
    """Acquired inside the run that holds the lock (re-entrance): not ours to release."""


def acquire_lock(conn: Connection, app: str, holder: LockHolder, *,
                 ttl: float = DEFAULT_LOCK_TTL, break_lock: bool = False,
                 entries: Sequence[HistoryEntry] = (),
                 reentrant: Iterable[str] = ()) -> LockAttempt:
    """Try to take the lock on one host, in one round trip; never waits for it.

    Returns whether it was acquired, else the :class:`LockInfo` of the holder.
    ``entries`` (e.g. the deploy's ``start``) are appended to the history only
    when the lock was taken. With ``break_lock``, a *stale* lock (older than
    ``ttl``) is broken first, and a ``lock_broken`` entry naming the old holder
    is written before ``entries`` (a second round trip, only then). Raises
    :class:`TaskError` when the host cannot keep a lock (no room, no flock).

    ``reentrant``: deploy ids whose lock counts as ours when held by the same user
    on the same controller (the deploy this run was started from): the attempt is
    then ``acquired`` and ``nested``, and ``entries`` are appended (a second round trip).
    """
    lines = _payload(conn, entries)
    outer = set(reentrant)
    out = conn.run(_acquire_script(app, ttl, break_lock, len(lines)),
                   stdin=holder.to_json().encode() + b"\n" + lines,
                   timeout=_COMMAND_TIMEOUT, task="lock").stdout
    _warnings(conn, out, "lock")
    broken: LockInfo | None = None
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "broken":
            broken = _parse_lock_line(conn.name, rest, ttl)
        elif word == "acquired":
            if broken is not None:
                log.warning("%s: broke the stale %s lock: %s", conn.name, app, broken.describe())
                append_history(conn, app, [_break_entry(app, holder, broken, "break_lock"),
                                           *entries])
            return LockAttempt(conn.name, True, broken=broken)
        elif word == "held":
            info = _parse_lock_line(conn.name, rest, ttl)
            h = info.holder
            if h is not None and h.deploy_id in outer and (h.user, h.controller) == (
                    holder.user, holder.controller):
                append_history(conn, app, entries)
                log.info("%s: %s lock held by deploy %s, which this run is part of",
                         conn.name, app, h.deploy_id)
                return LockAttempt(conn.name, True, held_by=info, nested=True)
            return LockAttempt(conn.name, False, held_by=info)
        elif word == "error":
            raise TaskError(f"cannot take the deploy lock under {state_dir(app)}: {rest}",
                            host=conn.name, task="lock")
    raise TaskError(f"unexpected lock command output: {out.strip()[:200]!r}",
                    host=conn.name, task="lock")


def _break_entry(app: str, by: LockHolder, old: LockInfo, how: str) -> HistoryEntry:
    """The history record of a lock broken by ``by`` (``how``: break_lock, unlock ...)."""
    return HistoryEntry(
        event="lock_broken" if how == "break_lock" else "unlock", id=by.deploy_id, app=app,
        who=by.who, host=old.host, time=_now_iso(), message=f"{how}: {old.describe()}",
        data={"previous": old.holder.public() if old.holder else None,
              "age": round(old.age, 1), "stale": old.stale, "how": how})


def _remove_script(app: str, token: str, size: int) -> str:
    """Remove the lock if it has ``token`` (an empty token: whatever lock is there),
    appending stdin to the history first. Prints released, absent or foreign <info>."""
    return _guarded(app, [
        f"token={quote(token)}",
        f'if [ ! -d "$lock" ]; then append {size}; echo absent',
        'elif [ -z "$token" ] || '
        'grep -qF -- "\\"token\\":\\"$token\\"" "$lock/holder.json" 2>/dev/null; then',
        f'  append {size}; rm -rf -- "$lock" && echo released',
        'else printf "foreign "; show; fi',
    ])


def release_lock(conn: Connection, app: str, holder: LockHolder, *,
                 entries: Sequence[HistoryEntry] = ()) -> str:
    """Release our lock on one host (one round trip), appending ``entries`` first.

    Returns ``released``, ``absent`` (no lock any more: somebody broke it; the
    entries are still written) or ``foreign`` (the lock is now somebody else's:
    it is left alone, and so is the history).
    """
    if not holder.token:
        raise ConfigError("release_lock needs the holder that acquired the lock (its token)")
    return _remove(conn, app, holder.token, entries, task="unlock")


def _remove(conn: Connection, app: str, token: str, entries: Sequence[HistoryEntry],
            task: str) -> str:
    lines = _payload(conn, entries)
    out = conn.run(_remove_script(app, token, len(lines)), stdin=lines,
                   timeout=_COMMAND_TIMEOUT, task=task).stdout
    _warnings(conn, out, "unlock")
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("released", "absent"):
            return word
        if word == "foreign":
            log.warning("%s: the %s lock is not ours, left alone: %s", conn.name, app,
                        _parse_lock_line(conn.name, rest, DEFAULT_LOCK_TTL).describe())
            return word
        if word == "error":
            raise TaskError(f"cannot release the deploy lock under {state_dir(app)}: {rest}",
                            host=conn.name, task=task)
    raise TaskError(f"unexpected unlock command output: {out.strip()[:200]!r}",
                    host=conn.name, task=task)


def lock_status(conn: Connection, app: str, *, ttl: float = DEFAULT_LOCK_TTL) -> LockInfo | None:
    """The lock on one host, or None when it is free (read-only, one round trip)."""
    script = "\n".join([f"lock={quote(state_dir(app) + '/lock')}", _SHOW,
                        'if [ -d "$lock" ]; then printf "held "; show; fi'])
    out = conn.run(script, write=False, timeout=_COMMAND_TIMEOUT, task="lock status").stdout
    for line in out.splitlines():
        if line.startswith("held "):
            return _parse_lock_line(conn.name, line[5:], ttl)
    return None


def unlock(conn: Connection, app: str, *, force: bool = False, deploy_id: str | None = None,
           ttl: float = DEFAULT_LOCK_TTL) -> LockInfo | None:
    """Remove a lock left behind on one host (``invoke unlock``), recorded in the history.

    Removes the lock when it belongs to ``deploy_id`` (your own crashed
    deploy), or any lock with ``force=True`` (``invoke unlock --force``);
    otherwise raises :class:`LockHeldError` naming the holder. Returns the lock
    removed, or None when there was none. Two round trips (look, then remove
    exactly the lock looked at).
    """
    current = lock_status(conn, app, ttl=ttl)
    if current is None:
        return None
    ours = (deploy_id is not None and current.holder is not None
            and current.holder.deploy_id == deploy_id)
    if not (force or ours):
        raise LockHeldError(f"{current.describe()}; not removed: pass force=True "
                            f"(invoke unlock --force) to break it", host=conn.name)
    user, controller = _who()
    by = LockHolder(user=user, controller=controller, deploy_id=deploy_id or "-",
                    pid=os.getpid(), started=_now_iso())
    entry = _break_entry(app, by, current, "unlock --force" if force else "unlock")
    token = current.holder.token if current.holder is not None else ""
    state = _remove(conn, app, token, [entry], task="unlock")
    if state == "foreign":
        raise LockHeldError("the lock changed hands while unlocking; look again with "
                            "lock_status (invoke status) before breaking it", host=conn.name)
    if state == "released":
        log.warning("%s: %s lock removed by %s: %s", conn.name, app, by.who, current.describe())
        return current
    return None


# -- the fleet lock ---------------------------------------------------------------------------


class FleetLock:
    """The lock held on every host of a deploy; made by :func:`fleet_lock`.

    Call :meth:`end` before leaving the ``with`` block to set the deploy's
    result; leaving writes the ``end`` history entry and releases every host.
    """

    def __init__(self, conns: Sequence[Connection], app: str, holder: LockHolder, *,
                 kind: str = "deploy", version_from: str | Mapping[str, str] | None = None,
                 version_to: str | None = None, strategy: str | None = None,
                 forks: int = 10) -> None:
        self.conns = list(conns)
        self.app = app
        self.holder = holder
        self.kind = kind
        self.version_from = version_from
        self.version_to = version_to
        self.strategy = strategy
        self.forks = forks
        self.started = time.monotonic()
        self.broken: list[LockInfo] = []
        """Stale locks this deploy broke (``break_lock=True``)."""
        self.release_errors: dict[str, str] = {}
        """Hosts whose lock could not be released, and why (after the ``with`` block)."""
        self.nested: set[str] = set()
        """Hosts where the lock belongs to the deploy this one runs inside of (left held)."""
        self._end: dict[str, Any] | None = None
        self._released = False

    @property
    def deploy_id(self) -> str:
        """The deploy id the lock is held for."""
        return self.holder.deploy_id

    @property
    def hosts(self) -> list[str]:
        """The locked hosts' names."""
        return [c.name for c in self.conns]

    def end(self, result: DeployResult, *, steps: Mapping[str, Any] | RunReport | None = None,
            message: str = "", version_from: str | Mapping[str, str] | None = None,
            version_to: str | None = None) -> None:
        """Set the deploy's result, written as the ``end`` entry when the block exits.

        ``steps`` is a summary mapping or the run's :class:`RunReport` (each
        host's entry then gets its own counts and failed steps, see
        :func:`steps_summary`); ``version_from`` may map host names to versions.
        Without a call to ``end``, leaving the block records ``succeeded``, an
        exception ``failed`` (with its message) and Ctrl-C ``aborted``.
        """
        if result not in RESULTS:
            raise ConfigError(f"deploy result must be one of {', '.join(RESULTS)}, "
                              f"not {result!r}")
        self._end = {"result": result, "steps": steps, "message": message,
                     "version_from": version_from, "version_to": version_to}

    def entry(self, event: str, host: str, **fields: Any) -> HistoryEntry:
        """A history entry of this deploy for ``host`` (kind, who, versions, strategy filled)."""
        version_from = fields.pop("version_from", None) or self.version_from
        if isinstance(version_from, Mapping):
            version_from = version_from.get(host)
        return HistoryEntry(
            event=event, id=self.deploy_id, app=self.app, kind=self.kind, who=self.holder.who,
            host=host, time=_now_iso(), version_from=version_from,
            version_to=fields.pop("version_to", None) or self.version_to,
            strategy=self.strategy, **fields)

    def _end_entry(self, host: str, exc: BaseException | None) -> HistoryEntry:
        end = dict(self._end or {})
        if self._end is None:
            if exc is None:
                end["result"] = "succeeded"
            elif isinstance(exc, KeyboardInterrupt):
                end.update(result="aborted", message="interrupted (Ctrl-C)")
            else:
                end.update(result="failed", message=(str(exc) or type(exc).__name__)[:2000])
        steps = end.get("steps")
        summary = steps_summary(steps, host) if isinstance(steps, RunReport) else dict(
            steps or {})
        return self.entry("end", host, result=end["result"], steps=summary,
                          message=end.get("message", ""),
                          duration=round(time.monotonic() - self.started, 3),
                          version_from=end.get("version_from"),
                          version_to=end.get("version_to"))

    def release(self, exc: BaseException | None = None) -> None:
        """Write the end entries and release every host, in parallel (once; on exit).

        A host that cannot be released is logged and listed in
        :attr:`release_errors`; it never masks the deploy's own outcome.
        """
        if self._released:
            return
        self._released = True

        def one(conn: Connection) -> None:
            try:
                if conn.name in self.nested:  # the outer deploy releases it
                    append_history(conn, self.app, [self._end_entry(conn.name, exc)])
                    return
                state = release_lock(conn, self.app, self.holder,
                                     entries=[self._end_entry(conn.name, exc)])
                if state == "foreign":
                    self.release_errors[conn.name] = ("the lock was broken and taken by "
                                                      "another deploy; left alone")
            except DeployError as error:
                self.release_errors[conn.name] = error.message
                log.warning("%s: could not release the %s lock: %s (remove it with invoke "
                            "unlock --force)", conn.name, self.app, error.message)

        _in_parallel(self.conns, one, self.forks)

    def __enter__(self) -> FleetLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release(exc)


def _in_parallel(conns: Sequence[Connection], work: Callable[[Connection], _T],
                 forks: int) -> list[_T]:
    """``work(conn)`` for every connection in a bounded pool. Waits for every call even
    when interrupted: what a half-taken lock holds must be known before releasing it."""
    if not conns:
        return []
    pool = ThreadPoolExecutor(max_workers=max(1, min(forks, len(conns))))
    futures: list[Future[_T]] = [pool.submit(work, c) for c in conns]
    try:
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True)


@contextlib.contextmanager
def fleet_lock(
    conns: Sequence[Connection],
    app: str,
    deploy_id: str,
    *,
    ttl: float = DEFAULT_LOCK_TTL,
    break_lock: bool = False,
    kind: Kind = "deploy",
    version_from: str | Mapping[str, str] | None = None,
    version_to: str | None = None,
    strategy: str | None = None,
    forks: int = 10,
    wait: float = 0.0,
    on_wait: Callable[[LockHeldError, float], None] | None = None,
    poll: float = 2.0,
    outer: str | None = None,
) -> Iterator[FleetLock]:
    """Hold the deploy lock of ``app`` on every host for the ``with`` block.

    Acquires on every host, **all or nothing**: the first host by name alone
    (so that of several deploys racing for the same hosts exactly one goes
    on), then the others in parallel. When any host is locked, the locks
    already taken are released and :class:`LockHeldError` names each holder
    (``locked by alice@ctl (deploy <id>, pid 42) since <time> on web-1; held
    for 3 min``). A stale lock (older than ``ttl`` seconds, by
    the host's clock) is reported as STALE and broken only with
    ``break_lock=True``, which records a ``lock_broken`` history entry.

    With ``wait`` (seconds), a held lock is polled every ``poll`` seconds until it
    is free or ``wait`` has passed (then :class:`LockHeldError`, saying how long it
    waited); ``on_wait(error, waited_seconds)`` is called before each pause (it may
    raise to stop waiting, e.g. on Ctrl-C). ``outer`` (default
    ``$DEPLOYKIT_DEPLOY_ID``, see :func:`outer_deploy_id`) is the deploy this one
    runs inside of: hosts it holds are taken as nested (:attr:`FleetLock.nested`).

    A ``start`` history entry (``kind``, versions, ``strategy``) is written with
    each lock, in the same round trip; leaving the block writes the ``end``
    entry (see :meth:`FleetLock.end`) and releases, on success, on an exception
    and on Ctrl-C. Hosts locked before a failed acquisition get an ``aborted``
    end entry. Any other failure to lock (a host unreachable) releases the
    others and re-raises it.
    """
    _check_app(app)
    _check_deploy_id(deploy_id)
    if kind not in ("deploy", "rollback"):
        raise ConfigError(f"kind must be 'deploy' or 'rollback', not {kind!r}")
    if ttl <= 0:
        raise ConfigError(f"lock ttl must be positive, not {ttl!r}")
    if wait < 0:
        raise ConfigError(f"lock wait must be 0 or more seconds, not {wait!r}")
    holder = LockHolder.for_this_process(deploy_id, app)
    options: dict[str, Any] = {"kind": kind, "version_from": version_from,
                               "version_to": version_to, "strategy": strategy, "forks": forks}
    reentrant = [i for i in (outer or outer_deploy_id(),) if i and i != deploy_id]
    began = time.monotonic()
    while True:
        try:
            lock = _acquire_fleet(conns, app, holder, ttl, break_lock, options, reentrant)
            break
        except LockHeldError as error:
            waited = time.monotonic() - began
            if waited >= wait:
                if wait:
                    raise LockHeldError(f"{error.message}; gave up after waiting "
                                        f"{_human_age(waited)}") from None
                raise
            if on_wait is not None:
                on_wait(error, waited)
            time.sleep(max(0.05, min(poll, wait - waited)))
    log.info("%s lock taken on %s for deploy %s", app, ", ".join(lock.hosts), deploy_id)
    exc: BaseException | None = None
    try:
        yield lock
    except BaseException as error:
        exc = error
        raise
    finally:
        lock.release(exc)


def _acquire_fleet(conns: Sequence[Connection], app: str, holder: LockHolder, ttl: float,
                   break_lock: bool, options: Mapping[str, Any],
                   reentrant: Sequence[str]) -> FleetLock:
    """One all-or-nothing attempt of :func:`fleet_lock`: the lock, or LockHeldError."""
    lock = FleetLock(conns, app, holder, **options)
    attempts: dict[str, LockAttempt | DeployError] = {}

    def take(conn: Connection) -> None:
        try:
            attempts[conn.name] = acquire_lock(conn, app, holder, ttl=ttl, break_lock=break_lock,
                                               entries=[lock.entry("start", conn.name)],
                                               reentrant=reentrant)
        except DeployError as exc:
            attempts[conn.name] = exc

    def give_back(reason: str) -> None:
        taken = [c for c in conns if isinstance(a := attempts.get(c.name), LockAttempt)
                 and a.acquired]
        partial = FleetLock(taken, app, holder, **options)
        partial.nested = {c.name for c in taken if getattr(attempts[c.name], "nested", False)}
        partial.started = lock.started
        partial.end("aborted", message=reason)
        partial.release()
        lock.release_errors.update(partial.release_errors)

    # The first host by name is taken alone, first: of several deploys racing for the same
    # hosts, exactly one gets it and goes on; the others stop there. The rest in parallel.
    ordered = sorted(conns, key=lambda c: c.name)
    try:
        if ordered:
            _in_parallel(ordered[:1], take, lock.forks)  # through the pool: Ctrl-C waits for it
            first = attempts[ordered[0].name]
            if isinstance(first, LockAttempt) and first.acquired:
                _in_parallel(ordered[1:], take, lock.forks)
    except BaseException:
        give_back("interrupted while taking the lock")
        raise
    held = sorted((a.held_by for a in attempts.values()
                   if isinstance(a, LockAttempt) and not a.acquired and a.held_by is not None),
                  key=lambda i: i.host)
    errors = [a for a in attempts.values() if isinstance(a, DeployError)]
    if held or errors:
        give_back("the lock could not be taken on every host")
        if held:
            raise LockHeldError("; ".join(info.describe() for info in held))
        raise errors[0]
    lock.broken = [a.broken for a in attempts.values()
                   if isinstance(a, LockAttempt) and a.broken is not None]
    lock.nested = {n for n, a in attempts.items() if isinstance(a, LockAttempt) and a.nested}
    return lock


# -- local run files --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """Where one deploy's files go on the controller."""

    json: Path
    log: Path


def run_files(deploy_id: str, base: str | os.PathLike[str] = RUNS_DIR) -> RunFiles:
    """``<base>/<deploy_id>.json`` and ``.log`` (``base`` defaults to ``.deploykit/runs``)."""
    _check_deploy_id(deploy_id)
    root = Path(base)
    return RunFiles(json=root / f"{deploy_id}.json", log=root / f"{deploy_id}.log")


def write_run_report(report: RunReport, deploy_id: str | None = None,
                     base: str | os.PathLike[str] = RUNS_DIR) -> Path:
    """Write the run report to ``.deploykit/runs/<deploy_id>.json`` (0600, atomic, redacted).

    ``deploy_id`` defaults to the report's ``run_id`` (give the runner
    ``run_id=deploy_id``).
    """
    return report.write_json(run_files(deploy_id or report.run_id, base).json)


LOG_LEVEL_ENV = "DEPLOYKIT_LOG_LEVEL"


def log_level() -> int:
    """``$DEPLOYKIT_LOG_LEVEL`` (``debug``, ``info``, ``warning``) as a logging level;
    WARNING when unset. An unknown name is a ConfigError."""
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().lower()
    levels = {"": logging.WARNING, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR}
    if name not in levels:
        raise ConfigError(f"${LOG_LEVEL_ENV}: {name!r} is not one of debug, info, warning, "
                          f"error")
    return levels[name]


class _RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: set[Secret]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class RunLog:
    """The run's log file: deploykit's log records for one deploy, secrets redacted.

    >>> with RunLog(run_files(deploy_id).log, secrets=[token]) as run_log:  # doctest: +SKIP
    ...     run_log.write("deploy started")

    While open, records of the ``deploykit`` logger at ``level`` and above
    (``logging.DEBUG`` adds every remote command; the default is INFO, or DEBUG with
    ``$DEPLOYKIT_LOG_LEVEL=debug``, see :func:`log_level`) go to the file, created
    0600; every line passes through :func:`~deploykit.secrets.redact` with
    the given secrets (add more with :meth:`add_secrets`).
    """

    def __init__(self, path: str | os.PathLike[str], *, secrets: Iterable[Secret] = (),
                 level: int | None = None) -> None:
        self.path = Path(path)
        self.level = min(log_level(), logging.INFO) if level is None else level
        self.secrets: set[Secret] = set(secrets)
        self._handler: logging.Handler | None = None
        self._previous_level = logging.NOTSET
        self._logger = logging.getLogger("deploykit")

    def add_secrets(self, secrets: Iterable[Secret]) -> None:
        """Redact these values too from now on."""
        self.secrets.update(secrets)

    def write(self, message: str) -> None:
        """Add one line to the log (redacted), logged at INFO on ``deploykit.journal``
        (so written when ``level`` is INFO or lower)."""
        log.info("%s", message)

    def __enter__(self) -> RunLog:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setLevel(self.level)
        handler.setFormatter(_RedactingFormatter(self.secrets))
        self._handler = handler
        self._previous_level = self._logger.level
        if self._logger.getEffectiveLevel() > self.level:
            self._logger.setLevel(self.level)
        self._logger.addHandler(handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
            self._logger.setLevel(self._previous_level)
