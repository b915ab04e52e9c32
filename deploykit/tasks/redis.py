"""Redis tasks: checks, idempotent keys and hashes, cache invalidation, readiness.

Tasks talk to the host's Redis with redis-py from the controller, through an
SSH local port forward over the host's connection (:mod:`deploykit.tunnel`)::

    from deploykit.tasks import redis

    redis.wait_ready(timeout=30)
    redis.check(role="master", max_memory="512mb", max_clients=500)
    redis.key("app:maintenance", "off")
    redis.hash("app:limits", {"rpm": 600, "burst": 50})
    redis.invalidate("cache:pages:*")

Host vars read (all optional):

=================  ==========================================================
``redis_port``     server port (6379)
``redis_password`` password (a string or Secret; never logged)
``redis_host``     server address as seen from the host (127.0.0.1)
``redis_db``       database number (0)
``redis_direct``   connect straight to ``address:redis_port``, no forward
=================  ==========================================================

How every task here works:

* **probe** — reads through redis-py (``TYPE``, ``GET``, ``HGETALL``, ``SCAN``,
  ``INFO``), not a shell snippet: the runner cannot batch these probes, so
  :meth:`RedisTask.parse` declines the shell batch and the task probes itself.
  One forward and one Redis connection serve a task's probe, apply and re-probe.
* **log** — every Redis command is appended to the connection's
  :attr:`~deploykit.connection.Connection.log` as ``redis <COMMAND> <key>``,
  marked read or write (values are never logged): a no-op run shows no write,
  exactly as for shell commands.
* **errors** — an unreachable Redis is one :class:`RedisConnectError` naming
  host and port; a refused command a :class:`~deploykit.errors.TaskError`.
* **undo** — a key or hash is ``DUMP``-ed just before the write and undo
  ``RESTORE``-s it (or deletes a key that did not exist). Invalidation has no
  undo: a cache is rebuilt by its app.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import redis as redispy
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploykit import humanize
from deploykit.connection import Connection, LoggedCommand
from deploykit.errors import ConfigError, ConnectError, DeployError, TaskError
from deploykit.inventory import Host
from deploykit.result import Result, Status
from deploykit.secrets import REDACTED, Secret, redact
from deploykit.task import Facts, Plan, Task, UndoStack
from deploykit.tunnel import Tunnel

__all__ = [
    "CheckTask",
    "HashTask",
    "InvalidateTask",
    "KeyTask",
    "RedisConnectError",
    "RedisSession",
    "RedisSettings",
    "RedisTask",
    "Snapshot",
    "WaitReadyTask",
    "check",
    "connect",
    "describe",
    "hash",
    "invalidate",
    "key",
    "parse_size",
    "ping",
    "session",
    "wait_ready",
]

Value = str | bytes | int | float | Secret
SHOW_WIDTH = 60
"""Values longer than this are shortened in diffs."""


@dataclass(frozen=True)
class RedisSettings:
    """How to reach one host's Redis (see the module docstring for the host vars)."""

    port: int = 6379
    password: Secret | None = None
    server_host: str = "127.0.0.1"
    db: int = 0
    direct: bool = False
    timeout: float = 10.0

    def __hash__(self) -> int:  # explicit: this module's ``hash`` is a task function
        return builtins.hash((self.port, self.password, self.server_host, self.db,
                              self.direct, self.timeout))

    @classmethod
    def from_host(cls, host: Host) -> RedisSettings:
        """Read the settings from a host's vars."""
        v = host.vars
        numbers = {}
        for var, default in (("redis_port", 6379), ("redis_db", 0)):
            try:
                numbers[var] = int(v.get(var, default))
            except (TypeError, ValueError):
                raise ConfigError(f"{var} must be a number, not {v[var]!r}",
                                  host=host.name) from None
        password = v.get("redis_password")
        return cls(port=numbers["redis_port"], db=numbers["redis_db"],
                   password=None if password is None else Secret(password),
                   server_host=str(v.get("redis_host", "127.0.0.1")),
                   direct=bool(v.get("redis_direct", False)))

    def where(self, host: Host) -> str:
        """Host and port in words: ``127.0.0.1:6379 on db-1 (through an SSH forward)``."""
        if self.direct:
            return f"{host.address}:{self.port} ({host.name}, direct)"
        return f"{self.server_host}:{self.port} on {host.name} (through an SSH forward)"


def _new_client(conn: Connection, s: RedisSettings) -> tuple[redispy.Redis, Tunnel | None]:
    """A redis-py client for ``conn``'s host, and the forward it goes through (if any).

    No retries (a retry would hide an outage for seconds); redis-py connects on
    the first command.
    """
    if s.password is not None:
        conn.secrets.add(s.password)
    tunnel = None if s.direct else Tunnel(conn, s.server_host, s.port)
    try:
        port = tunnel.open() if tunnel else s.port
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        raise
    client = redispy.Redis(
        host="127.0.0.1" if tunnel else conn.host.address, port=port, db=s.db,
        password=s.password.reveal() if s.password else None,
        socket_timeout=s.timeout, socket_connect_timeout=s.timeout,
        retry=Retry(NoBackoff(), 0))
    return client, tunnel


@contextlib.contextmanager
def connect(conn: Connection, *, settings: RedisSettings | None = None
            ) -> Iterator[redispy.Redis]:
    """A plain redis-py client for ``conn``'s host (tunnelled unless ``redis_direct``).

    For scripts and tests; commands sent through it are not logged or translated
    (tasks use :func:`session`).
    """
    client, tunnel = _new_client(conn, settings or RedisSettings.from_host(conn.host))
    try:
        yield client
    finally:
        client.close()
        if tunnel is not None:
            tunnel.close()


class RedisConnectError(ConnectError):
    """Redis could not be reached, or refused the login; ``reason`` is the bare cause."""

    def __init__(self, where: str, reason: str, *, login: bool = False,
                 host: str | None = None, task: str | None = None) -> None:
        what = "refused the login" if login else "is unreachable"
        super().__init__(f"Redis at {where} {what}: {reason}", host=host, task=task)
        self.reason = reason


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def describe(args: Sequence[object]) -> str:
    """A command as the log shows it: name and key, never values (``SET app:x (+1 args)``)."""
    name = _text(args[0]).upper()
    rest = args[1:]
    if name in ("UNLINK", "DEL") and len(rest) > 1:
        return f"{name} ({len(rest)} keys)"
    if name == "SCAN":
        return " ".join(_text(a) for a in args)
    if not rest:
        return name
    more = f" (+{len(rest) - 1} args)" if len(rest) > 1 else ""
    return f"{name} {_text(rest[0])}{more}"


def _wire(value: object) -> object:
    """A command argument as redis-py sends it (a Secret revealed at the last moment)."""
    return value.reveal() if isinstance(value, Secret) else value


def _execute(target: Any, args: Sequence[object]) -> Any:
    """``target.execute_command`` (a client or a pipeline; untyped in redis-py)."""
    return target.execute_command(*(_wire(a) for a in args))


class RedisSession:
    """Logged, error-translating commands on one host's Redis. Connects on first use.

    ``read``/``write`` send one command; ``read_many`` sends several in one
    round trip; ``transaction`` sends writes as one ``MULTI``/``EXEC``. Each
    command is appended to ``conn.log`` (``write=True`` for writes).
    """

    def __init__(self, conn: Connection, settings: RedisSettings) -> None:
        self.conn = conn
        self.settings = settings
        self.where = settings.where(conn.host)
        self._client: redispy.Redis | None = None
        self._tunnel: Tunnel | None = None

    def client(self) -> redispy.Redis:
        """The underlying redis-py client (forward opened on first call)."""
        if self._client is None:
            self._client, self._tunnel = _new_client(self.conn, self.settings)
        return self._client

    def close(self) -> None:
        """Close the Redis connection and the forward."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    def _log(self, args: Sequence[object], write: bool, failed: bool) -> None:
        self.conn.log.append(LoggedCommand(f"redis {describe(args)}", write, int(failed)))

    def error(self, exc: redispy.RedisError, command: str) -> DeployError:
        """The deploykit error for a redis-py error, naming host and port."""
        reason = redact(str(exc).strip() or type(exc).__name__, list(self.conn.secrets))
        if isinstance(exc, redispy.AuthenticationError):
            return RedisConnectError(self.where, f"{reason} (check the host var redis_password)",
                                     login=True, host=self.conn.name)
        if isinstance(exc, redispy.TimeoutError):
            return RedisConnectError(self.where, f"no answer within {self.settings.timeout:g} s",
                                     host=self.conn.name)
        if isinstance(exc, redispy.ConnectionError):
            if not self.settings.direct and not isinstance(exc, redispy.BusyLoadingError):
                # redis-py only sees the local end of the forward reset: say what it means.
                reason = ("the connection was refused or closed on the host (is redis-server "
                          "running and listening on that port?)")
            return RedisConnectError(self.where, reason, host=self.conn.name)
        return TaskError(f"Redis at {self.where}: {command} failed: {reason}",
                         host=self.conn.name)

    def _send(self, args: Sequence[object], write: bool) -> Any:
        client = self.client()
        try:
            result = _execute(client, args)
        except redispy.RedisError as exc:
            self._log(args, write, True)
            raise self.error(exc, describe(args)) from None
        self._log(args, write, False)
        return result

    def read(self, *args: object) -> Any:
        """Send one read-only command; return redis-py's reply."""
        return self._send(args, False)

    def write(self, *args: object) -> Any:
        """Send one write command; return redis-py's reply."""
        return self._send(args, True)

    def _pipeline(self, commands: Sequence[Sequence[object]], write: bool) -> list[Any]:
        pipe = self.client().pipeline(transaction=write)
        for args in commands:
            _execute(pipe, args)
        try:
            results = pipe.execute()
        except redispy.RedisError as exc:
            for args in commands:
                self._log(args, write, True)
            raise self.error(exc, "; ".join(describe(a) for a in commands)) from None
        for args in commands:
            self._log(args, write, False)
        return list(results)

    def read_many(self, *commands: Sequence[object]) -> list[Any]:
        """Send read-only commands in one round trip (a pipeline); return their replies."""
        return self._pipeline(commands, False)

    def transaction(self, *commands: Sequence[object]) -> list[Any]:
        """Send write commands as one ``MULTI``/``EXEC``: all happen or none."""
        return self._pipeline(commands, True)

    def scan(self, pattern: str, count: int) -> Iterator[list[bytes]]:
        """The keys matching ``pattern``, one ``SCAN`` page at a time (never ``KEYS``)."""
        cursor = 0
        while True:
            cursor, keys = self.read("SCAN", cursor, "MATCH", pattern, "COUNT", count)
            cursor = int(cursor)
            if keys:
                yield list(keys)
            if cursor == 0:
                return


_sessions: dict[tuple[int, RedisSettings], RedisSession] = {}
_sessions_lock = threading.Lock()


@contextlib.contextmanager
def session(conn: Connection, settings: RedisSettings | None = None
            ) -> Iterator[RedisSession]:
    """The Redis session for ``conn``: reused when one is already open for it.

    :meth:`RedisTask.run` opens one around the whole task, so that probe,
    apply and re-probe share one forward and one Redis connection.
    """
    s = settings or RedisSettings.from_host(conn.host)
    ident = (id(conn), s)
    with _sessions_lock:
        active = _sessions.get(ident)
        owner = active is None
        if active is None:
            active = _sessions[ident] = RedisSession(conn, s)
    try:
        yield active
    finally:
        if owner:
            with _sessions_lock:
                _sessions.pop(ident, None)
            active.close()


# -- snapshots for undo ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: no generated __hash__ (``hash`` is a task here)
class Snapshot:
    """A key as it was: its ``DUMP`` (None: it did not exist) and remaining TTL in ms."""

    key: str
    dump: bytes | None
    pttl: int

    @classmethod
    def take(cls, r: RedisSession, key_name: str) -> Snapshot:
        """Read the key's DUMP and PTTL in one round trip."""
        dump, pttl = r.read_many(("DUMP", key_name), ("PTTL", key_name))
        return cls(key_name, dump, int(pttl))

    def restore_action(self, settings: RedisSettings | None) -> Callable[[Connection], None]:
        """An undo action putting the key back as it was (or deleting it)."""
        def restore(conn: Connection) -> None:
            with session(conn, settings) as r:
                if self.dump is None:
                    r.write("DEL", self.key)
                else:
                    r.write("RESTORE", self.key, max(self.pttl, 0), self.dump, "REPLACE")
        return restore


# -- the task base --------------------------------------------------------------------


class RedisTask(Task):
    """A task whose facts come from Redis through redis-py (see the module docstring)."""

    kind: ClassVar[str] = "redis"

    def __init__(self, *, settings: RedisSettings | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        self.settings = settings

    def probe_script(self) -> str:
        return ":"

    def parse(self, output: str) -> Facts:
        """Redis is not read by the shell: decline, so the runner's batch leaves this task
        out and it probes itself through redis-py."""
        raise TaskError("Redis tasks probe through redis-py, not the shell")

    def probe(self, conn: Connection) -> Facts:
        with session(conn, self.settings) as r:
            return self.read(r)

    @abstractmethod
    def read(self, r: RedisSession) -> Facts:
        """Read the current state from Redis (read-only commands only)."""

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        with session(conn, self.settings) as r:
            self.write(r, facts, plan, undo)

    def write(self, r: RedisSession, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        """Make Redis match the plan (only called for a non-empty plan)."""
        raise TaskError(f"{self.kind} is a check: it never changes anything",
                        host=r.conn.name, task=self.name)

    def where(self, conn: Connection) -> str:
        """This task's Redis in words, for messages."""
        return (self.settings or RedisSettings.from_host(conn.host)).where(conn.host)

    def result_data(self, facts: Facts) -> dict[str, Any]:
        """What the Result's ``data`` gets from the facts (nothing by default)."""
        return {}

    def run(self, conn: Connection, *, check: bool = False, facts: Facts | None = None,
            undo: UndoStack | None = None) -> Result:
        """The task contract inside one Redis session; errors become a failed Result."""
        started = time.monotonic()
        try:
            with session(conn, self.settings):
                state = dict(facts) if facts is not None else self.probe(conn)
                result = super().run(conn, check=check, facts=state, undo=undo)
        except DeployError as exc:
            return Result(host=conn.name, task=self.name, status=Status.FAILED,
                          message=exc.message, duration=time.monotonic() - started,
                          check=check)
        result.data.update(self.result_data(state))
        result.duration = time.monotonic() - started
        return result


def _check_key(key_name: object) -> str:
    if not isinstance(key_name, str) or not key_name:
        raise ConfigError(f"a Redis key name must be a non-empty string, not {key_name!r}")
    return key_name


def _encode(value: Value, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, str | bytes | int | float | Secret):
        raise ConfigError(f"{what}: a value must be str, bytes, int, float or Secret, "
                          f"not {value!r}")
    if isinstance(value, Secret):
        return value.reveal().encode()
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _show(value: bytes | None, secret: bool = False) -> str | None:
    """A value as diffs show it: quoted text, shortened; ``<n bytes>``; or redacted."""
    if value is None:
        return None
    if secret:
        return REDACTED
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(value)} bytes>"
    return repr(text if len(text) <= SHOW_WIDTH else text[:SHOW_WIDTH - 3] + "...")


# -- key ------------------------------------------------------------------------------


class KeyTask(RedisTask):
    """A string key holds a value, with or without expiry. See :func:`key`."""

    kind: ClassVar[str] = "redis.key"

    def __init__(self, key_name: str, value: Value, *, ttl: int | None = None,
                 settings: RedisSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.key_name = _check_key(key_name)
        self.value = _encode(value, f"redis.key {key_name}")
        self.secret = isinstance(value, Secret)
        self._secrets = [value] if isinstance(value, Secret) else []
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
            raise ConfigError(f"redis.key {key_name}: ttl must be a positive number of "
                              f"seconds or None, not {ttl!r}")
        self.ttl = ttl

    def target(self) -> str:
        return self.key_name

    @property
    def secrets(self) -> Sequence[Secret]:
        return self._secrets

    def read(self, r: RedisSession) -> Facts:
        kind, pttl = r.read_many(("TYPE", self.key_name), ("PTTL", self.key_name))
        kind = _text(kind)
        value = r.read("GET", self.key_name) if kind == "string" else None
        return {"type": kind, "pttl": int(pttl), "value": value}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        kind = facts["type"]
        if kind == "none":
            plan.add("state", "absent", "present")
        elif kind != "string":
            plan.add("type", kind, "string")
        if facts["value"] != self.value:
            plan.add("value", _show(facts["value"], self.secret), _show(self.value, self.secret))
        expires = kind != "none" and facts["pttl"] >= 0
        if self.ttl is None and expires:
            plan.add("ttl", f"{math.ceil(facts['pttl'] / 1000)}s", None)
        elif self.ttl is not None and not expires:
            plan.add("ttl", None, f"{self.ttl}s")
        return plan

    def write(self, r: RedisSession, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        snap = Snapshot.take(r, self.key_name)
        undo.push(f"restore redis key {self.key_name}", snap.restore_action(self.settings))
        if plan.has("value"):
            expiry = ["EX", self.ttl] if self.ttl is not None else []
            r.write("SET", self.key_name, self.value, *expiry)  # without EX: no expiry
        elif self.ttl is None:
            r.write("PERSIST", self.key_name)
        else:
            r.write("EXPIRE", self.key_name, self.ttl)


def key(name: str, value: Value, ttl: int | None = None, *,
        settings: RedisSettings | None = None) -> KeyTask:
    """A Redis string key holds ``value``.

    Args:
        name: the key.
        value: str, bytes, int, float or :class:`~deploykit.secrets.Secret` (shown
            as ``********`` in diffs; no value is ever logged).
        ttl: seconds until expiry when the key is (re)written; None means the key
            must not expire. A key that already expires is left to count down.
        settings: how to reach Redis (default: the host's vars).

    Probe: ``TYPE`` + ``PTTL`` (one round trip), ``GET``. Plan: ``state``,
    ``type``, ``value: 'a' -> 'b'``, ``ttl: (none) -> 60s``. Apply: ``SET``
    (with ``EX``), or ``EXPIRE``/``PERSIST`` when only the expiry differs.
    Idempotent: a second run sends no write. Undo: the key's previous value and
    TTL are restored (``DUMP``/``RESTORE``), or a new key is deleted.
    """
    return KeyTask(name, value, ttl=ttl, settings=settings)


# -- hash -----------------------------------------------------------------------------


class HashTask(RedisTask):
    """A hash holds given fields. See :func:`hash`."""

    kind: ClassVar[str] = "redis.hash"

    def __init__(self, key_name: str, mapping: Mapping[str, Value], *, exact: bool = False,
                 settings: RedisSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        self.key_name = _check_key(key_name)
        if not mapping:
            raise ConfigError(f"redis.hash {key_name}: the mapping is empty")
        for field_name in mapping:
            if not isinstance(field_name, str) or not field_name:
                raise ConfigError(f"redis.hash {key_name}: field names must be non-empty "
                                  f"strings, not {field_name!r}")
        self.fields = {f: _encode(v, f"redis.hash {key_name} field {f}")
                       for f, v in mapping.items()}
        self.secret_fields = {f for f, v in mapping.items() if isinstance(v, Secret)}
        self._secrets = [v for v in mapping.values() if isinstance(v, Secret)]
        self.exact = exact

    def target(self) -> str:
        return self.key_name

    @property
    def secrets(self) -> Sequence[Secret]:
        return self._secrets

    def desired(self, facts: Facts) -> dict[str, bytes]:
        """The fields the hash must hold, given what it holds now."""
        return self.fields

    def label(self, field_name: str) -> str:
        """The plan attribute for a field (``field rpm``)."""
        return f"field {field_name}"

    def render(self, field_name: str, value: bytes | None) -> str | None:
        """A field value as diffs show it."""
        return _show(value, field_name in self.secret_fields)

    def stamp(self) -> dict[str, bytes]:
        """Fields written along with every change, never compared (none here)."""
        return {}

    def read(self, r: RedisSession) -> Facts:
        kind = _text(r.read("TYPE", self.key_name))
        raw = r.read("HGETALL", self.key_name) if kind == "hash" else {}
        return {"type": kind, "fields": {_text(k): bytes(v) for k, v in dict(raw).items()}}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        kind, current = facts["type"], facts["fields"]
        if kind == "none":
            plan.add("state", "absent", "present")
        elif kind != "hash":
            plan.add("type", kind, "hash")
        desired = self.desired(facts)
        for f, value in desired.items():
            if current.get(f) != value:
                plan.add(self.label(f), self.render(f, current.get(f)), self.render(f, value))
        if self.exact:
            for f in sorted(set(current) - set(desired)):
                plan.add(self.label(f), self.render(f, current[f]), None)
        return plan

    def write(self, r: RedisSession, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        snap = Snapshot.take(r, self.key_name)
        undo.push(f"restore redis hash {self.key_name}", snap.restore_action(self.settings))
        kind, current = facts["type"], facts["fields"]
        desired = self.desired(facts)
        commands: list[list[object]] = []
        if kind not in ("none", "hash"):
            commands.append(["DEL", self.key_name])
        changed = {f: v for f, v in desired.items() if current.get(f) != v or kind != "hash"}
        if changed:
            changed.update(self.stamp())
            commands.append(["HSET", self.key_name, *(x for fv in changed.items() for x in fv)])
        extra = sorted(set(current) - set(desired) - set(changed)) if self.exact else []
        if extra:
            commands.append(["HDEL", self.key_name, *extra])
        r.transaction(*commands)


def hash(name: str, mapping: Mapping[str, Value], *, exact: bool = False,
         settings: RedisSettings | None = None) -> HashTask:
    """A Redis hash holds the fields of ``mapping``.

    Args:
        name: the key.
        mapping: field -> value (str, bytes, int, float or Secret).
        exact: also remove fields the mapping does not list (default: leave them).
        settings: how to reach Redis (default: the host's vars).

    Probe: ``TYPE``, ``HGETALL``. Plan: ``field rpm: '600' -> '900'`` per field
    that differs (``state``/``type`` when the key is missing or not a hash).
    Apply: ``HSET`` of the changed fields (and ``HDEL`` with ``exact``) in one
    ``MULTI``/``EXEC``. Idempotent: a second run sends no write. Undo: the
    previous hash is restored (``DUMP``/``RESTORE``), or a new one deleted.
    """
    return HashTask(name, mapping, exact=exact, settings=settings)


# -- invalidate -----------------------------------------------------------------------


class InvalidateTask(RedisTask):
    """No key matches a pattern. See :func:`invalidate`."""

    kind: ClassVar[str] = "redis.invalidate"

    def __init__(self, pattern: str, *, batch: int = 500, settings: RedisSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConfigError(f"redis.invalidate: the pattern must be a non-empty glob, "
                              f"not {pattern!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 100_000:
            raise ConfigError(f"redis.invalidate {pattern}: batch must be 1 to 100000, "
                              f"not {batch!r}")
        self.pattern = pattern
        self.batch = batch

    def target(self) -> str:
        return self.pattern

    def read(self, r: RedisSession) -> Facts:
        return {"matching": sum(len(page) for page in r.scan(self.pattern, self.batch))}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        plan = Plan()
        if facts["matching"]:
            plan.add(f"keys matching {self.pattern!r}", facts["matching"], 0)
        return plan

    def write(self, r: RedisSession, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        pending: list[bytes] = []
        unlinked = 0
        for page in r.scan(self.pattern, self.batch):
            pending.extend(page)
            while len(pending) >= self.batch:
                unlinked += int(r.write("UNLINK", *pending[:self.batch]))
                del pending[:self.batch]
        if pending:
            unlinked += int(r.write("UNLINK", *pending))
        facts["unlinked"] = unlinked

    def changed_after_apply(self, conn: Connection, facts: Facts) -> Plan:
        """Not re-probed: a live app may refill its cache at once, and what matched
        was unlinked (``data["unlinked"]`` counts it)."""
        return Plan()

    def result_data(self, facts: Facts) -> dict[str, Any]:
        data = {"matching": facts.get("matching", 0)}
        if "unlinked" in facts:
            data["unlinked"] = facts["unlinked"]
        return data


def invalidate(pattern: str, *, batch: int = 500,
               settings: RedisSettings | None = None) -> InvalidateTask:
    """Delete every key matching the glob ``pattern`` (cache invalidation).

    Keys are found with ``SCAN MATCH pattern COUNT batch`` (never ``KEYS``,
    which blocks the server) and deleted with ``UNLINK`` (freed in the
    background), at most ``batch`` keys per command.

    Probe: counts the matching keys. Plan: ``keys matching 'cache:*': 1200 -> 0``.
    Idempotent: with nothing matching, ``ok`` and no write. Check mode counts
    only. Not re-probed after apply (an app may refill its cache at once); the
    Result's ``data`` has ``matching`` and ``unlinked``. No undo: a cache is
    rebuilt by its app.
    """
    return InvalidateTask(pattern, batch=batch, settings=settings)


# -- checks ---------------------------------------------------------------------------

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
ROLES = ("master", "replica")


def parse_size(size: int | str) -> int:
    """Bytes from ``1048576``, ``"512kb"``, ``"64mb"`` or ``"1.5gb"`` (binary units)."""
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        return size
    match = _SIZE.fullmatch(size.strip()) if isinstance(size, str) else None
    if match is None:
        raise ConfigError(f"memory size {size!r} is not a byte count like 1048576 or '64mb'")
    return int(float(match[1]) * _UNITS[match[2].lower()])


class CheckTask(RedisTask):
    """Redis answers PING, and INFO meets thresholds. See :func:`check`."""

    kind: ClassVar[str] = "redis.check"

    def __init__(self, *, info: bool = True, role: str | None = None,
                 max_memory: int | str | None = None, max_clients: int | None = None,
                 min_clients: int | None = None, settings: RedisSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        if role is not None and role not in (*ROLES, "slave"):
            raise ConfigError(f"redis.check: role must be 'master' or 'replica', not {role!r}")
        for what, value in (("max_clients", max_clients), ("min_clients", min_clients)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ConfigError(f"redis.check: {what} must be a non-negative integer, "
                                  f"not {value!r}")
        self.info = info
        self.role = "replica" if role == "slave" else role
        self.max_memory = None if max_memory is None else parse_size(max_memory)
        self.max_clients = max_clients
        self.min_clients = min_clients

    def read(self, r: RedisSession) -> Facts:
        r.read("PING")
        if not self.info:
            return {}
        info = r.read("INFO")
        role = str(info.get("role", ""))
        return {"role": "replica" if role == "slave" else role,
                "used_memory": int(info.get("used_memory", 0)),
                "connected_clients": int(info.get("connected_clients", 0))}

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        """Empty when every check passes; raises TaskError naming each one that fails."""
        failures = []
        if self.role is not None and facts["role"] != self.role:
            failures.append(f"role is {facts['role']}, expected {self.role}")
        if self.max_memory is not None and facts["used_memory"] > self.max_memory:
            failures.append(f"used_memory {humanize.size(facts['used_memory'])} is over the limit "
                            f"{humanize.size(self.max_memory)}")
        clients = facts.get("connected_clients", 0)
        if self.max_clients is not None and clients > self.max_clients:
            failures.append(f"connected_clients {clients} is over the limit {self.max_clients}")
        if self.min_clients is not None and clients < self.min_clients:
            failures.append(f"connected_clients {clients} is under the minimum "
                            f"{self.min_clients}")
        if failures:
            raise TaskError(f"Redis at {self.where(conn)}: " + "; ".join(failures),
                            host=conn.name, task=self.name)
        return Plan()

    def result_data(self, facts: Facts) -> dict[str, Any]:
        return dict(facts)


def check(*, role: str | None = None, max_memory: int | str | None = None,
          max_clients: int | None = None, min_clients: int | None = None,
          settings: RedisSettings | None = None) -> CheckTask:
    """Check that Redis answers and that ``INFO`` meets the thresholds given.

    Args:
        role: ``"master"`` or ``"replica"``.
        max_memory: the most ``used_memory`` allowed (bytes, or ``"512mb"``).
        max_clients, min_clients: bounds on ``connected_clients`` (this check's
            own connection counts as one).
        settings: how to reach Redis (default: the host's vars).

    A check: ``ok`` when all pass, else **failed** with one message naming each
    failed threshold and the Redis (host and port). Never ``changed``; the
    Result's ``data`` has ``role``, ``used_memory`` and ``connected_clients``.
    """
    return CheckTask(role=role, max_memory=max_memory, max_clients=max_clients,
                     min_clients=min_clients, settings=settings)


def ping(*, settings: RedisSettings | None = None) -> CheckTask:
    """Check that Redis answers ``PING`` (``ok``, or failed naming host and port)."""
    return CheckTask(info=False, settings=settings, name="redis.ping")


class WaitReadyTask(RedisTask):
    """Wait until Redis answers PING. See :func:`wait_ready`."""

    kind: ClassVar[str] = "redis.wait_ready"

    def __init__(self, timeout: float = 30.0, *, interval: float = 0.2,
                 settings: RedisSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        if not timeout > 0 or not interval > 0:
            raise ConfigError(f"redis.wait_ready: timeout and interval must be positive, "
                              f"not {timeout!r} and {interval!r}")
        self.timeout = timeout
        self.interval = interval

    def read(self, r: RedisSession) -> Facts:
        started = time.monotonic()
        while True:
            try:
                r.read("PING")
                return {"ready": True, "waited": round(time.monotonic() - started, 3)}
            except RedisConnectError as exc:
                reason = exc.reason
            except ConnectError as exc:  # the SSH connection itself
                reason = exc.message
            if time.monotonic() - started >= self.timeout:
                return {"ready": False, "reason": reason,
                        "waited": round(time.monotonic() - started, 3)}
            time.sleep(self.interval)

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        if not facts["ready"]:
            raise TaskError(f"Redis at {self.where(conn)} not ready within "
                            f"{self.timeout:g} s: {facts['reason']}", host=conn.name,
                            task=self.name)
        return Plan()

    def result_data(self, facts: Facts) -> dict[str, Any]:
        return {"waited": facts.get("waited")}


def wait_ready(timeout: float = 30.0, *, interval: float = 0.2,
               settings: RedisSettings | None = None) -> WaitReadyTask:
    """Wait until Redis answers ``PING`` (a server still loading its data does not).

    Polls every ``interval`` seconds. ``ok`` as soon as it answers (``data``
    has ``waited`` seconds); **failed** after ``timeout`` seconds with the
    last reason, naming host and port. Never ``changed``; no write.
    """
    return WaitReadyTask(timeout, interval=interval, settings=settings)
