"""The deploy lock on one host: take, release, look at, break (``<state dir>/lock``)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets as _random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from deploykit import humanize
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
    FUTURE_TOLERANCE,
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
    nest: str = ""
    """SHA-256 of the token the holder gives its hooks only (:data:`NEST_TOKEN_ENV`): a run
    that presents it is nested in this one (re-entrance); empty: no run is."""

    @classmethod
    def for_this_process(cls, deploy_id: str, app: str, nest_token: str = "") -> LockHolder:
        """A holder describing this process, with a fresh token (and the digest of
        ``nest_token``, the proof its hooks' runs will present)."""
        user, controller = _who()
        return cls(user=user, controller=controller, deploy_id=deploy_id, pid=os.getpid(),
                   started=_now_iso(), token=_random.token_hex(16), app=app,
                   nest=nest_digest(nest_token) if nest_token else "")

    @property
    def alive_here(self) -> bool:
        """True when the holder is a process of this user running on this controller. When
        that process is this one, only while it still holds the lock (:func:`holding`): a
        lock a finished deploy of this process left behind is not a live one."""
        user, controller = _who()
        if (self.user, self.controller) != (user, controller):
            return False
        if self.pid == os.getpid():
            return self.identity in _HELD_HERE
        return pid_alive(self.pid)

    @property
    def identity(self) -> tuple[str, str, int]:
        """What tells this holder's lock from another of the same process."""
        return (self.deploy_id, self.started, self.pid)

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
                       app=str(data.get("app", "")), nest=str(data.get("nest", "")))
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def who(self) -> str:
        """``user@controller``."""
        return f"{self.user}@{self.controller}"

    def public(self) -> dict[str, Any]:
        """The holder without its token (for history entries and messages)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("token", "nest")}


def nest_digest(token: str) -> str:
    """The digest of a nest token, as ``holder.json`` keeps it (the token itself never
    reaches a host)."""
    return hashlib.sha256(token.encode()).hexdigest()


_HELD_HERE: set[tuple[str, str, int]] = set()
"""The locks this process holds right now (:attr:`LockHolder.identity`)."""


@contextlib.contextmanager
def holding(holder: LockHolder) -> Iterator[None]:
    """Mark ``holder``'s lock as held by this process for the ``with`` block, so that
    :attr:`LockHolder.alive_here` tells it from one a finished run of this process left."""
    _HELD_HERE.add(holder.identity)
    try:
        yield
    finally:
        _HELD_HERE.discard(holder.identity)


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


@dataclass(frozen=True)
class LockInfo:
    """A lock found on a host: its holder (None if ``holder.json`` is missing or
    unreadable, e.g. an acquire that crashed), its age by the host's clock."""

    host: str
    holder: LockHolder | None
    age: float
    ttl: float = DEFAULT_LOCK_TTL

    @property
    def ahead(self) -> bool:
        """True when the lock's time is in the future of the host's clock (taken, or last
        refreshed, by a clock that was ahead): a live holder's heartbeat would have brought
        it back to the host's now."""
        return self.age < -FUTURE_TOLERANCE

    @property
    def stale(self) -> bool:
        """True when the lock is older than its TTL, or its time lies in the future (a
        live holder refreshes it with the host's clock)."""
        return self.age > self.ttl or self.ahead

    @property
    def alive_here(self) -> bool:
        """True when the holder is a live process on this controller: never breakable."""
        return self.holder is not None and self.holder.alive_here

    @property
    def breakable(self) -> bool:
        """Stale, and not held by a live process of this controller."""
        return self.stale and not self.alive_here

    def describe(self, breaking: bool = False) -> str:
        """``locked by alice@ctl (deploy <id>, pid 42) since <time> on web-1`` (+ staleness;
        ``breaking``: said to a run that asked to break it)."""
        h = self.holder
        if h is None:
            text = f"locked (holder unknown: no readable holder.json) on {self.host}"
        else:
            text = (f"locked by {h.who} (deploy {h.deploy_id}, pid {h.pid}) since {h.started} "
                    f"on {self.host}")
        if self.alive_here and (self.stale or breaking):
            text += (f"; held for {humanize.age(abs(self.age))} by the host's clock, yet its "
                     f"holder (pid {self.holder.pid if self.holder else '?'}) is running "
                     f"on this controller: a live lock is never broken; wait for it, or "
                     f"stop it")
        elif self.ahead:
            text += (f"; STALE: its time is {humanize.age(-self.age)} in the future of the "
                     f"host's clock (taken by a clock that was ahead, and not refreshed "
                     f"since); break it with --break-lock, or invoke unlock --force")
        elif self.stale:
            text += (f"; STALE: held for {humanize.age(self.age)}, longer than the lock TTL of "
                     f"{humanize.age(self.ttl)} (the deploy may have crashed); break it with "
                     f"--break-lock, or invoke unlock --force")
        else:
            text += f"; held for {humanize.age(self.age)}"
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


def _acquire_script(app: str, ttl: float, break_token: str | None, size: int) -> str:
    """stdin: holder.json on the first line, then the history lines to append once locked
    (not when a stale lock was broken: the caller then writes the break record first).

    ``break_token``: break the lock there first if it is still the one judged breakable
    (its holder's token; empty: a lock without a readable holder) and still stale."""
    needle = quote(f'"token":"{break_token}"')
    match = ('[ ! -s "$lock/holder.json" ]' if not break_token else
             f'grep -qF -- {needle} "$lock/holder.json" 2>/dev/null')
    return _guarded(app, [
        "IFS= read -r holder || :",
        "broke=",
        f'if [ {int(break_token is not None)} = 1 ] && [ -d "$lock" ] && {match}; then',
        '  info=$(show); age=${info%% *}',
        f'  if [ "$age" -gt {int(ttl)} ] || [ "$age" -lt -{FUTURE_TOLERANCE} ]; then',
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
                 reentrant: Iterable[str] = (), proof: str = "") -> LockAttempt:
    """Try to take the lock on one host; never waits for it.

    Returns whether it was acquired, else the :class:`LockInfo` of the holder.
    ``entries`` (e.g. the deploy's ``start``) are appended to the history only
    when the lock was taken (same round trip). With ``break_lock``, a *stale* lock
    (older than ``ttl``, or with its time in the future) is broken, unless its holder
    is a live process on this controller (:attr:`LockInfo.alive_here`: refused); a
    ``lock_broken`` entry naming the old holder is written before ``entries``. Raises
    :class:`TaskError` when the host cannot keep a lock (no room, no flock).

    ``reentrant``: deploy ids whose lock counts as ours when ``proof`` is the token that
    holder gave its hooks (:data:`NEST_TOKEN_ENV`; its digest is in ``holder.json``):
    the attempt is then ``acquired`` and ``nested``, and ``entries`` are appended.
    """
    attempt = _try_acquire(conn, app, holder, ttl, None, entries, set(reentrant), proof)
    info = attempt.held_by
    if break_lock and not attempt.acquired and info is not None and info.breakable:
        token = info.holder.token if info.holder is not None else ""
        attempt = _try_acquire(conn, app, holder, ttl, token, entries, set(reentrant), proof)
    return attempt


def _try_acquire(conn: Connection, app: str, holder: LockHolder, ttl: float,
                 break_token: str | None, entries: Sequence[HistoryEntry], outer: set[str],
                 proof: str) -> LockAttempt:
    """One round trip of :func:`acquire_lock` (breaking the lock of ``break_token``)."""
    lines = _payload(conn, entries)
    out = conn.run(_acquire_script(app, ttl, break_token, len(lines)),
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
            if h is not None and h.deploy_id in outer and h.nest and proof and \
                    hmac.compare_digest(h.nest, nest_digest(proof)):
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


def _refresh_script(app: str, token: str) -> str:
    """Touch our ``holder.json`` (its mtime is the lock's age); prints alive, absent or
    foreign <info>."""
    return "\n".join([
        f"lock={quote(state_dir(app) + '/lock')}", _SHOW,
        f"token={quote(token)}",
        'if [ ! -d "$lock" ]; then echo absent',
        'elif grep -qF -- "\\"token\\":\\"$token\\"" "$lock/holder.json" 2>/dev/null; then',
        '  touch -- "$lock/holder.json" && echo alive',
        'else printf "foreign "; show; fi',
    ])


def refresh_lock(conn: Connection, app: str, holder: LockHolder, *,
                 ttl: float = DEFAULT_LOCK_TTL) -> LockInfo | None:
    """Refresh our lock on one host (the heartbeat; one round trip): None while it is
    ours, else what is there now (a :class:`LockInfo` of another holder, or one with
    no holder and age 0 when the lock is gone)."""
    out = conn.run(_refresh_script(app, holder.token), timeout=_COMMAND_TIMEOUT,
                   task="lock refresh").stdout
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "alive":
            return None
        if word == "absent":
            return LockInfo(host=conn.name, holder=None, age=0.0, ttl=ttl)
        if word == "foreign":
            return _parse_lock_line(conn.name, rest, ttl)
    raise TaskError(f"unexpected lock refresh output: {out.strip()[:200]!r}",
                    host=conn.name, task="lock refresh")


def _break_entry(app: str, by: LockHolder, old: LockInfo, how: str) -> HistoryEntry:
    """The history record of a lock broken by ``by`` (``how``: break_lock, unlock ...)."""
    return HistoryEntry(
        event="lock_broken" if how == "break_lock" else "unlock", id=by.deploy_id, app=app,
        who=by.who, host=old.host, time=_now_iso(), message=f"{how}: {old.describe()}",
        data={"previous": old.holder.public() if old.holder else None,
              "age": round(old.age, 1), "stale": old.stale, "how": how})


def _remove_script(app: str, token: str, size: int) -> str:
    """Remove the lock if it has ``token`` (an empty token: whatever lock is there),
    appending stdin to the history first (the lock stays when that append fails: prints
    unwritten). Prints released, absent, unwritten or foreign <info>."""
    return _guarded(app, [
        f"token={quote(token)}",
        f'if [ ! -d "$lock" ]; then append {size}; echo absent',
        'elif [ -z "$token" ] || '
        'grep -qF -- "\\"token\\":\\"$token\\"" "$lock/holder.json" 2>/dev/null; then',
        f'  if append {size}; then rm -rf -- "$lock" && echo released; else echo unwritten; fi',
        'else printf "foreign "; show; fi',
    ])


def release_lock(conn: Connection, app: str, holder: LockHolder, *,
                 entries: Sequence[HistoryEntry] = ()) -> str:
    """Release our lock on one host (one round trip), appending ``entries`` first.

    Returns ``released``, ``absent`` (no lock any more: somebody broke it; the
    entries are still written), ``unwritten`` (the entries could not be written: the
    lock is kept, try again) or ``foreign`` (the lock is now somebody else's: it is left
    alone, and so is the history).
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
        if word in ("released", "absent", "unwritten"):
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
    if current.alive_here:
        raise LockHeldError(f"{current.describe()}; not removed", host=conn.name)
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
    if state == "unwritten":
        raise TaskError("the unlock could not be recorded in the history (disk full?): the "
                        "lock was kept", host=conn.name, task="unlock")
    if state == "released":
        log.warning("%s: %s lock removed by %s: %s", conn.name, app, by.who, current.describe())
        return current
    return None


