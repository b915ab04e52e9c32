"""The app contract's ``health`` and ``version`` checks: configured, not demanded.

An app is healthy when ``GET <path>`` answers one of the expected statuses and, when
configured, a JSON field (with an expected value, or just present) or a body pattern::

    health:  {path: /-/versions.json, json_field: datasette.version}      # datasette
    health:  {path: /admin/login/, status: [200]}                          # Django's own page
    health:  {path: /health, json_field: status, json_value: ok}           # a JSON health API
    version: {path: /version, json_field: version}    # or body_pattern: 'v{version}\\b'
    version: null                                     # no version check

Both are steps from :mod:`deploykit.tasks.http` (``ok``/``failed``, the last response
in ``data``), against a base URL such as ``http://{address}:8001`` or, with
``via_ssh``, ``http://127.0.0.1:8001`` as seen from the host (a colour before nginx
sends it traffic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from deploykit.errors import ConfigError
from deploykit.tasks import http

__all__ = ["HttpCheck", "VersionCheck"]

_UNSET: Any = http.PRESENT


def _statuses(value: object, key: str) -> tuple[int, ...]:
    items = (value,) if isinstance(value, int) else value
    if not isinstance(items, (list, tuple)) or not items or any(
            isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599
            for s in items):
        raise ConfigError(f"{key}.status: an HTTP status (100-599) or a list of them, "
                          f"not {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class HttpCheck:
    """``GET path`` answers one of ``status``; optionally ``json_field`` (dotted path)
    exists (equal to ``json_value`` when given), and the body matches ``body_pattern``
    (a regular expression, searched)."""

    path: str = "/"
    status: tuple[int, ...] | int = (200,)
    json_field: str | None = None
    json_value: Any = field(default=_UNSET)
    body_pattern: str | None = None
    retries: int = 30
    interval: float = 1.0
    timeout: float = 5.0
    key: str = field(default="health", compare=False, repr=False)

    def __post_init__(self) -> None:
        key = self.key
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigError(f"{key}.path: must start with '/', not {self.path!r}")
        if any(c.isspace() or ord(c) < 32 for c in self.path):
            raise ConfigError(f"{key}.path: must not contain spaces or control characters")
        object.__setattr__(self, "status", _statuses(self.status, key))
        if self.json_field is not None and (not isinstance(self.json_field, str) or
                                            "" in self.json_field.split(".")):
            raise ConfigError(f"{key}.json_field: invalid path {self.json_field!r} "
                              f"(use 'a.b.c')")
        if self.json_value is not _UNSET and self.json_field is None:
            raise ConfigError(f"{key}.json_value: needs json_field")
        if self.body_pattern is not None:
            try:
                re.compile(self.body_pattern)
            except (re.error, TypeError) as exc:
                raise ConfigError(f"{key}.body_pattern: not a regular expression "
                                  f"({exc})") from None
        for name, low in (("retries", 0), ("interval", 0), ("timeout", 0.001)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ConfigError(f"{key}.{name}: a number >= {low}, not {value!r}")

    def url(self, base: str) -> str:
        """``base`` (``http://{address}:8001``) joined with :attr:`path`."""
        return base.rstrip("/") + self.path

    def expectations(self, version: str | None = None) -> tuple[dict[str, Any],
                                                                 re.Pattern[str] | None]:
        """(json_expect, compiled body pattern) for :func:`deploykit.tasks.http` checkers."""
        expect = {self.json_field: self.json_value} if self.json_field else {}
        pattern = re.compile(self.body_pattern) if self.body_pattern else None
        return expect, pattern

    def task(self, base: str, *, via_ssh: bool = False, headers: dict[str, str] | None = None,
             name: str | None = None, version: str | None = None) -> http.WaitForTask:
        """The step checking ``base + path`` (``{address}``/``{name}`` filled per host)."""
        expect, pattern = self.expectations(version)
        task = http.wait_for_task(self.url(base), status=self.status, json_expect=expect,
                                  retries=self.retries, interval=self.interval,
                                  timeout=self.timeout, headers=headers, via_ssh=via_ssh,
                                  name=name or f"{self.key} {self.url(base)}")
        if pattern is not None:
            task.mismatch = http.checker(self.status, expect, None, pattern)
        return task


@dataclass(frozen=True)
class VersionCheck(HttpCheck):
    """The release's version, read from ``json_field``, or matched by ``body_pattern``
    with ``{version}`` standing for it; with neither, the whole body (stripped, or a
    JSON string) must be the version. One attempt by default (the health check waited)."""

    path: str = "/version"
    retries: int = 0
    key: str = field(default="version", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.json_value is not _UNSET:
            raise ConfigError("version.json_value: the expected value is the release's "
                              "version; give json_field only")
        if self.body_pattern is not None and "{version}" not in self.body_pattern:
            raise ConfigError("version.body_pattern: must contain {version}")
        super().__post_init__()

    def expectations(self, version: str | None = None) -> tuple[dict[str, Any],
                                                                 re.Pattern[str] | None]:
        if version is None:
            raise ConfigError("version check: the expected version is required")
        if self.body_pattern is None:
            return {}, None
        parts = self.body_pattern.split("{version}")
        return {}, re.compile(re.escape(version).join(parts))

    def task(self, base: str, *, via_ssh: bool = False, headers: dict[str, str] | None = None,
             name: str | None = None, version: str | None = None) -> http.WaitForTask:
        """The step checking that ``base + path`` reports ``version``."""
        _, pattern = self.expectations(version)
        assert version is not None
        label = name or f"version {self.url(base)} {version}"
        if self.json_field is None and pattern is None:
            return http.expect_version_task(self.url(base), version, retries=self.retries,
                                            interval=self.interval, timeout=self.timeout,
                                            headers=headers, via_ssh=via_ssh, name=label)
        if self.json_field is not None:
            task = http.expect_version_task(self.url(base), version, field=self.json_field,
                                            retries=self.retries, interval=self.interval,
                                            timeout=self.timeout, headers=headers,
                                            via_ssh=via_ssh, name=label)
            return task
        task = http.wait_for_task(self.url(base), status=self.status, retries=self.retries,
                                  interval=self.interval, timeout=self.timeout,
                                  headers=headers, via_ssh=via_ssh, name=label)
        check = http.checker(self.status, None, None, pattern)
        shown = self.body_pattern

        def mismatch(response: http.Response) -> str | None:
            reason = check(response)
            if reason is not None and reason.startswith("body does not match"):
                return f"version {version!r} not found: body does not match {shown!r}"
            return reason

        task.mismatch = mismatch
        task.what = "wrong version"
        return task
