"""The lock held on every host of a run (all or nothing): :func:`fleet_lock`."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from deploykit import humanize
from deploykit.connection import Connection
from deploykit.errors import ConfigError, DeployError, LockHeldError
from deploykit.journal.history import HistoryEntry, append_history, steps_summary
from deploykit.journal.hostlock import (
    LockAttempt,
    LockHolder,
    LockInfo,
    acquire_lock,
    holding,
    refresh_lock,
    release_lock,
)
from deploykit.journal.ids import (
    _COMMAND_TIMEOUT,
    _T,
    DEFAULT_LOCK_TTL,
    HEARTBEAT_MAX,
    RESULTS,
    DeployResult,
    Kind,
    _check_app,
    _check_deploy_id,
    _now_iso,
    nest_proof,
    outer_deploy_id,
)
from deploykit.result import RunReport

log = logging.getLogger("deploykit.journal")

# -- the fleet lock ---------------------------------------------------------------------------


class LockLostError(LockHeldError):
    """Our lock was broken (or taken over) while we held it: stop before the next change."""


END_ATTEMPTS = 3
"""How many times the end entry (and the release with it) is tried per host."""


class FleetLock:
    """The lock held on every host of a deploy; made by :func:`fleet_lock`.

    Call :meth:`end` before leaving the ``with`` block to set the deploy's
    result; leaving writes the ``end`` history entry and releases every host.
    While held, a heartbeat refreshes the lock on every host (so that a live run is
    never judged stale, however long it takes) and notices when it was broken;
    :meth:`check` raises :class:`LockLostError` then (call it before each change).
    """

    def __init__(self, conns: Sequence[Connection], app: str, holder: LockHolder, *,
                 kind: str = "deploy", version_from: str | Mapping[str, str] | None = None,
                 version_to: str | None = None, strategy: str | None = None,
                 forks: int = 10, record: bool = True) -> None:
        self.conns = list(conns)
        self.record = record
        """False: no ``start``/``end`` history entries (the operation writes its own)."""
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
        self.lost: dict[str, LockInfo] = {}
        """Hosts where our lock was broken or taken over, and what is there now."""
        self.ttl = DEFAULT_LOCK_TTL
        self._end: dict[str, Any] | None = None
        self._released = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def refresh(self) -> dict[str, LockInfo]:
        """Refresh the lock on every host now (one round trip each, in parallel); returns
        (and records in :attr:`lost`) the hosts where it is no longer ours."""
        def one(conn: Connection) -> None:
            if conn.name in self.nested or conn.name in self.lost:
                return
            try:
                found = refresh_lock(conn, self.app, self.holder, ttl=self.ttl)
            except DeployError as error:
                log.warning("%s: could not refresh the %s lock: %s", conn.name, self.app,
                            error.message)
                return
            if found is not None:
                self.lost[conn.name] = found
                log.error("%s: the %s lock of deploy %s was broken: %s", conn.name, self.app,
                          self.deploy_id, found.describe() if found.holder else "no lock")

        _in_parallel(self.conns, one, self.forks)
        return dict(self.lost)

    def check(self) -> None:
        """Raise :class:`LockLostError` when the lock is no longer ours on some host
        (checked now, on every host)."""
        self.refresh()
        if self.lost:
            where = "; ".join(f"{n}: " + (i.describe() if i.holder else "the lock is gone")
                              for n, i in sorted(self.lost.items()))
            raise LockLostError(f"the deploy lock of {self.deploy_id} was broken while it "
                                f"ran ({where})")

    def start_heartbeat(self, interval: float) -> None:
        """Refresh the lock every ``interval`` seconds until released."""
        def beat() -> None:
            while not self._stop.wait(interval):
                self.refresh()

        self._heartbeat = threading.Thread(target=beat, name=f"lock-heartbeat-{self.app}",
                                           daemon=True)
        self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=_COMMAND_TIMEOUT + 5)

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

        self._stop_heartbeat()

        def one(conn: Connection) -> None:
            entries = [self._end_entry(conn.name, exc)] if self.record else []
            for attempt in range(1, END_ATTEMPTS + 1):
                try:
                    if conn.name in self.nested:  # the outer deploy releases it
                        append_history(conn, self.app, entries)
                        return
                    state = release_lock(conn, self.app, self.holder, entries=entries)
                except DeployError as error:
                    problem = error.message
                else:
                    if state == "foreign":
                        self.release_errors[conn.name] = ("the lock was broken and taken by "
                                                          "another deploy; left alone")
                    if state != "unwritten":
                        return
                    problem = "the end entry could not be written to the history"
                if attempt < END_ATTEMPTS:
                    time.sleep(0.5 * attempt)
            self.release_errors[conn.name] = (
                f"{problem}; the lock is KEPT so that the run does not read as finished "
                f"(after fixing the host: invoke unlock)")
            log.error("%s: the %s lock of deploy %s is kept: %s", conn.name, self.app,
                      self.deploy_id, self.release_errors[conn.name])

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
    nest_token: str = "",
    proof: str | None = None,
    heartbeat: float | None = None,
    record: bool = True,
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
    runs inside of: hosts it holds are taken as nested (:attr:`FleetLock.nested`) when
    ``proof`` (default ``$DEPLOYKIT_LOCK_TOKEN``, :func:`nest_proof`) is the token that
    deploy gave its hooks. ``nest_token`` is that token for this run's own hooks (only its
    SHA-256 goes into ``holder.json``).

    ``record=False`` (maintenance, prune: operations that write their own history
    entries) takes the lock without ``start``/``end`` entries; ``kind`` then only names
    the operation.

    While held, the lock is refreshed every ``heartbeat`` seconds (default: a third of
    ``ttl``, at most a minute); a broken lock is noticed (:meth:`FleetLock.check`).

    A ``start`` history entry (``kind``, versions, ``strategy``) is written with
    each lock, in the same round trip; leaving the block writes the ``end``
    entry (see :meth:`FleetLock.end`) and releases, on success, on an exception
    and on Ctrl-C. Hosts locked before a failed acquisition get an ``aborted``
    end entry. Any other failure to lock (a host unreachable) releases the
    others and re-raises it.
    """
    _check_app(app)
    _check_deploy_id(deploy_id)
    if record and kind not in ("deploy", "rollback"):
        raise ConfigError(f"kind must be 'deploy' or 'rollback', not {kind!r}")
    if ttl <= 0:
        raise ConfigError(f"lock ttl must be positive, not {ttl!r}")
    if wait < 0:
        raise ConfigError(f"lock wait must be 0 or more seconds, not {wait!r}")
    holder = LockHolder.for_this_process(deploy_id, app, nest_token)
    options: dict[str, Any] = {"kind": kind, "version_from": version_from,
                               "version_to": version_to, "strategy": strategy, "forks": forks,
                               "record": record}
    reentrant = [i for i in (outer or outer_deploy_id(),) if i and i != deploy_id]
    began = time.monotonic()
    while True:
        try:
            lock = _acquire_fleet(conns, app, holder, ttl, break_lock, options, reentrant,
                                  nest_proof() if proof is None else proof)
            break
        except LockHeldError as error:
            waited = time.monotonic() - began
            if waited >= wait:
                if wait:
                    raise LockHeldError(f"{error.message}; gave up after waiting "
                                        f"{humanize.age(waited)}") from None
                raise
            if on_wait is not None:
                on_wait(error, waited)
            time.sleep(max(0.05, min(poll, wait - waited)))
    log.info("%s lock taken on %s for deploy %s", app, ", ".join(lock.hosts), deploy_id)
    lock.ttl = ttl
    lock.start_heartbeat(heartbeat or min(ttl / 3, HEARTBEAT_MAX))
    exc: BaseException | None = None
    try:
        with holding(holder):
            yield lock
    except BaseException as error:
        exc = error
        raise
    finally:
        lock.release(exc)


def _acquire_fleet(conns: Sequence[Connection], app: str, holder: LockHolder, ttl: float,
                   break_lock: bool, options: Mapping[str, Any],
                   reentrant: Sequence[str], proof: str) -> FleetLock:
    """One all-or-nothing attempt of :func:`fleet_lock`: the lock, or LockHeldError."""
    lock = FleetLock(conns, app, holder, **options)
    attempts: dict[str, LockAttempt | DeployError] = {}

    def take(conn: Connection) -> None:
        try:
            attempts[conn.name] = acquire_lock(conn, app, holder, ttl=ttl, break_lock=break_lock,
                                               entries=[lock.entry("start", conn.name)]
                                               if lock.record else [],
                                               reentrant=reentrant, proof=proof)
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
            raise LockHeldError("; ".join(info.describe(break_lock) for info in held))
        raise errors[0]
    lock.broken = [a.broken for a in attempts.values()
                   if isinstance(a, LockAttempt) and a.broken is not None]
    lock.nested = {n for n, a in attempts.items() if isinstance(a, LockAttempt) and a.nested}
    return lock


