"""The host-side history: ``/var/lib/deploykit/<app>/history.jsonl``, appended atomically."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.journal.ids import _COMMAND_TIMEOUT, _LINE_LIMIT, state_dir
from deploykit.result import RunReport, to_jsonable
from deploykit.secrets import Secret
from deploykit.shell import quote

log = logging.getLogger("deploykit.journal")

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
    appended to the history with one ``write(2)``; prints a warning and returns 1
    otherwise."""
    return (
        "append() { [ \"$1\" -gt 0 ] || return 0; "
        f"h={quote(history_path)}; "
        't=$(mktemp "${h%/*}/.append.XXXXXX") || { echo "warning cannot stage the history '
        'entry"; cat > /dev/null; return 1; }; '
        'cat > "$t"; r=0; '
        'if [ "$(stat -c %s -- "$t")" != "$1" ]; then '
        'echo "warning history entry arrived incomplete, not written"; r=1; '
        'elif ! dd if="$t" of="$h" oflag=append conv=notrunc bs="$1" count=1 status=none; then '
        'echo "warning history append failed"; r=1; fi; '
        'rm -f -- "$t"; return $r; }'
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
        _append_fn(f"{directory}/history.jsonl"), f"append {len(payload)} || :",
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


