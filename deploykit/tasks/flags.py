"""Feature flag tasks: set a flag's state in Redis idempotently, or kill it.

Flags live in Redis as described in :mod:`deploykit.flags` (the runtime API
apps import: one hash per flag, ``deploykit:flag:<name>``)::

    from deploykit.tasks import flags

    flags.flag("new-checkout", enabled=True, rollout=25, allow=["qa-1", "qa-2"])
    flags.kill("new-checkout")             # the emergency stop
    flags.flag("new-checkout", killed=False)  # and back

Each is a :class:`~deploykit.tasks.redis.HashTask` on the flag's hash: probe
``HGETALL``, a plan per attribute (``rollout: 5 -> 25``), one ``MULTI``/``EXEC``
that also stamps ``updated_at``, undo restoring the previous hash. Attributes
left at None are not managed: a deploy that sets ``rollout`` never clears a
kill an operator made. :func:`list_flags` reads every flag for reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import ClassVar

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.flags import (
    DEFAULTS,
    KEY_PREFIX,
    Flag,
    check_name,
    check_rollout,
    encode,
    flag_key,
    glob_escape,
    render_field,
)
from deploykit.task import Facts, Plan
from deploykit.tasks.redis import HashTask, RedisSettings, session

__all__ = ["FlagTask", "flag", "kill", "list_flags"]


class FlagTask(HashTask):
    """A flag's hash holds the managed attributes. See :func:`flag`."""

    kind: ClassVar[str] = "flags.flag"

    def __init__(self, flag_name: str, *, enabled: bool | None = None,
                 rollout: float | None = None, allow: Iterable[object] | None = None,
                 killed: bool | None = None, must_exist: bool = False,
                 prefix: str = KEY_PREFIX, settings: RedisSettings | None = None,
                 name: str | None = None) -> None:
        check_name(flag_name)
        if isinstance(allow, str):
            raise ConfigError(f"flag {flag_name!r}: allow must be a list of user ids, "
                              f"not the string {allow!r}")
        fields = encode(enabled=enabled, killed=killed, allow=allow,
                        rollout=None if rollout is None else check_rollout(rollout, flag_name))
        if not fields:
            raise ConfigError(f"flag {flag_name!r}: nothing to set (give enabled, rollout, "
                              f"allow or killed)")
        super().__init__(flag_key(flag_name, prefix), fields, settings=settings, name=name)
        self.flag_name = flag_name
        self.must_exist = must_exist

    def target(self) -> str:
        return self.flag_name

    def desired(self, facts: Facts) -> dict[str, bytes]:
        """The managed fields; a new flag also gets the defaults of the others."""
        if facts["type"] != "none":
            return self.fields
        return {**{k: v.encode() for k, v in DEFAULTS.items()}, **self.fields}

    def label(self, field_name: str) -> str:
        return field_name

    def render(self, field_name: str, value: bytes | None) -> str | None:
        return None if value is None else render_field(field_name, value.decode("utf-8",
                                                                                "replace"))

    def stamp(self) -> dict[str, bytes]:
        return {"updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        if self.must_exist and facts["type"] == "none":
            raise TaskError(f"flag {self.flag_name!r} does not exist (no Redis key "
                            f"{self.key_name}); nothing to kill", host=conn.name,
                            task=self.name)
        return super().plan(conn, facts)


def flag(name: str, *, enabled: bool | None = None, rollout: float | None = None,
         allow: Iterable[object] | None = None, killed: bool | None = None,
         prefix: str = KEY_PREFIX, settings: RedisSettings | None = None) -> FlagTask:
    """A feature flag has the given state; attributes left at None are not touched.

    Args:
        name: the flag (letters, digits, ``_ . -``; no spaces): ConfigError otherwise.
        enabled: the main switch.
        rollout: percentage of users who get the flag, 0-100 (steps of 0.01):
            ConfigError outside. Users are bucketed by a stable hash, so raising
            the rollout only ever adds users (see :mod:`deploykit.flags`).
        allow: user ids who get the flag whatever the rollout (the whole list).
        killed: the kill switch (True overrides everything; False clears it).
        prefix, settings: where the flags live and how to reach Redis.

    A new flag gets ``enabled=False, rollout=100, allow=[], killed=False`` for
    what is not given. Plan: one line per attribute, ``rollout: 5 -> 25``.
    Idempotent: a second run sends no write. Check mode writes nothing. Undo:
    the previous hash is restored, or a new flag deleted.
    """
    return FlagTask(name, enabled=enabled, rollout=rollout, allow=allow, killed=killed,
                    prefix=prefix, settings=settings)


def kill(name: str, *, killed: bool = True, prefix: str = KEY_PREFIX,
         settings: RedisSettings | None = None) -> FlagTask:
    """Turn flag ``name`` off for everyone, keeping its settings (``killed=False``
    revives it). Fails when the flag does not exist (a typo must not pass).
    Idempotent; undo restores the previous state."""
    return FlagTask(name, killed=killed, must_exist=True, prefix=prefix, settings=settings,
                    name=f"flags.{'kill' if killed else 'revive'} {name}")


def list_flags(conn: Connection, *, prefix: str = KEY_PREFIX,
               settings: RedisSettings | None = None) -> list[Flag]:
    """Every flag on ``conn``'s Redis, sorted by name (``SCAN`` + ``HGETALL``, read-only).

    Raises :class:`~deploykit.tasks.redis.RedisConnectError` (naming host and
    port) when Redis is unreachable, ConfigError for a flag with unreadable data.
    """
    pattern = glob_escape(prefix) + "*"
    with session(conn, settings) as r:
        keys = sorted(k.decode("utf-8", "replace") for page in r.scan(pattern, 500)
                      for k in page)
        found = []
        for key_name in keys:
            data = r.read("HGETALL", key_name)
            if data:
                found.append(Flag.from_hash(key_name[len(prefix):], data))
        return found
