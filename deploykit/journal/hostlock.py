"""The deploy lock on one host: take, release, look at, break (``<state dir>/lock``)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets as _random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from deploykit.connection import Connection
from deploykit.errors import ConfigError, LockHeldError, TaskError
from deploykit.journal.history import (
    HistoryEntry,
    _append_fn,
    _payload,
    _warnings,
    append_history,
)
from deploykit.journal.ids import (
    _COMMAND_TIMEOUT,
    _GUARD_WAIT,
    DEFAULT_LOCK_TTL,
    _human_age,
    _now_iso,
    _who,
    state_dir,
)
from deploykit.shell import quote

log = logging.getLogger("deploykit.journal")

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


