"""Feature flags stored in Redis: the small runtime API applications import.

Needs only redis-py (and :mod:`deploykit.errors`): no SSH, no paramiko. Deploys
set flags with :mod:`deploykit.tasks.flags` (or ``invoke flags.set``); apps read
them::

    import redis
    from deploykit.flags import Flags

    flags = Flags(redis.Redis(), max_age=1.0)
    if flags.is_enabled("new-checkout", user_id=user.id):
        ...

Storage: one hash per flag at ``deploykit:flag:<name>`` with the fields

==============  ==============================================================
``enabled``     ``1`` or ``0``: the flag's main switch
``rollout``     percentage of users (0-100, steps of 0.01) who get it
``allow``       JSON list of user ids who get it whatever the rollout
``killed``      ``1`` or ``0``: the kill switch, overriding everything
``updated_at``  when a deploy last changed the flag (UTC, ISO 8601)
==============  ==============================================================

Evaluation, in order: killed -> off; not enabled -> off; user in ``allow`` ->
on; otherwise on when the user's bucket is under the rollout. A user's bucket
is ``sha256("<flag>:<user_id>")`` mapped to 0..9999: stable across processes
and hosts, independent between flags, and *monotonic*: a user in at 25 % is
still in at 50 %. Without a user id only a 100 % rollout is on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from deploykit.errors import ConfigError

__all__ = [
    "BUCKETS",
    "DEFAULTS",
    "KEY_PREFIX",
    "Flag",
    "Flags",
    "bucket",
    "check_name",
    "check_rollout",
    "encode",
    "flag_key",
    "glob_escape",
    "render_field",
]

log = logging.getLogger("deploykit.flags")

KEY_PREFIX = "deploykit:flag:"
"""Each flag is the Redis hash ``KEY_PREFIX + name``."""
BUCKETS = 10_000
"""Users are spread over this many buckets: rollouts have a 0.01 % resolution."""
FIELDS = ("enabled", "rollout", "allow", "killed")
"""The hash fields a flag's state is made of (``updated_at`` is bookkeeping)."""
DEFAULTS: Mapping[str, str] = {"enabled": "0", "rollout": "100", "allow": "[]", "killed": "0"}
"""Encoded values a new flag gets for the fields a deploy does not set."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_name(name: object) -> str:
    """Return ``name`` when it is a valid flag name, else raise ConfigError naming it.

    1-100 characters: letters, digits, ``_``, ``.``, ``-``; starting with a
    letter or digit (no spaces, no ``:`` or glob characters).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"invalid flag name {name!r}: use 1-100 letters, digits, '_', '.' "
                          f"or '-', starting with a letter or digit (no spaces)")
    return name


def check_rollout(value: object, flag: str | None = None) -> float:
    """A rollout percentage as a float in 0..100, rounded to 0.01; ConfigError otherwise."""
    where = f" of flag {flag!r}" if flag else ""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"rollout{where} must be a number from 0 to 100, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"rollout{where} must be a number from 0 to 100, "
                          f"not {value!r}") from None
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise ConfigError(f"rollout{where} must be from 0 to 100 (a percentage), not {value!r}")
    return round(number, 2)


def flag_key(name: str, prefix: str = KEY_PREFIX) -> str:
    """The Redis key of flag ``name``."""
    return prefix + check_name(name)


def bucket(flag: str, user_id: object) -> int:
    """The user's bucket for ``flag``, 0..9999: the first 8 bytes of
    ``sha256("<flag>:<user_id>")`` modulo :data:`BUCKETS`."""
    digest = hashlib.sha256(f"{flag}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _format_rollout(value: float) -> str:
    return f"{value:g}"


def encode(*, enabled: bool | None = None, rollout: float | None = None,
           allow: Iterable[object] | None = None, killed: bool | None = None) -> dict[str, str]:
    """The hash fields for the given (non-None) attributes, in their stored form.

    ``allow`` is stored as a sorted JSON list of strings (user ids compare as text).
    """
    fields: dict[str, str] = {}
    if enabled is not None:
        fields["enabled"] = "1" if enabled else "0"
    if rollout is not None:
        fields["rollout"] = _format_rollout(check_rollout(rollout))
    if allow is not None:
        fields["allow"] = json.dumps(sorted({str(u) for u in allow}))
    if killed is not None:
        fields["killed"] = "1" if killed else "0"
    return fields


def render_field(field_name: str, raw: str | None) -> str:
    """How reports show a stored field: ``true``/``false``, ``25``, ``["u1", "u2"]``."""
    if raw is None:
        return "(none)"
    if field_name in ("enabled", "killed"):
        return {"1": "true", "0": "false"}.get(raw, repr(raw))
    if field_name == "allow":
        try:
            return json.dumps(json.loads(raw))
        except ValueError:
            return repr(raw)
    return raw


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Flag:
    """One flag's state, as stored in its hash."""

    name: str
    enabled: bool = False
    rollout: float = 100.0
    allow: frozenset[str] = field(default_factory=frozenset)
    killed: bool = False
    updated_at: str | None = None

    @classmethod
    def from_hash(cls, name: str, data: Mapping[Any, Any]) -> Flag:
        """Parse a flag's hash (bytes or str keys/values); ConfigError names a bad field."""
        raw = {_text(k): _text(v) for k, v in data.items()}
        merged = {**DEFAULTS, **raw}

        def switch(key: str) -> bool:
            if merged[key] not in ("0", "1"):
                raise ConfigError(f"flag {name!r}: field {key} is {merged[key]!r}, not 0 or 1")
            return merged[key] == "1"

        try:
            allow = json.loads(merged["allow"])
            if not isinstance(allow, list):
                raise ValueError(allow)
        except ValueError:
            raise ConfigError(f"flag {name!r}: field allow is {merged['allow']!r}, "
                              f"not a JSON list") from None
        return cls(name=name, enabled=switch("enabled"),
                   rollout=check_rollout(merged["rollout"], name),
                   allow=frozenset(str(u) for u in allow), killed=switch("killed"),
                   updated_at=raw.get("updated_at"))

    def is_enabled(self, user_id: object = None) -> bool:
        """Whether the flag is on for ``user_id`` (see the module docstring for the rules)."""
        if self.killed or not self.enabled:
            return False
        if user_id is None:
            return self.rollout >= 100
        if str(user_id) in self.allow:
            return True
        return bucket(self.name, user_id) < round(self.rollout * 100)


class Flags:
    """Read flags from Redis: ``Flags(redis.Redis(...)).is_enabled("beta", user_id=42)``.

    ``max_age`` > 0 caches each flag for that many seconds per process (a kill
    then takes up to ``max_age`` to reach the app); 0 reads Redis on every call.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = KEY_PREFIX,
                 max_age: float = 0.0) -> None:
        self.client = client
        self.prefix = prefix
        self.max_age = max_age
        self._cache: dict[str, tuple[float, Flag | None]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Flag | None:
        """The flag called ``name``, or None when it does not exist (cached up to ``max_age``)."""
        key = flag_key(name, self.prefix)
        now = time.monotonic()
        if self.max_age > 0:
            with self._lock:
                hit = self._cache.get(name)
            if hit is not None and now - hit[0] < self.max_age:
                return hit[1]
        data = self.client.hgetall(key)
        flag = Flag.from_hash(name, data) if data else None
        if self.max_age > 0:
            with self._lock:
                self._cache[name] = (now, flag)
        return flag

    def is_enabled(self, name: str, user_id: object = None, *, default: bool = False) -> bool:
        """Whether flag ``name`` is on for ``user_id``.

        A missing flag, unreadable flag data or an unreachable Redis return
        ``default`` (logged as a warning): a flag check never breaks a request.
        """
        try:
            flag = self.get(name)
        except (redis.RedisError, ConfigError) as exc:
            log.warning("feature flag %r unreadable, using default %s: %s", name, default, exc)
            return default
        return default if flag is None else flag.is_enabled(user_id)

    def all(self) -> list[Flag]:
        """Every flag under the prefix, sorted by name (SCAN, never KEYS)."""
        names = sorted(_text(k)[len(self.prefix):]
                       for k in self.client.scan_iter(match=glob_escape(self.prefix) + "*",
                                                      count=500))
        found = []
        for name in names:
            data = self.client.hgetall(self.prefix + name)
            if data:
                found.append(Flag.from_hash(name, data))
        return found


def glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped, for a literal MATCH prefix."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
