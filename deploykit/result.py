"""Results of a run: one :class:`Result` per step and host, grouped per host and per run.

``Result`` is what a task returns; ``HostReport`` keeps one host's results plus
what the runner undid there; ``RunReport`` is the whole run, serialisable to
JSON. Serialisation redacts: a :class:`~deploykit.secrets.Secret` anywhere in
the data becomes ``********``, and every string is passed through
:func:`~deploykit.secrets.redact` with the run's secrets, so a secret value
echoed by a remote command never reaches a report file.

Counts are exclusive: a changed step counts as ``changed`` only, not also as
``ok`` (unlike Ansible), so the four counts add up to the number of steps.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from deploykit.secrets import REDACTED, Secret, redact

__all__ = ["HostReport", "Result", "RunReport", "Status", "to_jsonable"]

COUNT_KEYS = ("ok", "changed", "failed", "skipped")


class Status(StrEnum):
    """Outcome of one step on one host."""

    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"


def to_jsonable(value: object, secrets: Sequence[Secret] = ()) -> Any:
    """Return ``value`` as plain JSON data with secrets redacted.

    ``Secret`` objects become ``********``; strings (and dict keys) have every
    secret value replaced; tuples and sets become lists; non-finite floats and
    any other object become their (redacted) ``str``, so serialising a report
    never fails at the end of a deploy.
    """
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return redact(str(value), secrets)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {_key(k, secrets): to_jsonable(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v, secrets) for v in value]
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"), secrets)
    return redact(str(value), secrets)


def _key(key: object, secrets: Sequence[Secret]) -> str:
    return REDACTED if isinstance(key, Secret) else redact(str(key), secrets)


@dataclass
class Result:
    """The outcome of one step on one host.

    In check mode (``check=True``) ``CHANGED`` means "would change" and
    ``diff`` shows what would be done.
    """

    host: str
    task: str
    status: Status
    diff: str = ""
    message: str = ""
    duration: float = 0.0
    check: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def ok(self) -> bool:
        """True unless the step failed (skipped and changed count as ok)."""
        return self.status is not Status.FAILED

    @property
    def failed(self) -> bool:
        """True when the step failed."""
        return self.status is Status.FAILED

    @property
    def changed(self) -> bool:
        """True when the step changed (or in check mode would change) the host."""
        return self.status is Status.CHANGED

    @property
    def skipped(self) -> bool:
        """True when the step was skipped."""
        return self.status is Status.SKIPPED

    def to_dict(self, secrets: Sequence[Secret] = ()) -> dict[str, Any]:
        """Return the result as JSON data, redacting ``secrets`` in every string."""
        raw = {
            "host": self.host,
            "task": self.task,
            "status": self.status.value,
            "diff": self.diff,
            "message": self.message,
            "duration": self.duration,
            "check": self.check,
            "data": self.data,
        }
        return dict(to_jsonable(raw, secrets))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """Rebuild a result from :meth:`to_dict` output."""
        return cls(
            host=data["host"],
            task=data["task"],
            status=Status(data["status"]),
            diff=data.get("diff", ""),
            message=data.get("message", ""),
            duration=float(data.get("duration", 0.0)),
            check=bool(data.get("check", False)),
            data=dict(data.get("data", {})),
        )


@dataclass
class HostReport:
    """One host's results, in order, plus host-level failure and undo outcome."""

    host: str
    results: list[Result] = field(default_factory=list)
    unreachable: bool = False
    error: str = ""
    undone: list[str] = field(default_factory=list)
    undo_failed: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Number of results per status: ``ok``, ``changed``, ``failed``, ``skipped``."""
        counts = dict.fromkeys(COUNT_KEYS, 0)
        for result in self.results:
            counts[result.status.value] += 1
        return counts

    @property
    def failed(self) -> bool:
        """True when a step failed, the host was unreachable or had a host-level error."""
        return self.unreachable or bool(self.error) or any(r.failed for r in self.results)

    @property
    def changed(self) -> bool:
        """True when any step changed (or would change) the host."""
        return any(r.changed for r in self.results)

    @property
    def outcome(self) -> str:
        """The host in one word: ``failed``, else ``changed``, else ``ok``."""
        if self.failed:
            return "failed"
        return "changed" if self.changed else "ok"

    def to_dict(self, secrets: Sequence[Secret] = ()) -> dict[str, Any]:
        """Return the host report as JSON data, redacting ``secrets`` in every string."""
        return {
            "host": to_jsonable(self.host, secrets),
            "failed": self.failed,
            "unreachable": self.unreachable,
            "error": to_jsonable(self.error, secrets),
            "counts": self.counts,
            "results": [r.to_dict(secrets) for r in self.results],
            "undone": to_jsonable(self.undone, secrets),
            "undo_failed": to_jsonable(self.undo_failed, secrets),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostReport:
        """Rebuild a host report from :meth:`to_dict` output."""
        return cls(
            host=data["host"],
            results=[Result.from_dict(r) for r in data.get("results", [])],
            unreachable=bool(data.get("unreachable", False)),
            error=data.get("error", ""),
            undone=list(data.get("undone", [])),
            undo_failed=list(data.get("undo_failed", [])),
        )


@dataclass
class RunReport:
    """A whole run: every host's report, in the order hosts were first seen.

    ``secrets`` are the run's secret values; they are never serialised, only
    used to redact every string in :meth:`to_dict`. :meth:`add` and
    :meth:`host` are safe to call from the runner's worker threads.
    """

    run_id: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    check: bool = False
    hosts: dict[str, HostReport] = field(default_factory=dict)
    secrets: list[Secret] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def add(self, result: Result) -> None:
        """Append ``result`` to its host's report, creating the report if needed."""
        self.host(result.host).results.append(result)

    def host(self, name: str) -> HostReport:
        """Return the report for host ``name``, creating an empty one if needed."""
        with self._lock:
            report = self.hosts.get(name)
            if report is None:
                report = self.hosts[name] = HostReport(name)
            return report

    def mark_unreachable(self, name: str, error: str) -> None:
        """Record that host ``name`` could not be reached, and why."""
        report = self.host(name)
        report.unreachable = True
        report.error = error

    def merge(self, part: RunReport) -> None:
        """Append another run's results, undo records and secrets to this report
        (a strategy runs in phases; one report tells the whole deploy)."""
        for name, entry in part.hosts.items():
            host = self.host(name)
            host.results.extend(entry.results)
            host.undone.extend(entry.undone)
            host.undo_failed.extend(entry.undo_failed)
            host.unreachable = host.unreachable or entry.unreachable
            host.error = host.error or entry.error
        self.secrets.extend(s for s in part.secrets if s not in self.secrets)

    def finish(self) -> None:
        """Record the end time of the run (now)."""
        self.finished = time.time()

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or None while running."""
        return None if self.finished is None else self.finished - self.started

    @property
    def failed(self) -> bool:
        """True when any host failed."""
        return any(h.failed for h in self.hosts.values())

    @property
    def ok(self) -> bool:
        """True when no host failed."""
        return not self.failed

    def counts(self) -> dict[str, int]:
        """Total number of results per status over all hosts."""
        totals = dict.fromkeys(COUNT_KEYS, 0)
        for report in self.hosts.values():
            for key, value in report.counts.items():
                totals[key] += value
        return totals

    def to_dict(self) -> dict[str, Any]:
        """Return the run as JSON data, with the run's secrets redacted everywhere."""
        secrets = list(self.secrets)
        return {
            "run_id": to_jsonable(self.run_id, secrets),
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "check": self.check,
            "ok": self.ok,
            "counts": self.counts(),
            "hosts": {
                to_jsonable(name, secrets): report.to_dict(secrets)
                for name, report in list(self.hosts.items())
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Return :meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON to ``path`` atomically, with mode 0600.

        The JSON goes to a temporary file in the same directory (created
        0600), is flushed to disk, then renamed over ``path``: readers see the
        old file or the new one, never half of one. Parent directories are
        created as needed. Returns the path written.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = self.to_json()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """Rebuild a run report from :meth:`to_dict` output (secrets stay redacted)."""
        return cls(
            run_id=data["run_id"],
            started=float(data["started"]),
            finished=None if data.get("finished") is None else float(data["finished"]),
            check=bool(data.get("check", False)),
            hosts={name: HostReport.from_dict(h) for name, h in data.get("hosts", {}).items()},
        )

    @classmethod
    def read_json(cls, path: str | os.PathLike[str]) -> RunReport:
        """Load a report written by :meth:`write_json`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
